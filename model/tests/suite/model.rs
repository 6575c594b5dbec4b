//! The Llama's structural guarantees: deterministic start, causality, grouped KV heads,
//! and slice gather/scatter that agree with the protocol's host-side extract/apply.

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use tessera_core::model::ParamLayout;
use tessera_core::slice::{SliceIndices, extract};
use tessera_model::init::initialize;
use tessera_model::{Llama, LlamaConfig};

type B = NdArray<f32>;

fn tiny(kv_heads: usize) -> LlamaConfig {
    LlamaConfig::new(97, 32, 64, 2, 4, kv_heads, 64)
}

fn tokens(rows: &[&[i64]]) -> Tensor<B, 2, Int> {
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
}

fn all_values(model: &Llama<B>) -> Vec<Vec<f32>> {
    (0..model.num_params()).map(|i| model.param_values(i).unwrap()).collect()
}

#[test]
fn the_same_seed_gives_the_same_model_and_another_seed_another() {
    let device = Default::default();
    let a = initialize::<B>(&tiny(4), 42, &device).unwrap();
    let b = initialize::<B>(&tiny(4), 42, &device).unwrap();
    let c = initialize::<B>(&tiny(4), 43, &device).unwrap();
    assert_eq!(all_values(&a), all_values(&b));
    assert_ne!(all_values(&a), all_values(&c));
    // HF-like statistics: weights ~ N(0, 0.02), norms are ones.
    let q = a.param_values(1).unwrap();
    let mean = q.iter().sum::<f32>() / q.len() as f32;
    let std = (q.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / q.len() as f32).sqrt();
    assert!(mean.abs() < 0.002 && (std - 0.02).abs() < 0.002, "mean {mean} std {std}");
    assert!(a.param_values(8).unwrap().iter().all(|&v| v == 1.0), "input_layernorm starts at ones");
}

#[test]
fn init_values_are_pinned() {
    // Part of the protocol: miners must start from the same model.
    let v = tessera_model::init::init_values(7, "model.layers.0.self_attn.q_proj.weight", 4);
    let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    assert_eq!(bits, [1004774584, 997558552, 3157435595, 3167896358]);
}

#[test]
fn forward_is_causal_and_shaped_batch_time_vocab() {
    let model = initialize::<B>(&tiny(4), 1, &Default::default()).unwrap();
    let a = model.forward(tokens(&[&[1, 2, 3, 4, 5, 6]]));
    assert_eq!(a.dims(), [1, 6, 97]);
    let b = model.forward(tokens(&[&[1, 2, 3, 9, 9, 9]]));
    let a = a.into_data().into_vec::<f32>().unwrap();
    let b = b.into_data().into_vec::<f32>().unwrap();
    // Positions 0..3 see the same prefix: identical logits; position 3 onwards differs.
    assert_eq!(a[..3 * 97], b[..3 * 97]);
    assert_ne!(a[3 * 97..4 * 97], b[3 * 97..4 * 97]);
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn grouped_kv_heads_run_and_batch_rows_are_independent() {
    let model = initialize::<B>(&tiny(2), 1, &Default::default()).unwrap();
    let both = model.forward(tokens(&[&[1, 2, 3, 4], &[5, 6, 7, 8]])).into_data().into_vec::<f32>().unwrap();
    let second = model.forward(tokens(&[&[5, 6, 7, 8]])).into_data().into_vec::<f32>().unwrap();
    for (x, y) in both[4 * 97..].iter().zip(&second) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn gather_and_scatter_agree_with_host_extract_and_touch_only_slice_positions() {
    let config = tiny(2);
    let layout = ParamLayout::llama(&config.shape()).unwrap();
    let model = initialize::<B>(&config, 5, &Default::default()).unwrap();
    assert!(model.matches_layout(&layout));
    let indices = SliceIndices::compute(&layout, 11, 7).unwrap();
    let host = all_values(&model);
    assert_eq!(model.gather(&indices).unwrap(), extract(&indices, &host).unwrap());

    let values: Vec<f32> = (0..indices.total_len()).map(|i| i as f32 + 0.5).collect();
    let model = model.scatter(&indices, &values).unwrap();
    assert_eq!(model.gather(&indices).unwrap(), values);
    let after = all_values(&model);
    for p in 0..layout.len() {
        for (i, (x, y)) in host[p].iter().zip(&after[p]).enumerate() {
            if indices.param(p).binary_search(&(i as u32)).is_err() {
                assert_eq!(x, y, "param {p} position {i} changed");
            }
        }
    }
}

/// A peer's non-finite value would spread through every later step: refused, naming
/// where it is.
#[test]
fn a_slice_with_a_non_finite_value_is_refused() {
    let config = tiny(2);
    let layout = ParamLayout::llama(&config.shape()).unwrap();
    let indices = SliceIndices::compute(&layout, 3, 7).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = vec![0.25f32; indices.total_len()];
        values[17] = bad;
        let model = initialize::<B>(&config, 5, &Default::default()).unwrap();
        let Err(err) = model.clone().scatter(&indices, &values) else { panic!("{bad} written") };
        assert!(matches!(err, tessera_model::ParamError::NonFinite { position: 17, .. }), "{err}");
        let Err(err) = model.scatter_add(&indices, &values) else { panic!("{bad} added") };
        assert!(matches!(err, tessera_model::ParamError::NonFinite { position: 17, .. }), "{err}");
    }
}

#[test]
fn wrong_layouts_and_lengths_are_errors() {
    let model = initialize::<B>(&tiny(4), 5, &Default::default()).unwrap();
    let other = ParamLayout::llama(&LlamaConfig::new(97, 32, 64, 3, 4, 4, 64).shape()).unwrap();
    let indices = SliceIndices::compute(&other, 1, 10).unwrap();
    assert!(model.gather(&indices).is_err());
    assert!(model.param(model.num_params()).is_err());
    assert!(model.set_param_values(0, &[1.0, 2.0]).is_err());
}

#[test]
fn parameters_are_found_by_their_hf_names_in_canonical_order() {
    let config = tiny(2);
    let layout = ParamLayout::llama(&config.shape()).unwrap();
    let model = initialize::<B>(&config, 5, &Default::default()).unwrap();
    for (i, spec) in layout.params().iter().enumerate() {
        assert_eq!(model.position_of(&spec.name), Ok(i), "{}", spec.name);
        assert_eq!(model.param_by_name(&spec.name).unwrap().numel(), spec.numel());
    }
    for bad in
        ["model.layers.2.mlp.up_proj.weight", "model.layers.01.mlp.up_proj.weight", "model.layers.0.mlp.weight", "x"]
    {
        assert!(model.position_of(bad).is_err(), "{bad}");
    }
}
