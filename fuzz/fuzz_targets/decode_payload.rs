//! Any bytes a hostile peer can serve as a SparseLoCo payload: `Payload::from_bytes` must
//! return, never panic; whatever it accepts must re-encode to the same bytes, decompress
//! within its layout, and aggregate (with itself) to finite values within the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::model::ParamSpec;
use tessera_core::sparseloco::{CompressSettings, Payload, aggregate, dequantise};

const BOUND: f32 = 4.0;

fuzz_target!(|data: &[u8]| {
    let params = [
        ParamSpec { name: "matrix".into(), shape: vec![70, 65] },
        ParamSpec { name: "vector".into(), shape: vec![5000] },
    ];
    let settings = CompressSettings { chunk: 4096, tile: 64, top_k: 8, beta: 0.95 };
    if let Ok(payload) = Payload::from_bytes(data, &params, &settings, BOUND) {
        assert_eq!(payload.to_bytes(), data, "an accepted payload has one encoding");
        let dense = dequantise(&payload, &params, &settings).expect("an accepted payload decompresses");
        assert_eq!(dense.len(), 70 * 65 + 5000);
        assert!(dense.iter().all(|v| v.is_finite() && v.abs() <= BOUND));
        let mean = aggregate(&[payload.clone(), payload], &params, &settings).expect("and aggregates");
        assert!(mean.iter().all(|v| v.is_finite() && v.abs() <= BOUND));
    }
});
