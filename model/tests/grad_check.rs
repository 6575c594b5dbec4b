//! Autodiff gradients against central finite differences, in f64.
//!
//! In its own test binary: burn fixes a device's float type for the whole process on first
//! use, so an f32 test running first in the same binary would silently make this one f32.

use burn::backend::{Autodiff, NdArray};
use tessera_model::init::initialize;
use tessera_model::train::{TokenBatch, causal_lm_loss};
use tessera_model::{Llama, LlamaConfig};

type B64 = Autodiff<NdArray<f64>>;

#[test]
fn gradients_match_finite_differences() {
    let config = LlamaConfig::new(11, 8, 16, 1, 2, 1, 16);
    let model: Llama<B64> = initialize(&config, 9, &Default::default()).unwrap();
    let tokens: Vec<u32> = vec![1, 4, 2, 9, 3, 7, 0, 5, 6, 10];
    let mask = vec![true, true, true, true, false, true, true, true, true, true];
    let batch = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: 2, seq_len: 5 };
    let loss = causal_lm_loss(&model, batch);
    assert_eq!(loss.dtype(), burn::tensor::DType::F64, "the check needs f64 to be meaningful");
    let grads = loss.backward();
    // A projection, a norm, the embedding and the head.
    for (param, positions) in [(1usize, [0usize, 17, 63]), (8, [0, 3, 7]), (0, [8, 13, 50]), (11, [2, 40, 87])] {
        let analytic: Vec<f64> = {
            let g = match model.param(param).unwrap() {
                tessera_model::params::ParamRef::Matrix(p) => {
                    let g = p.val().grad(&grads).unwrap();
                    let n: usize = g.dims().iter().product();
                    g.reshape([n]).into_data().convert::<f64>().into_vec::<f64>().unwrap()
                }
                tessera_model::params::ParamRef::Vector(p) => {
                    p.val().grad(&grads).unwrap().into_data().convert::<f64>().into_vec::<f64>().unwrap()
                }
            };
            positions.iter().map(|&i| g[i]).collect()
        };
        let base = model.param_values(param).unwrap();
        for (k, &i) in positions.iter().enumerate() {
            let eps = 1e-4f32;
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let m =
                    initialize::<B64>(&config, 9, &Default::default()).unwrap().set_param_values(param, &v).unwrap();
                causal_lm_loss(&m, batch).into_scalar()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
            let a = analytic[k];
            assert!(
                (a - numeric).abs() <= 1e-3 * a.abs().max(1e-2),
                "param {param} pos {i}: autodiff {a} vs finite difference {numeric}"
            );
        }
    }
}
