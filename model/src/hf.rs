//! HF transformers interop: a model directory with `config.json` and `model.safetensors`,
//! as `LlamaForCausalLM.save_pretrained` writes it and `from_pretrained` reads it — to hand
//! a trained model to the HF ecosystem, and to seed a run from a pretrained one.
//!
//! Names and shapes are the canonical layout's ([`ParamLayout::llama`]), which is HF's
//! `state_dict()`, so export and import are a copy, tensor by tensor. Export writes F32;
//! import accepts F32, BF16 and F16 (converted to f32 exactly), a single file or a sharded
//! one (`model.safetensors.index.json`), and ignores tensors the model does not have (such
//! as `rotary_emb.inv_freq`). A configuration the model cannot compute — another activation,
//! biases, RoPE scaling — is refused rather than imported into a different function.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_core::model::{ModelFingerprint, ModelShapeError, ParamLayout};
use thiserror::Error;

use crate::llama::{Llama, LlamaConfig};
use crate::params::ParamError;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// safetensors' own bound on the JSON header.
const MAX_HEADER_LEN: u64 = 100_000_000;

#[derive(Debug, Error)]
pub enum HfError {
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {what} is not supported by tessera's Llama")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("tensor {name} is missing")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name} has dtype {dtype}; F32, BF16 and F16 are supported")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("the model does not match the configuration's layout")]
    ModelMismatch,
    #[error("the pretrained model is another architecture (fingerprint {found}, the run's is {expected})")]
    ConfigMismatch { expected: ModelFingerprint, found: ModelFingerprint },
    #[error(transparent)]
    Shape(#[from] ModelShapeError),
    #[error(transparent)]
    Param(#[from] ParamError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HfError + '_ {
    move |source| HfError::Io { path: path.to_path_buf(), source }
}

/// HF `config.json` for `config`: the fields `LlamaConfig` reads, with the values that make
/// HF compute exactly this model (untied head, SiLU, no biases, plain RoPE, float32).
/// `rope_theta` is written both the transformers 4 way and the 5 way (`rope_parameters`).
pub fn hf_config_json(config: &LlamaConfig) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.hidden_size / config.num_attention_heads.max(1),
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rope_parameters": { "rope_type": "default", "rope_theta": config.rope_theta },
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": "float32",
    })
}

/// The dtype of an exported `model.safetensors` (tessera computes and stores f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl ExportDtype {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "f16" | "float16" => Some(Self::F16),
            _ => None,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::Bf16 => Dtype::BF16,
            Self::F16 => Dtype::F16,
        }
    }

    /// `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    fn width(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// Little-endian bytes of `values` in this dtype (rounded to nearest even).
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            Self::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        }
    }
}

/// Writes `model` as an HF model directory: `model.safetensors` (F32, canonical names, HF
/// shapes; streamed one tensor at a time) then `config.json`, each atomically.
pub fn export_hf<B: Backend>(model: &Llama<B>, config: &LlamaConfig, dir: &Path) -> Result<(), HfError> {
    let layout = ParamLayout::llama(&config.shape())?;
    if !model.matches_layout(&layout) {
        return Err(HfError::ModelMismatch);
    }
    write_hf_dir(config, dir, ExportDtype::F32, |i| Ok::<_, HfError>(model.param_values(i)?))
}

/// Writes an HF model directory for `config` whose tensors, in canonical order, come from
/// `values(i)` (one at a time, so a 1B model never has a second copy in memory):
/// `model.safetensors` in `dtype`, then `config.json`, each atomically.
pub fn write_hf_dir<E: From<HfError>>(
    config: &LlamaConfig,
    dir: &Path,
    dtype: ExportDtype,
    mut values: impl FnMut(usize) -> Result<Vec<f32>, E>,
) -> Result<(), E> {
    let layout = ParamLayout::llama(&config.shape()).map_err(HfError::from)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir)).map_err(E::from)?;

    let mut infos = Vec::with_capacity(layout.len());
    let mut offset = 0usize;
    for spec in layout.params() {
        let len = spec.numel() * dtype.width();
        infos.push((
            spec.name.clone(),
            TensorInfo { dtype: dtype.safetensors(), shape: spec.shape.clone(), data_offsets: (offset, offset + len) },
        ));
        offset += len;
    }
    let weights = dir.join(WEIGHTS_FILE);
    let bad = |e: SafeTensorError| HfError::Safetensors { path: weights.clone(), reason: format!("{e:?}") };
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(format), infos).map_err(bad).map_err(E::from)?;
    let mut header =
        serde_json::to_vec(&metadata).map_err(|source| E::from(HfError::Json { path: weights.clone(), source }))?;
    // safetensors pads the header with spaces to a multiple of 8 (alignment of the data).
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut tmp = tempfile::Builder::new()
        .prefix(".tessera-hf-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))
        .map_err(E::from)?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err(&tmp_path)).map_err(E::from)?;
        w.write_all(&header).map_err(io_err(&tmp_path)).map_err(E::from)?;
        for (i, spec) in layout.params().iter().enumerate() {
            let v = values(i)?;
            if v.len() != spec.numel() {
                return Err(E::from(HfError::ShapeMismatch {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: vec![v.len()],
                }));
            }
            w.write_all(&dtype.encode(&v)).map_err(io_err(&tmp_path)).map_err(E::from)?;
        }
        w.flush().map_err(io_err(&tmp_path)).map_err(E::from)?;
    }
    tmp.as_file().sync_all().map_err(io_err(&tmp_path)).map_err(E::from)?;
    tmp.persist(&weights).map_err(|e| E::from(HfError::Io { path: weights.clone(), source: e.error }))?;

    let config_path = dir.join(CONFIG_FILE);
    let mut config_json = hf_config_json(config);
    config_json["torch_dtype"] = json!(dtype.torch_name());
    let mut json = serde_json::to_vec_pretty(&config_json)
        .map_err(|source| E::from(HfError::Json { path: config_path.clone(), source }))?;
    json.push(b'\n');
    tessera_core::fsutil::write_atomic(&config_path, &json).map_err(io_err(&config_path)).map_err(E::from)?;
    Ok(())
}

/// The subset of HF's `LlamaConfig` that decides the function; defaults are HF's.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_max_positions() -> usize {
    2048
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_hidden_act() -> String {
    "silu".into()
}

/// What a `config.json` says, as tessera's config plus whether HF ties the head.
#[derive(Debug, Clone, PartialEq)]
pub struct HfModelConfig {
    pub config: LlamaConfig,
    /// `lm_head` shares `embed_tokens` in HF; on import the head is a copy of the embedding.
    pub tie_word_embeddings: bool,
}

/// Reads `dir/config.json`, refusing settings tessera's Llama does not compute.
pub fn read_hf_config(dir: &Path) -> Result<HfModelConfig, HfError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let hf: HfConfig = serde_json::from_slice(&bytes).map_err(|source| HfError::Json { path: path.clone(), source })?;
    let unsupported = |what: String| HfError::Unsupported { path: path.clone(), what };
    if let Some(t) = hf.model_type.as_deref().filter(|t| *t != "llama") {
        return Err(unsupported(format!("model_type {t:?}")));
    }
    if hf.hidden_act != "silu" {
        return Err(unsupported(format!("hidden_act {:?}", hf.hidden_act)));
    }
    if hf.attention_bias || hf.mlp_bias {
        return Err(unsupported("attention or MLP biases".into()));
    }
    // RoPE: transformers 4 has `rope_theta` and `rope_scaling`; 5 has `rope_parameters`.
    let mut rope_theta = hf.rope_theta;
    for rope in [&hf.rope_scaling, &hf.rope_parameters].into_iter().flatten().filter(|v| !v.is_null()) {
        let kind = rope.get("rope_type").or_else(|| rope.get("type")).and_then(Value::as_str).unwrap_or("default");
        if kind != "default" {
            return Err(unsupported(format!("RoPE scaling {kind:?}")));
        }
        if let Some(theta) = rope.get("rope_theta").and_then(Value::as_f64) {
            rope_theta = Some(theta);
        }
    }
    let config = LlamaConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        max_position_embeddings: hf.max_position_embeddings,
        rope_theta: rope_theta.unwrap_or(10_000.0),
        rms_norm_eps: hf.rms_norm_eps,
    };
    config.shape().validate()?;
    // tessera's Llama derives the head size; HF lets it be set apart.
    if let Some(d) = hf.head_dim.filter(|&d| d * config.num_attention_heads != config.hidden_size) {
        return Err(unsupported(format!("head_dim {d} with hidden_size {}", config.hidden_size)));
    }
    Ok(HfModelConfig { config, tie_word_embeddings: hf.tie_word_embeddings })
}

/// One safetensors file's header.
struct WeightsFile {
    path: PathBuf,
    metadata: Metadata,
    /// Where the data starts.
    data_start: u64,
}

impl WeightsFile {
    fn open(path: PathBuf) -> Result<Self, HfError> {
        let bad = |reason: String| HfError::Safetensors { path: path.clone(), reason };
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let actual_len = file.metadata().map_err(io_err(&path))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|_| bad("shorter than its header length".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_LEN || 8 + n > actual_len {
            return Err(bad(format!("header length {n} in a file of {actual_len} bytes")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io_err(&path))?;
        let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let expected = 8 + n + metadata.data_len() as u64;
        if expected != actual_len {
            return Err(bad(format!("{actual_len} bytes where the header describes {expected}")));
        }
        Ok(Self { path, metadata, data_start: 8 + n })
    }

    /// The tensor's values as f32 (F32, BF16 and F16 converted exactly).
    fn read_f32(&self, name: &str, info: &TensorInfo) -> Result<Vec<f32>, HfError> {
        let (start, end) = info.data_offsets;
        let mut file = File::open(&self.path).map_err(io_err(&self.path))?;
        file.seek(SeekFrom::Start(self.data_start + start as u64)).map_err(io_err(&self.path))?;
        let mut bytes = vec![0u8; end - start];
        file.read_exact(&mut bytes).map_err(io_err(&self.path))?;
        Ok(match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(HfError::UnsupportedDtype { name: name.to_string(), dtype: format!("{other:?}") }),
        })
    }
}

/// `model.safetensors.index.json`'s map of tensor name → shard file.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The weights of `dir`: one file, or the shards an index names.
fn open_weights(dir: &Path) -> Result<Vec<WeightsFile>, HfError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![WeightsFile::open(single)?]);
    }
    let index_path = dir.join(INDEX_FILE);
    let bytes = std::fs::read(&index_path).map_err(|source| HfError::Io { path: single.clone(), source })?;
    let index: ShardIndex =
        serde_json::from_slice(&bytes).map_err(|source| HfError::Json { path: index_path.clone(), source })?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    shards
        .into_iter()
        .map(|shard| {
            if Path::new(shard).components().count() != 1 {
                return Err(HfError::Unsupported { path: index_path.clone(), what: format!("shard path {shard:?}") });
            }
            WeightsFile::open(dir.join(shard))
        })
        .collect()
}

/// Imports an HF Llama directory: its configuration and the model. Checks every canonical
/// tensor's presence, shape and dtype before reading any data; the first problem, in
/// canonical order, is the error.
pub fn import_hf<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Llama<B>, LlamaConfig), HfError> {
    let hf = read_hf_config(dir)?;
    let config = hf.config;
    let layout = ParamLayout::llama(&config.shape())?;
    let files = open_weights(dir)?;
    let mut found: HashMap<String, (usize, TensorInfo)> = HashMap::new();
    for (f, file) in files.iter().enumerate() {
        for (name, info) in file.metadata.tensors() {
            found.insert(name, (f, info.clone()));
        }
    }

    let mut sources = Vec::with_capacity(layout.len());
    for spec in layout.params() {
        let name = match found.get(&spec.name) {
            Some(_) => spec.name.as_str(),
            None if spec.name == "lm_head.weight" && hf.tie_word_embeddings => {
                tracing::info!("tied word embeddings: lm_head starts as a copy of embed_tokens");
                "model.embed_tokens.weight"
            }
            None => return Err(HfError::MissingTensor { name: spec.name.clone() }),
        };
        let Some((file, info)) = found.get(name) else {
            return Err(HfError::MissingTensor { name: name.to_string() });
        };
        if info.shape != spec.shape {
            return Err(HfError::ShapeMismatch {
                name: name.to_string(),
                expected: spec.shape.clone(),
                found: info.shape.clone(),
            });
        }
        if !matches!(info.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(HfError::UnsupportedDtype { name: name.to_string(), dtype: format!("{:?}", info.dtype) });
        }
        sources.push((name, *file, info));
    }
    let mut extra: Vec<&String> = found.keys().filter(|n| layout.position(n).is_none()).collect();
    extra.sort();
    for name in extra {
        tracing::debug!(tensor = %name, "ignoring a tensor tessera's Llama does not have");
    }

    let mut model = config.init_zeros::<B>(device);
    for (i, (name, file, info)) in sources.into_iter().enumerate() {
        let values = files[file].read_f32(name, info)?;
        model = model.set_param_values(i, &values)?;
    }
    Ok((model, config))
}

/// Imports a pretrained model to seed a run of `config`: the directory's architecture must
/// be the run's (same fingerprint; `max_position_embeddings` may differ).
pub fn import_hf_for<B: Backend>(dir: &Path, config: &LlamaConfig, device: &B::Device) -> Result<Llama<B>, HfError> {
    let expected = ParamLayout::llama(&config.shape())?.fingerprint();
    let found = ParamLayout::llama(&read_hf_config(dir)?.config.shape())?.fingerprint();
    if found != expected {
        return Err(HfError::ConfigMismatch { expected, found });
    }
    Ok(import_hf(dir, device)?.0)
}
