//! Network hyperparameters: the numbers every peer must share (model architecture,
//! window length, compression, history) and the training recipe, in the seed network's
//! `hparams.json` format.
//!
//! The seed miner fetched `hparams.json` from the project's repository at start-up and
//! fell back to its last cached copy when the fetch failed; [`load_hparams`] does the
//! same for an `http(s)://` source. A copy of the network's file is compiled into the
//! binary ([`BUILTIN_HPARAMS_JSON`]) so a binary run anywhere has hparams.

use std::collections::BTreeMap;
#[cfg(feature = "node")]
use std::error::Error as StdError;
use std::fmt;
#[cfg(feature = "node")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;
#[cfg(feature = "node")]
use tracing::{debug, info, warn};
use url::Url;

#[cfg(feature = "node")]
use crate::fsutil::write_atomic;
use crate::model::{ModelShape, ModelShapeError, ParamLayout};
use crate::slice::Exchange;

/// The network's `hparams.json` as shipped with this build (`config/hparams.json`).
pub const BUILTIN_HPARAMS_JSON: &str = include_str!("../../config/hparams.json");

/// The hyperparameters of the network, field names as in the seed's `hparams.json`.
///
/// Fields the seed's miner needs are required; fields only some versions of the file
/// carried are `Option`s or have the value the seed implied. Fields this build does not
/// know are kept in [`Hparams::extra`] (the upstream file grows over time, and a new
/// field must not stop miners).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hparams {
    /// Blocks per epoch (informational in the slice era).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_length: Option<u64>,
    /// A slice holds `max(1, numel / compression)` values of each parameter.
    pub compression: u32,
    /// Tokens per training sequence.
    pub sequence_length: usize,
    /// Hugging Face name of the tokenizer.
    pub tokenizer_name: String,
    /// Not in the seed's file: the LLaMA-2 32k tokenizer it names has 32000 tokens.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub activation_function: Activation,
    pub max_position_embeddings: usize,
    /// Not in the seed's file: HF `LlamaConfig`'s default.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Not in the seed's file: HF `LlamaConfig`'s default.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Blocks per window: `window = block / window_length`.
    pub window_length: u64,
    /// Sequences per optimizer step the recipe aims for.
    pub desired_batch_size: u32,
    pub learning_rate: f64,
    pub optimizer_beta1: f64,
    pub optimizer_beta2: f64,
    pub optimizer_weight_decay: f64,
    /// Gradient-norm clip before each optimizer step.
    pub grad_clip: f64,
    /// Cosine schedule period (`CosineAnnealingLR`'s `T_max`), in optimizer steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_epoch_length: Option<u64>,
    /// Cosine schedule floor; 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_min: Option<f64>,
    /// Linear warm-up before the cosine schedule (absent in the seed's file: none).
    #[serde(default)]
    pub warmup_steps: u64,
    /// Warm-up / stable / decay steps of the WSD schedule some seed versions used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_warmup_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_stable_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_decay_steps: Option<u64>,
    /// Windows of slices kept (locally and in the own bucket) before deletion.
    pub max_history: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_speed: Option<u64>,
    /// Boltzmann's master-upload cadence; carried by the seed's file, unused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_master_upload: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed_precision_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed_precision_reduce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_moving_alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_rewards_alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_norm_regularization: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_weights_temperature: Option<f64>,
    /// Data pages per window; the miner trains on this many pages each window.
    pub validator_window_eval_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_pages_per_eval: Option<u32>,
    /// The seed's file spells this key `valdiator_sample_rate`.
    #[serde(default, alias = "valdiator_sample_rate", skip_serializing_if = "Option::is_none")]
    pub validator_sample_rate: Option<f64>,
    /// Validator: windows behind the head that are scored; absent: 2 (at the start of
    /// window `w + 1` the deltas of `w` may still be uploading; by `w + 2` they are in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_eval_offset: Option<u64>,
    /// Validator: micro-batches of a miner's window data (its first ones, which the miner
    /// trains first) and of random data that each update is scored on; absent: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_eval_batches: Option<u32>,
    /// Validator: weight of the newest window in the moving "trained on its own data"
    /// indicator (how much more the update improves the miner's own data than random
    /// data, relative to both, in [−1, 1]); absent: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_indicator_alpha: Option<f64>,
    /// Validator: the least indicator from which a miner's moving score counts in full;
    /// the bar follows the network (half the median indicator of the miners that improve
    /// the model) above it, and the gate is shut below half the bar; absent: 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_specificity_full: Option<f64>,
    /// Validator: weights are `score^power`, normalised (power normalisation: honest
    /// miners share, weak ones fade); absent: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_weights_power: Option<f64>,
    /// Validator: two updates of one window whose cosine similarity reaches this are
    /// copies (the later upload is the copier); absent: 0.999.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_copy_similarity: Option<f64>,
    /// How peers combine their training (tessera's addition; absent: the seed's values
    /// exchange). `"update"` exchanges each window's update under protocol v2; see
    /// [`crate::slice::Exchange`].
    #[serde(default, skip_serializing_if = "Exchange::is_seed")]
    pub exchange: Exchange,
    /// Update exchange: the mean update is applied scaled by this factor (an outer
    /// learning rate, as DiLoCo's); absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_outer_lr: Option<f64>,
    /// SparseLoCo exchange: Nesterov momentum of the outer step (DiLoCo's outer optimiser;
    /// the step is `outer_lr · (g + μ·m)` with `m ← μ·m + g`, `g` the aggregate); absent
    /// or 0: a plain step, as SparseLoCo's paper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_outer_momentum: Option<f64>,
    /// SparseLoCo exchange: entries kept per chunk of 4096 (or 64×64 tile); absent: 64,
    /// the paper's. It sets the payload's size: ~1/144 of the dense update at 64, ~1/1100 at 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_top_k: Option<u32>,
    /// Micro-batches per optimizer step within a window (tessera's addition); absent or 0:
    /// one step per window over all its micro-batches, as the seed. With SparseLoCo, the
    /// window's steps are the inner steps H between two outer steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batches_per_step: Option<u32>,
    /// Update exchange: read the slices of at most this many peers per window and kind
    /// (own included; each miner draws its own subset every window), which bounds a
    /// miner's download whatever the network's size; absent or 0: every peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_max_peers: Option<u32>,
    /// Fields this build does not know, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_vocab_size() -> usize {
    32_000
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

/// The MLP activation. Llama's gated MLP is SwiGLU, i.e. SiLU gating; both names are
/// accepted, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Activation {
    SwiGlu,
}

impl TryFrom<String> for Activation {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.to_ascii_lowercase().as_str() {
            "swiglu" | "silu" => Ok(Self::SwiGlu),
            _ => Err(format!("activation_function {s:?} is not supported: expected \"swiGLU\" (or \"silu\")")),
        }
    }
}

impl From<Activation> for String {
    fn from(a: Activation) -> Self {
        match a {
            Activation::SwiGlu => "swiGLU".into(),
        }
    }
}

/// The learning-rate schedule the hparams define.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// Linear warm-up for `warmup_steps`, then `CosineAnnealingLR(T_max, eta_min)`.
    Cosine { t_max: u64, eta_min: f64, warmup_steps: u64 },
    /// Warm-up, stable, decay.
    Wsd { warmup_steps: u64, stable_steps: u64, decay_steps: u64 },
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based) for base rate `base`.
    ///
    /// Cosine follows torch's `CosineAnnealingLR` closed form
    /// (`eta_min + (base - eta_min)(1 + cos(pi t / T_max)) / 2`, periodic past `T_max`)
    /// after a linear warm-up; WSD warms up linearly, holds `base`, then decays linearly
    /// to zero and stays there.
    pub fn lr_at(&self, base: f64, step: u64) -> f64 {
        let warm = |warmup: u64| (warmup > 0 && step < warmup).then(|| base * (step + 1) as f64 / warmup as f64);
        match *self {
            LrSchedule::Cosine { t_max, eta_min, warmup_steps } => warm(warmup_steps).unwrap_or_else(|| {
                let t = (step - warmup_steps) as f64;
                let t_max = t_max.max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t / t_max).cos()) / 2.0
            }),
            LrSchedule::Wsd { warmup_steps, stable_steps, decay_steps } => warm(warmup_steps).unwrap_or_else(|| {
                let after_warmup = step - warmup_steps;
                if after_warmup < stable_steps {
                    base
                } else {
                    let into_decay = (after_warmup - stable_steps) as f64;
                    base * (1.0 - into_decay / decay_steps.max(1) as f64).max(0.0)
                }
            }),
        }
    }
}

/// Why hparams could not be loaded or are not usable. Each message is complete in itself
/// (causes are part of it, not chained as `source()`), so printing one says everything
/// once.
#[derive(Debug, Error)]
pub enum HparamsError {
    #[error("invalid hparams: {field} = {value}: expected {expected}")]
    Invalid { field: &'static str, value: String, expected: String },
    #[error("invalid hparams: {0}")]
    Shape(ModelShapeError),
    #[error("invalid hparams source {source_text:?}: {reason}")]
    Source { source_text: String, reason: String },
    #[error("cannot read hparams file {}: {cause}", .path.display())]
    ReadFile { path: PathBuf, cause: std::io::Error },
    #[error("hparams file {} is not valid hparams JSON: {cause}", .path.display())]
    ParseFile { path: PathBuf, cause: serde_json::Error },
    #[error("hparams file {}: {cause}", .path.display())]
    InvalidFile { path: PathBuf, cause: Box<HparamsError> },
    #[error("the built-in hparams of this build are unusable: {0}")]
    BuiltIn(String),
    #[error(
        "cannot load hparams from {url}: {fetch}; and there is no usable cached copy at {}: {cache}",
        .cache_path.display()
    )]
    UrlAndCache {
        /// As text: a `Url` would make every `Result` of this module twice as big.
        url: String,
        fetch: FetchError,
        cache_path: PathBuf,
        cache: String,
    },
}

/// Why fetching hparams from a URL failed.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not valid hparams JSON: {0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    Invalid(Box<HparamsError>),
}

#[cfg(feature = "node")]
impl FetchError {
    /// Failures worth another attempt: the network, server errors, rate limits.
    fn is_transient(&self) -> bool {
        match self {
            Self::Request(_) => true,
            Self::Status(code) => *code >= 500 || *code == 429 || *code == 408,
            Self::TooLarge { .. } | Self::Json(_) | Self::Invalid(_) => false,
        }
    }
}

impl From<ModelShapeError> for HparamsError {
    fn from(e: ModelShapeError) -> Self {
        Self::Shape(e)
    }
}

fn invalid(field: &'static str, value: impl fmt::Display, expected: impl Into<String>) -> HparamsError {
    HparamsError::Invalid { field, value: value.to_string(), expected: expected.into() }
}

impl Hparams {
    /// Parses `hparams.json` text; does not validate (see [`Hparams::validate`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The hparams compiled into this build, validated.
    pub fn builtin() -> Result<Self, HparamsError> {
        let hp = Self::from_json(BUILTIN_HPARAMS_JSON.as_bytes()).map_err(|e| HparamsError::BuiltIn(e.to_string()))?;
        hp.validate().map_err(|e| HparamsError::BuiltIn(e.to_string()))?;
        Ok(hp)
    }

    /// The model architecture these hparams describe.
    pub fn model_shape(&self) -> ModelShape {
        ModelShape {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            max_position_embeddings: self.max_position_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
        }
    }

    /// Fields that differ from `other` and that a running miner cannot follow: they change
    /// the model, the slice positions or the window clock, so following them means a
    /// restart (peers still on the old values reject the new slices and vice versa).
    pub fn protocol_differences(&self, other: &Hparams) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.model_shape() != other.model_shape() {
            out.push("model shape");
        }
        if self.compression != other.compression {
            out.push("compression");
        }
        if self.window_length != other.window_length {
            out.push("window_length");
        }
        if self.tokenizer_name != other.tokenizer_name {
            out.push("tokenizer_name");
        }
        if self.exchange != other.exchange {
            out.push("exchange");
        }
        out
    }

    /// Names of the fields this build does not know (kept in [`Hparams::extra`]).
    pub fn unknown_fields(&self) -> Vec<&str> {
        self.extra.keys().map(String::as_str).collect()
    }

    /// The learning-rate schedule: cosine when `cosine_epoch_length` is set (the schedule
    /// the seed's guide describes), else WSD when its three fields are set.
    pub fn lr_schedule(&self) -> Result<LrSchedule, HparamsError> {
        if let Some(t_max) = self.cosine_epoch_length {
            return Ok(LrSchedule::Cosine {
                t_max,
                eta_min: self.eta_min.unwrap_or(0.0),
                warmup_steps: self.warmup_steps,
            });
        }
        let wsd = [
            ("num_warmup_steps", self.num_warmup_steps),
            ("num_stable_steps", self.num_stable_steps),
            ("num_decay_steps", self.num_decay_steps),
        ];
        match wsd {
            [(_, Some(warmup_steps)), (_, Some(stable_steps)), (_, Some(decay_steps))] => {
                Ok(LrSchedule::Wsd { warmup_steps, stable_steps, decay_steps })
            }
            [(_, None), (_, None), (_, None)] => Err(invalid(
                "cosine_epoch_length",
                "(absent)",
                "a learning-rate schedule: cosine_epoch_length (cosine) or \
                 num_warmup_steps, num_stable_steps and num_decay_steps (WSD)",
            )),
            _ => {
                let missing = wsd.iter().find(|(_, v)| v.is_none()).map_or("num_decay_steps", |(f, _)| *f);
                Err(invalid(
                    missing,
                    "(absent)",
                    "an integer: the WSD schedule needs num_warmup_steps, num_stable_steps and num_decay_steps",
                ))
            }
        }
    }

    /// Checks every value a miner relies on; the error names the field, its value and what
    /// is expected.
    pub fn validate(&self) -> Result<(), HparamsError> {
        for (field, value) in [
            ("compression", u64::from(self.compression)),
            ("window_length", self.window_length),
            ("sequence_length", self.sequence_length as u64),
            ("desired_batch_size", u64::from(self.desired_batch_size)),
            ("max_history", self.max_history),
            ("validator_window_eval_size", u64::from(self.validator_window_eval_size)),
        ] {
            if value == 0 {
                return Err(invalid(field, value, "an integer ≥ 1"));
            }
        }
        if self.tokenizer_name.trim().is_empty() {
            return Err(invalid("tokenizer_name", format!("{:?}", self.tokenizer_name), "a tokenizer name"));
        }
        // The layout check also covers what ModelShape::validate does (zeros, head
        // divisibility, rope_theta, rms_norm_eps) and parameters too large to address.
        ParamLayout::llama(&self.model_shape())?;
        if self.sequence_length > self.max_position_embeddings {
            return Err(invalid(
                "sequence_length",
                self.sequence_length,
                format!("at most max_position_embeddings ({})", self.max_position_embeddings),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(invalid("learning_rate", self.learning_rate, "a finite number > 0"));
        }
        if let Some(lr) = self.exchange_outer_lr
            && !(lr.is_finite() && lr > 0.0 && lr <= 10.0)
        {
            return Err(invalid("exchange_outer_lr", lr, "a number in (0, 10]"));
        }
        if let Some(m) = self.exchange_outer_momentum
            && !(0.0..1.0).contains(&m)
        {
            return Err(invalid("exchange_outer_momentum", m, "a number in [0, 1)"));
        }
        if let Some(k) = self.exchange_top_k
            && !(1..=4096).contains(&k)
        {
            return Err(invalid("exchange_top_k", k, "an integer in 1..=4096"));
        }
        for (field, beta) in [("optimizer_beta1", self.optimizer_beta1), ("optimizer_beta2", self.optimizer_beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(field, beta, "a number in [0, 1)"));
            }
        }
        let non_negative = [
            ("optimizer_weight_decay", Some(self.optimizer_weight_decay)),
            ("eta_min", self.eta_min),
            ("validator_norm_regularization", self.validator_norm_regularization),
        ];
        for (field, value) in non_negative {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(invalid(field, v, "a finite number ≥ 0"));
            }
        }
        for (field, value) in
            [("grad_clip", Some(self.grad_clip)), ("validator_weights_temperature", self.validator_weights_temperature)]
        {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                return Err(invalid(field, v, "a finite number > 0"));
            }
        }
        for (field, value) in [
            ("validator_moving_alpha", self.validator_moving_alpha),
            ("validator_rewards_alpha", self.validator_rewards_alpha),
        ] {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return Err(invalid(field, v, "a number in [0, 1]"));
            }
        }
        if let Some(v) = self.validator_sample_rate
            && !(v > 0.0 && v <= 1.0)
        {
            return Err(invalid("validator_sample_rate", v, "a number in (0, 1]"));
        }
        if let Some(v) = self.validator_indicator_alpha
            && !(v > 0.0 && v <= 1.0)
        {
            return Err(invalid("validator_indicator_alpha", v, "a number in (0, 1]"));
        }
        if let Some(v) = self.validator_weights_power
            && !(v.is_finite() && (0.5..=8.0).contains(&v))
        {
            return Err(invalid("validator_weights_power", v, "a number in [0.5, 8]"));
        }
        if let Some(v) = self.validator_specificity_full
            && !(v > 0.0 && v <= 1.0)
        {
            return Err(invalid("validator_specificity_full", v, "a number in (0, 1]"));
        }
        if let Some(v) = self.validator_copy_similarity
            && !(v > 0.0 && v <= 1.0)
        {
            return Err(invalid("validator_copy_similarity", v, "a number in (0, 1]"));
        }
        if self.validator_eval_batches == Some(0) {
            return Err(invalid("validator_eval_batches", 0, "an integer ≥ 1"));
        }
        if self.validator_eval_offset == Some(0) {
            return Err(invalid("validator_eval_offset", 0, "an integer ≥ 1 (the current window is still uploading)"));
        }
        if self.validator_pages_per_eval == Some(0) {
            return Err(invalid("validator_pages_per_eval", 0, "an integer ≥ 1"));
        }
        if self.cosine_epoch_length == Some(0) {
            return Err(invalid("cosine_epoch_length", 0, "an integer ≥ 1"));
        }
        for (field, value) in [
            ("mixed_precision_param", &self.mixed_precision_param),
            ("mixed_precision_reduce", &self.mixed_precision_reduce),
        ] {
            if let Some(v) = value
                && !matches!(v.as_str(), "float32" | "bfloat16" | "float16")
            {
                return Err(invalid(field, format!("{v:?}"), "\"float32\", \"bfloat16\" or \"float16\""));
            }
        }
        self.lr_schedule()?;
        Ok(())
    }
}

/// Where hparams come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HparamsSource {
    /// The copy compiled into this build.
    BuiltIn,
    /// A local `hparams.json`.
    File(PathBuf),
    /// An `http(s)://` URL, fetched at start-up with a cached fallback.
    Url(Url),
}

impl HparamsSource {
    /// `http://…`/`https://…` is a URL, `builtin` (or `built-in`) the compiled-in copy,
    /// anything else a file path (no `~` expansion here; the configuration does that).
    pub fn parse(text: &str) -> Result<Self, HparamsError> {
        let err = |reason: &str| HparamsError::Source { source_text: text.to_owned(), reason: reason.to_owned() };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        if matches!(trimmed, "builtin" | "built-in") {
            return Ok(Self::BuiltIn);
        }
        let lower = trimmed.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = Url::parse(trimmed).map_err(|e| err(&format!("not a valid URL: {e}")))?;
            return Ok(Self::Url(url));
        }
        if let Some((scheme, _)) = trimmed.split_once("://")
            && !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(err("only http:// and https:// URLs are supported"));
        }
        Ok(Self::File(PathBuf::from(text)))
    }
}

impl fmt::Display for HparamsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("builtin"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url(u) => write!(f, "{u}"),
        }
    }
}

impl Serialize for HparamsSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which source the loaded hparams came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HparamsOrigin {
    BuiltIn,
    File(PathBuf),
    Url(Url),
    /// The URL failed; the last cached copy was used.
    Cache {
        url: Url,
        cache_path: PathBuf,
        cause: String,
    },
}

impl fmt::Display for HparamsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("built-in"),
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Url(u) => write!(f, "{u}"),
            Self::Cache { url, cache_path, .. } => {
                write!(f, "cached copy {} (of {url})", cache_path.display())
            }
        }
    }
}

/// Validated hparams and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedHparams {
    pub hparams: Hparams,
    pub origin: HparamsOrigin,
}

/// How a URL source is fetched.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Whole-request timeout of one attempt.
    pub timeout: Duration,
    /// Attempts in all (transient failures only are retried).
    pub attempts: u32,
    /// Delay before the second attempt; doubles for each later one.
    pub backoff: Duration,
    /// Larger responses are refused (an hparams file is a few KiB).
    pub max_bytes: usize,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), attempts: 3, backoff: Duration::from_millis(500), max_bytes: 1 << 20 }
    }
}

#[cfg(feature = "node")]
/// Loads and validates hparams from `source`. For a URL, a good response is written to
/// `cache_path`; any failure falls back to that cached copy (with a warning), as the seed
/// miner did.
pub async fn load_hparams(source: &HparamsSource, cache_path: &Path) -> Result<LoadedHparams, HparamsError> {
    load_hparams_with(source, cache_path, &FetchPolicy::default()).await
}

#[cfg(feature = "node")]
/// [`load_hparams`] with an explicit fetch policy.
pub async fn load_hparams_with(
    source: &HparamsSource,
    cache_path: &Path,
    policy: &FetchPolicy,
) -> Result<LoadedHparams, HparamsError> {
    let loaded = match source {
        HparamsSource::BuiltIn => LoadedHparams { hparams: Hparams::builtin()?, origin: HparamsOrigin::BuiltIn },
        HparamsSource::File(path) => {
            LoadedHparams { hparams: load_file(path)?, origin: HparamsOrigin::File(path.clone()) }
        }
        HparamsSource::Url(url) => load_url(url, cache_path, policy).await?,
    };
    let unknown = loaded.hparams.unknown_fields();
    if !unknown.is_empty() {
        warn!(
            source = %loaded.origin,
            fields = ?unknown,
            "hparams contain fields this build does not know; they are kept and ignored"
        );
    }
    Ok(loaded)
}

#[cfg(feature = "node")]
fn load_file(path: &Path) -> Result<Hparams, HparamsError> {
    let bytes = std::fs::read(path).map_err(|cause| HparamsError::ReadFile { path: path.to_owned(), cause })?;
    let hp = Hparams::from_json(&bytes).map_err(|cause| HparamsError::ParseFile { path: path.to_owned(), cause })?;
    hp.validate().map_err(|e| HparamsError::InvalidFile { path: path.to_owned(), cause: Box::new(e) })?;
    Ok(hp)
}

#[cfg(feature = "node")]
async fn load_url(url: &Url, cache_path: &Path, policy: &FetchPolicy) -> Result<LoadedHparams, HparamsError> {
    let fetched = fetch_with_retries(url, policy).await.and_then(|bytes| {
        let hp = Hparams::from_json(&bytes).map_err(FetchError::Json)?;
        hp.validate().map_err(|e| FetchError::Invalid(Box::new(e)))?;
        Ok((hp, bytes))
    });
    match fetched {
        Ok((hparams, bytes)) => {
            // The fetched hparams are good whether or not the cache can be written.
            match write_atomic(cache_path, &bytes) {
                Ok(()) => debug!(cache = %cache_path.display(), "hparams cache updated"),
                Err(e) => {
                    warn!(cache = %cache_path.display(), error = %e, "cannot write the hparams cache")
                }
            }
            info!(%url, "hparams loaded");
            Ok(LoadedHparams { hparams, origin: HparamsOrigin::Url(url.clone()) })
        }
        Err(fetch) => match read_cache(cache_path) {
            Ok(hparams) => {
                warn!(
                    %url,
                    cause = %fetch,
                    cache = %cache_path.display(),
                    "cannot load hparams from the URL; using the last cached copy"
                );
                Ok(LoadedHparams {
                    hparams,
                    origin: HparamsOrigin::Cache {
                        url: url.clone(),
                        cache_path: cache_path.to_owned(),
                        cause: fetch.to_string(),
                    },
                })
            }
            Err(cache) => {
                Err(HparamsError::UrlAndCache { url: url.to_string(), fetch, cache_path: cache_path.to_owned(), cache })
            }
        },
    }
}

#[cfg(feature = "node")]
fn read_cache(path: &Path) -> Result<Hparams, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no cached copy exists".into());
        }
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let hp = Hparams::from_json(&bytes).map_err(|e| format!("not valid hparams JSON: {e}"))?;
    hp.validate().map_err(|e| e.to_string())?;
    Ok(hp)
}

#[cfg(feature = "node")]
async fn fetch_with_retries(url: &Url, policy: &FetchPolicy) -> Result<Vec<u8>, FetchError> {
    let client =
        reqwest::Client::builder().timeout(policy.timeout).build().map_err(|e| FetchError::Request(error_chain(&e)))?;
    let mut delay = policy.backoff;
    let mut attempt = 1;
    loop {
        match fetch_once(&client, url, policy.max_bytes).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_transient() && attempt < policy.attempts.max(1) => {
                debug!(%url, attempt, error = %e, "hparams fetch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(feature = "node")]
async fn fetch_once(client: &reqwest::Client, url: &Url, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    let mut resp = client
        .get(url.clone())
        .header(reqwest::header::CACHE_CONTROL, "no-cache")
        .send()
        .await
        .map_err(|e| FetchError::Request(error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    let mut body = Vec::new();
    // Read chunk by chunk so an endless or huge body is cut off, not buffered.
    while let Some(chunk) = resp.chunk().await.map_err(|e| FetchError::Request(error_chain(&e)))? {
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge { limit: max_bytes });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(feature = "node")]
/// An error and its causes on one line: reqwest's own message omits the cause
/// ("connection refused", "timed out").
fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn protocol_differences_name_what_needs_a_restart() {
        let a = Hparams::builtin().unwrap();
        let mut b = a.clone();
        assert!(a.protocol_differences(&b).is_empty());
        b.max_history = 99;
        b.learning_rate = 1.0;
        assert!(a.protocol_differences(&b).is_empty(), "history and LR are not protocol");
        b.compression = 7;
        b.hidden_size = 64;
        b.window_length = 5;
        assert_eq!(a.protocol_differences(&b), ["model shape", "compression", "window_length"]);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn shipped() -> Hparams {
        Hparams::from_json(BUILTIN_HPARAMS_JSON.as_bytes()).expect("shipped hparams.json parses")
    }

    fn fast_policy() -> FetchPolicy {
        FetchPolicy {
            timeout: Duration::from_secs(5),
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_bytes: 1 << 16,
        }
    }

    #[test]
    fn shipped_hparams_validate_and_give_the_1b2_layout() {
        let hp = Hparams::builtin().expect("built-in hparams are valid");
        assert_eq!(hp, shipped());
        assert_eq!(hp.compression, 100);
        assert_eq!(hp.max_history, 6);
        assert_eq!(hp.window_length, 2);
        assert_eq!(hp.learning_rate, 1e-4);
        assert_eq!(hp.activation_function, Activation::SwiGlu);
        assert_eq!(hp.model_shape(), ModelShape::seed_1b2());
        let layout = ParamLayout::llama(&hp.model_shape()).unwrap();
        assert_eq!(layout.total_numel(), 1_204_881_408);
        assert_eq!(layout.len(), 3 + 9 * 16);
        assert_eq!(hp.lr_schedule().unwrap(), LrSchedule::Cosine { t_max: 5000, eta_min: 1e-5, warmup_steps: 0 });
        // The seed file's boltzmann-era field is known, so the built-in file warns of nothing.
        assert!(hp.unknown_fields().is_empty(), "{:?}", hp.unknown_fields());
    }

    #[test]
    fn learning_rate_schedules_follow_their_closed_forms() {
        let cosine = LrSchedule::Cosine { t_max: 100, eta_min: 0.1, warmup_steps: 0 };
        assert!((cosine.lr_at(1.0, 0) - 1.0).abs() < 1e-12);
        assert!((cosine.lr_at(1.0, 50) - 0.55).abs() < 1e-12);
        assert!((cosine.lr_at(1.0, 100) - 0.1).abs() < 1e-12);
        assert!((cosine.lr_at(1.0, 200) - 1.0).abs() < 1e-12, "periodic like torch's closed form");
        let warm = LrSchedule::Cosine { t_max: 10, eta_min: 0.0, warmup_steps: 4 };
        let lrs: Vec<f64> = (0..5).map(|s| warm.lr_at(2.0, s)).collect();
        assert_eq!(lrs, [0.5, 1.0, 1.5, 2.0, 2.0]);
        let wsd = LrSchedule::Wsd { warmup_steps: 2, stable_steps: 3, decay_steps: 4 };
        let lrs: Vec<f64> = (0..11).map(|s| wsd.lr_at(1.0, s)).collect();
        assert_eq!(lrs, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
    }

    #[test]
    fn absent_optional_fields_take_the_seed_defaults() {
        let mut v: serde_json::Value = serde_json::from_str(BUILTIN_HPARAMS_JSON).unwrap();
        let obj = v.as_object_mut().unwrap();
        for k in ["vocab_size", "rope_theta", "rms_norm_eps", "epoch_length", "window_speed"] {
            obj.remove(k);
        }
        let hp: Hparams = serde_json::from_value(v).unwrap();
        assert_eq!(hp.vocab_size, 32_000);
        assert_eq!(hp.rope_theta, 10_000.0);
        assert_eq!(hp.rms_norm_eps, 1e-6);
        assert_eq!(hp.epoch_length, None);
        assert_eq!(hp.warmup_steps, 0);
        hp.validate().unwrap();
    }

    fn with(field: &str, value: serde_json::Value) -> Hparams {
        let mut v: serde_json::Value = serde_json::from_str(BUILTIN_HPARAMS_JSON).unwrap();
        v.as_object_mut().unwrap().insert(field.into(), value);
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{field}: {e}"))
    }

    #[test]
    fn each_validation_rule_names_the_field() {
        use serde_json::json;
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("compression", json!(0), "compression"),
            ("window_length", json!(0), "window_length"),
            ("sequence_length", json!(0), "sequence_length"),
            ("sequence_length", json!(4096), "sequence_length"),
            ("desired_batch_size", json!(0), "desired_batch_size"),
            ("max_history", json!(0), "max_history"),
            ("validator_window_eval_size", json!(0), "validator_window_eval_size"),
            ("tokenizer_name", json!(" "), "tokenizer_name"),
            ("num_attention_heads", json!(3), "num_attention_heads"),
            ("num_key_value_heads", json!(3), "num_key_value_heads"),
            ("hidden_size", json!(0), "hidden_size"),
            ("vocab_size", json!(0), "vocab_size"),
            ("rope_theta", json!(-1.0), "rope_theta"),
            ("rms_norm_eps", json!(0.0), "rms_norm_eps"),
            ("learning_rate", json!(0.0), "learning_rate"),
            ("learning_rate", json!(-1e-4), "learning_rate"),
            ("optimizer_beta1", json!(1.0), "optimizer_beta1"),
            ("optimizer_beta2", json!(-0.1), "optimizer_beta2"),
            ("optimizer_weight_decay", json!(-0.1), "optimizer_weight_decay"),
            ("eta_min", json!(-1e-5), "eta_min"),
            ("grad_clip", json!(0.0), "grad_clip"),
            ("cosine_epoch_length", json!(0), "cosine_epoch_length"),
            ("validator_rewards_alpha", json!(1.5), "validator_rewards_alpha"),
            ("validator_moving_alpha", json!(-0.5), "validator_moving_alpha"),
            ("validator_sample_rate", json!(0.0), "validator_sample_rate"),
            ("validator_weights_temperature", json!(0), "validator_weights_temperature"),
            ("validator_norm_regularization", json!(-1), "validator_norm_regularization"),
            ("validator_pages_per_eval", json!(0), "validator_pages_per_eval"),
            ("validator_indicator_alpha", json!(0), "validator_indicator_alpha"),
            ("validator_weights_power", json!(20), "validator_weights_power"),
            ("validator_copy_similarity", json!(1.5), "validator_copy_similarity"),
            ("validator_specificity_full", json!(0), "validator_specificity_full"),
            ("validator_eval_batches", json!(0), "validator_eval_batches"),
            ("validator_eval_offset", json!(0), "validator_eval_offset"),
            ("mixed_precision_param", json!("int4"), "mixed_precision_param"),
            ("exchange_outer_lr", json!(0.0), "exchange_outer_lr"),
            ("exchange_outer_momentum", json!(1.0), "exchange_outer_momentum"),
            ("exchange_top_k", json!(0), "exchange_top_k"),
            ("exchange_top_k", json!(4097), "exchange_top_k"),
        ];
        for (field, value, named) in cases {
            let err = with(field, value.clone()).validate().expect_err(field).to_string();
            assert!(err.contains(named), "{field}={value}: {err}");
        }
        // The value itself is named for the plain rules.
        let err = with("compression", serde_json::json!(0)).validate().unwrap_err();
        assert!(matches!(err, HparamsError::Invalid { field: "compression", ref value, .. } if value == "0"), "{err}");
        let err = with("optimizer_beta1", serde_json::json!(1.0)).validate().unwrap_err().to_string();
        assert!(err.contains("optimizer_beta1 = 1") && err.contains("[0, 1)"), "{err}");
    }

    #[test]
    fn a_schedule_is_required_and_wsd_must_be_complete() {
        let mut hp = shipped();
        hp.cosine_epoch_length = None;
        let err = hp.validate().unwrap_err().to_string();
        assert!(err.contains("cosine_epoch_length") && err.contains("WSD"), "{err}");
        hp.num_warmup_steps = Some(10);
        hp.num_decay_steps = Some(100);
        let err = hp.validate().unwrap_err().to_string();
        assert!(err.contains("num_stable_steps"), "{err}");
        hp.num_stable_steps = Some(1000);
        hp.validate().unwrap();
        assert_eq!(
            hp.lr_schedule().unwrap(),
            LrSchedule::Wsd { warmup_steps: 10, stable_steps: 1000, decay_steps: 100 }
        );
    }

    #[test]
    fn activation_accepts_swiglu_and_silu_in_any_case_only() {
        for ok in ["swiGLU", "SWIGLU", "silu", "SiLU"] {
            assert_eq!(with("activation_function", ok.into()).activation_function, Activation::SwiGlu);
        }
        let mut v: serde_json::Value = serde_json::from_str(BUILTIN_HPARAMS_JSON).unwrap();
        v["activation_function"] = "gelu".into();
        let err = serde_json::from_value::<Hparams>(v).unwrap_err().to_string();
        assert!(err.contains("gelu") && err.contains("swiGLU"), "{err}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(BUILTIN_HPARAMS_JSON).unwrap();
        v.as_object_mut().unwrap().remove("window_length");
        let err = Hparams::from_json(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(err.contains("window_length"), "{err}");
    }

    #[test]
    fn unknown_fields_are_kept_and_reported_and_the_typo_key_is_accepted() {
        let mut v: serde_json::Value = serde_json::from_str(BUILTIN_HPARAMS_JSON).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.insert("topk_compression".into(), 32.into());
        obj.insert("blocks_per_window".into(), serde_json::json!({"a": [1, 2]}));
        obj.insert("valdiator_sample_rate".into(), 0.01.into());
        let hp = Hparams::from_json(v.to_string().as_bytes()).unwrap();
        hp.validate().unwrap();
        assert_eq!(hp.unknown_fields(), ["blocks_per_window", "topk_compression"]);
        assert_eq!(hp.extra["blocks_per_window"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(hp.validator_sample_rate, Some(0.01));
        // Unknown fields survive a round trip (so printed hparams show them).
        let back: Hparams = serde_json::from_str(&serde_json::to_string(&hp).unwrap()).unwrap();
        assert_eq!(back, hp);
    }

    #[test]
    fn source_parsing() {
        assert_eq!(HparamsSource::parse("builtin").unwrap(), HparamsSource::BuiltIn);
        assert_eq!(HparamsSource::parse("./hp.json").unwrap(), HparamsSource::File("./hp.json".into()));
        assert!(matches!(
            HparamsSource::parse("https://example.com/hparams.json").unwrap(),
            HparamsSource::Url(u) if u.host_str() == Some("example.com")
        ));
        let err = HparamsSource::parse("ftp://example.com/h.json").unwrap_err().to_string();
        assert!(err.contains("ftp://example.com/h.json") && err.contains("http"), "{err}");
        assert!(HparamsSource::parse("http://").is_err());
    }

    #[tokio::test]
    async fn bad_local_file_names_path_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hp.json");
        std::fs::write(&path, "{\n  \"compression\": 100,\n  oops\n}").unwrap();
        let err = load_hparams(&HparamsSource::File(path.clone()), &dir.path().join("cache.json"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 3"), "{err}");

        let missing = dir.path().join("nope.json");
        let err = load_hparams(&HparamsSource::File(missing.clone()), &dir.path().join("cache.json"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");

        std::fs::write(&path, BUILTIN_HPARAMS_JSON.replace("\"compression\": 100", "\"compression\": 0")).unwrap();
        let err = load_hparams(&HparamsSource::File(path.clone()), &dir.path().join("cache.json"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("compression = 0"), "{err}");
    }

    #[tokio::test]
    async fn good_local_file_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hp.json");
        std::fs::write(&path, BUILTIN_HPARAMS_JSON.replace("\"max_history\": 6", "\"max_history\": 9")).unwrap();
        let loaded = load_hparams(&HparamsSource::File(path.clone()), &dir.path().join("cache.json")).await.unwrap();
        assert_eq!(loaded.hparams.max_history, 9);
        assert_eq!(loaded.origin, HparamsOrigin::File(path));
        assert!(!dir.path().join("cache.json").exists(), "only URL sources are cached");
    }

    /// A real HTTP/1.1 server on 127.0.0.1 answering every request with one canned
    /// response; counts the requests it answered.
    async fn serve(status: &'static str, body: Vec<u8>) -> (Url, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/hparams.json", listener.local_addr().unwrap())).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            }
        });
        (url, hits)
    }

    async fn load(url: &Url, cache: &Path) -> Result<LoadedHparams, HparamsError> {
        load_hparams_with(&HparamsSource::Url(url.clone()), cache, &fast_policy()).await
    }

    #[tokio::test]
    async fn url_success_writes_the_cache_and_failures_fall_back_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("state").join("hparams-cache.json");
        let served = BUILTIN_HPARAMS_JSON.replace("\"max_history\": 6", "\"max_history\": 7");

        let (url, hits) = serve("200 OK", served.clone().into_bytes()).await;
        let loaded = load(&url, &cache).await.unwrap();
        assert_eq!(loaded.origin, HparamsOrigin::Url(url.clone()));
        assert_eq!(loaded.hparams.max_history, 7);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), served, "the cache holds the served bytes");

        // A server error is retried, then the cached copy is used.
        let (url, hits) = serve("500 Internal Server Error", b"oops".to_vec()).await;
        let loaded = load(&url, &cache).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 3, "500 is retried up to the attempt limit");
        assert_eq!(loaded.hparams.max_history, 7);
        match &loaded.origin {
            HparamsOrigin::Cache { url: u, cache_path, cause } => {
                assert_eq!(u, &url);
                assert_eq!(cache_path, &cache);
                assert!(cause.contains("500"), "{cause}");
            }
            other => panic!("expected the cache, got {other:?}"),
        }

        // Not found is not retried.
        let (url, hits) = serve("404 Not Found", Vec::new()).await;
        let loaded = load(&url, &cache).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(matches!(loaded.origin, HparamsOrigin::Cache { ref cause, .. } if cause.contains("404")));

        // Garbage is not retried and does not replace the cache.
        let (url, hits) = serve("200 OK", b"<html>not json</html>".to_vec()).await;
        let loaded = load(&url, &cache).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(matches!(loaded.origin, HparamsOrigin::Cache { ref cause, .. } if cause.contains("JSON")));
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), served);

        // Well-formed but invalid values fall back too.
        let bad = BUILTIN_HPARAMS_JSON.replace("\"compression\": 100", "\"compression\": 0");
        let (url, _) = serve("200 OK", bad.into_bytes()).await;
        let loaded = load(&url, &cache).await.unwrap();
        assert!(matches!(loaded.origin, HparamsOrigin::Cache { ref cause, .. } if cause.contains("compression")));
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), served);

        // A body over the size limit is refused.
        let (url, _) = serve("200 OK", vec![b' '; (1 << 16) + 1]).await;
        let loaded = load(&url, &cache).await.unwrap();
        assert!(matches!(loaded.origin, HparamsOrigin::Cache { ref cause, .. } if cause.contains("larger")));

        // The server gone: connection refused.
        let gone = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            Url::parse(&format!("http://{}/hparams.json", l.local_addr().unwrap())).unwrap()
        };
        let loaded = load(&gone, &cache).await.unwrap();
        assert_eq!(loaded.hparams.max_history, 7);
        assert!(matches!(loaded.origin, HparamsOrigin::Cache { ref url, .. } if url == &gone));
    }

    #[tokio::test]
    async fn url_failure_without_cache_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hparams-cache.json");
        let (url, _) = serve("503 Service Unavailable", Vec::new()).await;
        let err = load(&url, &cache).await.unwrap_err();
        assert!(matches!(err, HparamsError::UrlAndCache { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(url.as_str()), "{text}");
        assert!(text.contains("503"), "{text}");
        assert!(text.contains(&cache.display().to_string()) && text.contains("no cached copy"), "{text}");

        // A corrupt cache is as good as none, and says why.
        std::fs::write(&cache, "{").unwrap();
        let text = load(&url, &cache).await.unwrap_err().to_string();
        assert!(text.contains("not valid hparams JSON"), "{text}");
    }
}
