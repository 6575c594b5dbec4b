//! Object names come from a peer's bucket listing: parsing must never panic, and every
//! accepted name must be canonical (re-formats to itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::slice::ObjectKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data)
        && let Ok(key) = name.parse::<ObjectKey>()
    {
        assert_eq!(key.to_string(), name);
    }
});
