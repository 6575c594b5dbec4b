//! Two peers exchange one window's slices through the wire format and average them, as
//! the miner does each window: extract → encode → (bucket) → decode → mean → apply.

use std::collections::HashSet;

use tessera_core::hotkey::{HotkeySigner, dev_keypair};
use tessera_core::model::{ModelShape, ParamLayout};
use tessera_core::slice::{
    Dtype, Expected, MeanAccumulator, ObjectKey, SliceIndices, SliceKind, SliceMeta, apply, decode, encode, extract,
};

fn tiny_shape() -> ModelShape {
    ModelShape {
        vocab_size: 257,
        hidden_size: 32,
        intermediate_size: 88,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        max_position_embeddings: 64,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
    }
}

fn model_with(layout: &ParamLayout, f: impl Fn(usize, usize) -> f32) -> Vec<Vec<f32>> {
    layout.params().iter().enumerate().map(|(p, s)| (0..s.numel()).map(|i| f(p, i)).collect()).collect()
}

#[test]
fn two_peers_converge_on_the_mean_at_the_window_positions_only() {
    let layout = ParamLayout::llama(&tiny_shape()).unwrap();
    let (alice, bob) = (dev_keypair("Alice").unwrap(), dev_keypair("Bob").unwrap());
    let registered: HashSet<_> = [alice.hotkey(), bob.hotkey()].into_iter().collect();
    // Distinct values per position, within the ±1e4 a slice may carry (`MAX_ABS_VALUE`).
    let mut model_a = model_with(&layout, |p, i| (p + i) as f32 * 1e-3);
    let mut model_b = model_with(&layout, |p, i| -((p * i) as f32) * 1e-3);
    let (orig_a, orig_b) = (model_a.clone(), model_b.clone());

    let window = 42;
    let indices = SliceIndices::compute(&layout, window, 10).unwrap();
    let meta = SliceMeta {
        kind: SliceKind::State,
        window,
        fingerprint: layout.fingerprint(),
        compression: 10,
        dtype: Dtype::F32,
        version: 1,
    };
    // Each peer publishes its slice under its object key.
    let published: Vec<(String, Vec<u8>)> = [(&alice, &model_a), (&bob, &model_b)]
        .into_iter()
        .map(|(key, model)| {
            let name = ObjectKey::new(SliceKind::State, window, key.hotkey()).to_string();
            (name, encode(meta, &extract(&indices, model).unwrap(), key).unwrap())
        })
        .collect();

    // Each peer downloads both, validates against the name it found, and averages.
    let mut mean = MeanAccumulator::new(indices.total_len());
    for (name, bytes) in &published {
        let key: ObjectKey = name.parse().unwrap();
        let expected = Expected {
            kind: key.kind,
            window: key.window,
            hotkey: Some(key.hotkey),
            registered: Some(&registered),
            fingerprint: layout.fingerprint(),
            compression: 10,
            value_count: indices.total_len(),
            version: 1,
            max_abs: tessera_core::slice::MAX_ABS_VALUE,
        };
        mean.add(&decode(bytes, &expected).unwrap()).unwrap();
    }
    let mean = mean.finish().unwrap();
    apply(&indices, &mut model_a, &mean).unwrap();
    apply(&indices, &mut model_b, &mean).unwrap();

    assert_eq!(extract(&indices, &model_a).unwrap(), extract(&indices, &model_b).unwrap());
    for p in 0..layout.len() {
        for i in 0..model_a[p].len() {
            let in_slice = indices.param(p).binary_search(&(i as u32)).is_ok();
            if in_slice {
                assert_eq!(model_a[p][i], (orig_a[p][i] + orig_b[p][i]) / 2.0);
            } else {
                assert_eq!((model_a[p][i], model_b[p][i]), (orig_a[p][i], orig_b[p][i]));
            }
        }
    }
}
