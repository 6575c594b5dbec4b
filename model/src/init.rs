//! Deterministic initialisation: every miner must start from the same model, on any
//! backend and any burn version, so the initial values are generated here on the host
//! from a fixed PRNG (integer arithmetic and one multiplication per value) rather than by
//! a backend's RNG.
//!
//! Each weight is HF's `normal(0, 0.02)` approximated by a scaled sum of four 16-bit
//! uniforms (Irwin–Hall, bounded at ±3.46σ), drawn from ChaCha8 seeded by
//! `BLAKE3-derive_key(INIT_CONTEXT, seed ‖ name)`; norm weights are ones.

use burn::tensor::backend::Backend;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use tessera_core::model::ParamLayout;

use crate::ModelError;
use crate::llama::{Llama, LlamaConfig};

pub const INIT_CONTEXT: &str = "tessera 2024-11 model init v1";
/// HF `initializer_range`.
pub const INIT_STD: f32 = 0.02;
/// `sqrt(3)`: the sum of four U(0,1) has variance 1/3.
const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// Initial values of one parameter, in HF order.
pub fn init_values(seed: u64, name: &str, numel: usize) -> Vec<f32> {
    if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
        return vec![1.0; numel];
    }
    let mut h = blake3::Hasher::new_derive_key(INIT_CONTEXT);
    h.update(&seed.to_le_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
    let scale = SQRT_3 * f64::from(INIT_STD);
    (0..numel)
        .map(|_| {
            let x = rng.next_u64();
            let sum = (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
            // sum / 65536 is in [0, 4); centre at 2.
            ((sum as f64 / 65536.0 - 2.0) * scale) as f32
        })
        .collect()
}

/// The network's starting model for `seed`.
pub fn initialize<B: Backend>(config: &LlamaConfig, seed: u64, device: &B::Device) -> Result<Llama<B>, ModelError> {
    let layout = ParamLayout::llama(&config.shape())?;
    let mut model = config.init_zeros::<B>(device);
    for (i, spec) in layout.params().iter().enumerate() {
        let values = init_values(seed, &spec.name, spec.numel());
        model = model.set_param_values(i, &values)?;
    }
    Ok(model)
}
