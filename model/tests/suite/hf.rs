//! HF interop: the golden test against real transformers (fixture made by
//! scripts/hf_fixture.py), exact export/import round trips, and typed errors for files that
//! are not our model.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tessera_model::hf::{CONFIG_FILE, HfError, INDEX_FILE, WEIGHTS_FILE, export_hf, import_hf, import_hf_for};
use tessera_model::init::initialize;
use tessera_model::train::{TokenBatch, causal_lm_loss};
use tessera_model::{Llama, LlamaConfig};

type B = NdArray<f32>;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

#[derive(Deserialize)]
struct Expected {
    tokens: Vec<Vec<u32>>,
    loss: f64,
    logits: Vec<Vec<Vec<f32>>>,
}

fn expected() -> Expected {
    serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
}

/// Our logits (flat, row-major `[B, T, V]`) and mean causal-LM loss on `tokens`.
fn run(model: &Llama<B>, tokens: &[Vec<u32>]) -> (Vec<f32>, f64) {
    let (b, t) = (tokens.len(), tokens[0].len());
    let flat: Vec<u32> = tokens.concat();
    let ids: Vec<i64> = flat.iter().map(|&x| i64::from(x)).collect();
    let logits = model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &Default::default()));
    let logits = logits.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    let mask = vec![true; b * t];
    let loss = causal_lm_loss(model, TokenBatch { tokens: &flat, loss_mask: &mask, batch_size: b, seq_len: t });
    (logits, f64::from(loss.into_scalar()))
}

fn all_values(model: &Llama<B>) -> Vec<Vec<u32>> {
    (0..model.num_params()).map(|i| model.param_values(i).unwrap().iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn golden_logits_and_loss_match_transformers() {
    let (model, config) = import_hf::<B>(&fixture(), &Default::default()).unwrap();
    assert_eq!(config, LlamaConfig::new(64, 32, 64, 2, 4, 2, 64).with_rope_theta(10_000.0).with_rms_norm_eps(1e-6));
    let expected = expected();
    let (logits, loss) = run(&model, &expected.tokens);
    let hf: Vec<f32> = expected.logits.iter().flatten().flatten().copied().collect();
    assert_eq!(logits.len(), hf.len());
    let (mut max_diff, mut at) = (0f32, 0);
    for (i, (a, b)) in logits.iter().zip(&hf).enumerate() {
        if (a - b).abs() > max_diff {
            (max_diff, at) = ((a - b).abs(), i);
        }
    }
    let rel = (loss - expected.loss).abs() / expected.loss.abs();
    println!(
        "max |logit - HF| = {max_diff:.3e} (at flat index {at}); loss {loss:.7} vs HF {:.7} (rel {rel:.2e})",
        expected.loss
    );
    assert!(max_diff <= 1e-4, "logits differ from transformers by {max_diff} at flat index {at}");
    assert!(rel <= 1e-5, "loss {loss} vs transformers {} (relative {rel})", expected.loss);

    // The other direction, when asked: export for scripts/hf_fixture.py --check-export. The
    // RoPE base and norm epsilon differ from the defaults, so HF must read them from us.
    if let Some(dir) = std::env::var_os("TESSERA_HF_EXPORT") {
        let dir = PathBuf::from(dir);
        let config = config.with_rope_theta(123_456.0).with_rms_norm_eps(1e-2);
        let model = with_values(config.init_zeros::<B>(&Default::default()), &model);
        export_hf(&model, &config, &dir).unwrap();
        let (logits, loss) = run(&model, &expected.tokens);
        let ours =
            serde_json::json!({ "tokens": expected.tokens, "loss": loss, "logits": logits_3d(&logits, &expected) });
        std::fs::write(dir.join("tessera_expected.json"), serde_json::to_vec(&ours).unwrap()).unwrap();
    }
}

/// `target` with `source`'s parameter values.
fn with_values(mut target: Llama<B>, source: &Llama<B>) -> Llama<B> {
    for i in 0..source.num_params() {
        target = target.set_param_values(i, &source.param_values(i).unwrap()).unwrap();
    }
    target
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Guards the golden test: a different RoPE base, or query heads reading the wrong KV head
/// (GQA's `repeat` vs `repeat_interleave`), moves the logits far outside its tolerance.
#[test]
fn the_golden_test_would_catch_a_wrong_rope_or_gqa_mapping() {
    let (model, config) = import_hf::<B>(&fixture(), &Default::default()).unwrap();
    let expected = expected();
    let (reference, _) = run(&model, &expected.tokens);

    let other_base = with_values(config.clone().with_rope_theta(20_000.0).init_zeros::<B>(&Default::default()), &model);
    let diff = max_abs_diff(&run(&other_base, &expected.tokens).0, &reference);
    assert!(diff > 1e-2, "RoPE base barely matters: {diff}");

    // Swap KV heads 0 and 1 (rows 0..8 and 8..16) in every layer's k_proj and v_proj.
    let mut swapped = model.clone();
    for layer in 0..config.num_hidden_layers {
        for p in [2, 3] {
            let index = 1 + 9 * layer + (p - 1);
            let mut v = swapped.param_values(index).unwrap();
            let (head0, head1) = v.split_at_mut(8 * 32);
            head0.swap_with_slice(head1);
            swapped = swapped.set_param_values(index, &v).unwrap();
        }
    }
    let diff = max_abs_diff(&run(&swapped, &expected.tokens).0, &reference);
    assert!(diff > 1e-2, "the KV head mapping barely matters: {diff}");
}

fn logits_3d(flat: &[f32], shape: &Expected) -> Vec<Vec<Vec<f32>>> {
    let (t, v) = (shape.logits[0].len(), shape.logits[0][0].len());
    flat.chunks(t * v).map(|row| row.chunks(v).map(<[f32]>::to_vec).collect()).collect()
}

#[test]
fn export_then_import_is_bitwise_exact() {
    let config = LlamaConfig::new(48, 16, 40, 2, 4, 1, 24).with_rope_theta(500_000.0).with_rms_norm_eps(1e-5);
    let model = initialize::<B>(&config, 5, &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_hf(&model, &config, dir.path()).unwrap();
    let (back, back_config) = import_hf::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(back_config, config);
    assert_eq!(all_values(&back), all_values(&model));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(json["model_type"], "llama");
    assert_eq!(json["tie_word_embeddings"], false);
    assert_eq!(json["num_key_value_heads"], 1);
    assert_eq!(json["torch_dtype"], "float32");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "only config.json and model.safetensors: {names:?}");

    // The fixture re-exported is the same tensors, bit for bit.
    let (hf_model, hf_config) = import_hf::<B>(&fixture(), &Default::default()).unwrap();
    let again = tempfile::tempdir().unwrap();
    export_hf(&hf_model, &hf_config, again.path()).unwrap();
    let original = tensors(&fixture());
    let exported = tensors(again.path());
    assert_eq!(exported.len(), original.len());
    for t in &original {
        assert!(exported.contains(t), "{} differs after re-export", t.name);
    }
}

/// One tensor of a safetensors file, owned.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn tensors(dir: &Path) -> Vec<Owned> {
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Owned> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Owned { name, dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_tensors(path: &Path, tensors: &[Owned]) {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A copy of the fixture's config with `tensors` as its weights.
fn model_dir(tensors: &[Owned]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture().join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    write_tensors(&dir.path().join(WEIGHTS_FILE), tensors);
    dir
}

fn import_err(dir: &Path) -> HfError {
    import_hf::<B>(dir, &Default::default()).err().unwrap()
}

#[test]
fn a_missing_tensor_is_named_first_in_canonical_order() {
    let mut t = tensors(&fixture());
    t.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight" && t.name != "model.layers.0.self_attn.k_proj.weight");
    let err = import_err(model_dir(&t).path());
    assert!(
        matches!(&err, HfError::MissingTensor { name } if name == "model.layers.0.self_attn.k_proj.weight"),
        "{err}"
    );
}

#[test]
fn a_wrong_shape_is_named_with_both_shapes() {
    let mut t = tensors(&fixture());
    let k = t.iter_mut().find(|t| t.name == "model.layers.1.self_attn.k_proj.weight").unwrap();
    k.shape = vec![32, 16]; // transposed: [in, out] instead of HF's [out, in]
    let err = import_err(model_dir(&t).path());
    match err {
        HfError::ShapeMismatch { name, expected, found } => {
            assert_eq!(name, "model.layers.1.self_attn.k_proj.weight");
            assert_eq!((expected, found), (vec![16, 32], vec![32, 16]));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_wrong_dtype_is_refused() {
    for (dtype, bytes_per) in [(Dtype::F64, 8), (Dtype::I32, 4), (Dtype::F8_E4M3, 1)] {
        let mut t = tensors(&fixture());
        let norm = t.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
        norm.dtype = dtype;
        norm.data = vec![0; 32 * bytes_per];
        let err = import_err(model_dir(&t).path());
        assert!(matches!(&err, HfError::UnsupportedDtype { name, .. } if name == "model.norm.weight"), "{err}");
    }
}

#[test]
fn bf16_and_f16_weights_are_converted_exactly() {
    let original = tensors(&fixture());
    let as_f32 = |d: &[u8]| d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>();
    for dtype in [Dtype::BF16, Dtype::F16] {
        let half: Vec<Owned> = original
            .iter()
            .map(|t| {
                let data = as_f32(&t.data)
                    .iter()
                    .flat_map(|&v| match dtype {
                        Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes(),
                        _ => half::f16::from_f32(v).to_le_bytes(),
                    })
                    .collect();
                Owned { dtype, data, ..t.clone() }
            })
            .collect();
        let dir = model_dir(&half);
        let (model, config) = import_hf::<B>(dir.path(), &Default::default()).unwrap();
        let layout = tessera_core::model::ParamLayout::llama(&config.shape()).unwrap();
        for (i, spec) in layout.params().iter().enumerate() {
            let source = original.iter().find(|t| t.name == spec.name).unwrap();
            let rounded: Vec<u32> = as_f32(&source.data)
                .iter()
                .map(|&v| match dtype {
                    Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
                    _ => half::f16::from_f32(v).to_f32(),
                })
                .map(f32::to_bits)
                .collect();
            let got: Vec<u32> = model.param_values(i).unwrap().iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, rounded, "{dtype:?} {}", spec.name);
        }
    }
}

#[test]
fn extra_tensors_are_ignored() {
    let mut t = tensors(&fixture());
    t.push(Owned {
        name: "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        dtype: Dtype::F32,
        shape: vec![4],
        data: vec![0; 16],
    });
    let (model, _) = import_hf::<B>(model_dir(&t).path(), &Default::default()).unwrap();
    let (reference, _) = import_hf::<B>(&fixture(), &Default::default()).unwrap();
    assert_eq!(all_values(&model), all_values(&reference));
}

#[test]
fn sharded_weights_and_tied_embeddings_import() {
    let all = tensors(&fixture());
    let (reference, _) = import_hf::<B>(&fixture(), &Default::default()).unwrap();

    // Two shards and an index, as save_pretrained writes a large model.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture().join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    let (a, b): (Vec<Owned>, Vec<Owned>) = all.iter().cloned().partition(|t| t.name.contains("layers.0"));
    write_tensors(&dir.path().join("model-00001-of-00002.safetensors"), &a);
    write_tensors(&dir.path().join("model-00002-of-00002.safetensors"), &b);
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.name.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(b.iter().map(|t| (t.name.clone(), "model-00002-of-00002.safetensors".into())))
        .collect();
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(dir.path().join(INDEX_FILE), serde_json::to_vec(&index).unwrap()).unwrap();
    let (sharded, _) = import_hf::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(all_values(&sharded), all_values(&reference));

    // Tied embeddings without an lm_head tensor: the head starts as the embedding.
    let untied: Vec<Owned> = all.iter().filter(|t| t.name != "lm_head.weight").cloned().collect();
    let dir = model_dir(&untied);
    assert!(matches!(import_err(dir.path()), HfError::MissingTensor { name } if name == "lm_head.weight"));
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
    json["tie_word_embeddings"] = true.into();
    std::fs::write(dir.path().join(CONFIG_FILE), serde_json::to_vec(&json).unwrap()).unwrap();
    let (tied, _) = import_hf::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(tied.param_values(tied.num_params() - 1).unwrap(), reference.param_values(0).unwrap());
}

#[test]
fn configurations_the_model_cannot_compute_are_refused() {
    let base: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture().join(CONFIG_FILE)).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value); 5] = [
        ("hidden_act", "gelu".into()),
        ("attention_bias", true.into()),
        ("rope_scaling", serde_json::json!({ "rope_type": "llama3", "factor": 8.0 })),
        ("rope_parameters", serde_json::json!({ "rope_type": "yarn", "rope_theta": 10000.0 })),
        ("head_dim", 16.into()),
    ];
    for (field, value) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut json = base.clone();
        json[field] = value;
        std::fs::write(dir.path().join(CONFIG_FILE), serde_json::to_vec(&json).unwrap()).unwrap();
        std::fs::copy(fixture().join(WEIGHTS_FILE), dir.path().join(WEIGHTS_FILE)).unwrap();
        let err = import_err(dir.path());
        assert!(matches!(err, HfError::Unsupported { .. }), "{field}: {err}");
    }
}

#[test]
fn transformers_4_configs_import_too() {
    // transformers 4 writes `rope_theta` (and `rope_scaling`) at the top level, 5 writes
    // `rope_parameters` (the fixture's); older files may leave out fields HF defaults.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join(CONFIG_FILE)).unwrap()).unwrap();
    let map = json.as_object_mut().unwrap();
    map.remove("rope_parameters");
    map.remove("num_key_value_heads");
    map.insert("rope_theta".into(), 500_000.0.into());
    map.insert("rope_scaling".into(), serde_json::Value::Null);
    map.insert("torch_dtype".into(), "float32".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), serde_json::to_vec(&json).unwrap()).unwrap();
    let config = tessera_model::hf::read_hf_config(dir.path()).unwrap();
    assert_eq!(config.config.rope_theta, 500_000.0);
    assert_eq!(config.config.num_key_value_heads, 4, "HF's default: as many KV heads as heads");
    assert!(!config.tie_word_embeddings);
}

#[test]
fn seeding_a_run_requires_the_runs_architecture() {
    let run = LlamaConfig::new(64, 32, 64, 2, 4, 2, 64);
    let model = import_hf_for::<B>(&fixture(), &run, &Default::default()).unwrap();
    assert_eq!(model.num_params(), 3 + 9 * 2);
    let other = LlamaConfig { num_key_value_heads: 4, ..run };
    let err = import_hf_for::<B>(&fixture(), &other, &Default::default()).err().unwrap();
    assert!(matches!(err, HfError::ConfigMismatch { .. }), "{err}");
}

#[test]
fn a_truncated_weights_file_is_refused() {
    let dir = model_dir(&tensors(&fixture()));
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    assert!(matches!(import_err(dir.path()), HfError::Safetensors { .. }));
}
