//! Any bytes a hostile peer can serve: `decode` must return, never panic, and whatever it
//! accepts must be a well-formed slice of the expected size with finite values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::model::ModelFingerprint;
use tessera_core::slice::{Expected, SliceKind, decode};

const VALUES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let expected = Expected {
        kind: SliceKind::State,
        window: 7,
        hotkey: None,
        registered: None,
        fingerprint: ModelFingerprint([1; 32]),
        compression: 10,
        value_count: VALUES,
        version: 1,
        max_abs: tessera_core::slice::MAX_ABS_VALUE,
    };
    if let Ok(view) = decode(data, &expected) {
        let values = view.values();
        assert_eq!(values.len(), VALUES);
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
