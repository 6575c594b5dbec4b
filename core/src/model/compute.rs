//! How a node computes the model on its device: the float precision of the products, the
//! attention kernel, and whether decoder blocks are recomputed in the backward pass.
//! None of these change what peers exchange (slices and checkpoints stay fp32 values);
//! they trade speed and memory on one node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Precision of the model's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// `bf16-mixed` on a CUDA GPU with bf16 tensor cores (compute capability ≥ 8.0), else
    /// `fp32`.
    #[default]
    Auto,
    /// fp32 master weights, AdamW moments, norms, softmax statistics and loss; matmul
    /// operands cast to bf16 with fp32 accumulation (torch's bf16 autocast).
    Bf16Mixed,
    /// Everything in fp32 (TF32 tensor cores on CUDA sm_80+).
    Fp32,
}

/// How attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKernel {
    /// `fused` where the backend has the fused kernels (CUDA), else `naive`.
    #[default]
    Auto,
    /// Scores, mask, softmax and product as separate tensor operations: materialises the
    /// `[batch, heads, seq, seq]` scores; runs on every backend (the reference).
    Naive,
    /// One kernel pair (forward, backward) in the FlashAttention-2 style: online softmax,
    /// only the log-sum-exp rows saved for the backward.
    Fused,
}

/// The compute choices of one node (settings `precision`, `attention`,
/// `recompute_activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeOptions {
    pub precision: Precision,
    pub attention: AttentionKernel,
    /// Keep only each decoder block's input in the forward pass and recompute the block in
    /// the backward: activation memory of one block instead of all of them, for about a
    /// third more compute.
    pub recompute_activations: bool,
}

/// What [`ComputeOptions`] resolve to on a concrete backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedCompute {
    pub bf16_matmul: bool,
    pub fused_attention: bool,
    pub recompute_activations: bool,
}

/// Whether `attention = "auto"` takes the fused kernels where they exist. Not until a GPU
/// has measured them faster than burn's tensor operations: they use scalar FMAs from shared
/// memory (no tensor cores) with bank conflicts in `tile_dot`, estimated ~0.04× of PyTorch's
/// SDPA at the 1.2B shape (issue 24), so `auto` is the tensor-op path everywhere; `fused`
/// stays available to ask for (and to measure: `scripts/gpu_check.sh`).
pub const FUSED_ATTENTION_PROVEN_FASTER: bool = false;

/// What a backend offers for [`ComputeOptions::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendCaps {
    /// bf16 tensors and products exist on the backend (possibly emulated, as on CPUs).
    pub bf16: bool,
    /// bf16 products are faster than fp32 ones (tensor cores): `auto` takes bf16-mixed.
    pub fast_bf16: bool,
    /// The fused attention kernels exist on the backend.
    pub fused_attention: bool,
}

impl ComputeOptions {
    /// The choices on a backend (`backend` names it in errors). Explicit requests the
    /// backend cannot honour are errors naming the setting.
    pub fn resolve(&self, backend: &str, caps: BackendCaps) -> Result<ResolvedCompute, ComputeError> {
        let unsupported = |setting, value| ComputeError::Unsupported { setting, value, backend: backend.to_owned() };
        let bf16_matmul = match self.precision {
            Precision::Auto => caps.fast_bf16,
            Precision::Bf16Mixed if caps.bf16 => true,
            Precision::Bf16Mixed => return Err(unsupported("precision", "bf16-mixed")),
            Precision::Fp32 => false,
        };
        let fused_attention = match self.attention {
            AttentionKernel::Auto => caps.fused_attention && FUSED_ATTENTION_PROVEN_FASTER,
            AttentionKernel::Fused if caps.fused_attention => true,
            AttentionKernel::Fused => return Err(unsupported("attention", "fused")),
            AttentionKernel::Naive => false,
        };
        Ok(ResolvedCompute { bf16_matmul, fused_attention, recompute_activations: self.recompute_activations })
    }
}

impl fmt::Display for ResolvedCompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} attention{}",
            if self.bf16_matmul { "bf16-mixed" } else { "fp32" },
            if self.fused_attention { "fused" } else { "naive" },
            if self.recompute_activations { ", blocks recomputed" } else { "" }
        )
    }
}

/// A compute choice this build or device cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error("setting `{setting}` = \"{value}\" is not available on the {backend} backend")]
    Unsupported { setting: &'static str, value: &'static str, backend: String },
    #[error("setting `{setting}`: {value:?} is not one of {expected}")]
    Unknown { setting: &'static str, value: String, expected: &'static str },
}

macro_rules! text_enum {
    ($ty:ty, $setting:literal, $expected:literal, $($variant:ident = $text:literal),+) => {
        impl $ty {
            /// The setting's accepted values.
            pub const EXPECTED: &'static str = $expected;
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = ComputeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(ComputeError::Unknown { setting: $setting, value: s.to_owned(), expected: Self::EXPECTED }),
                }
            }
        }
    };
}

text_enum!(
    Precision,
    "precision",
    "`auto`, `bf16-mixed` or `fp32`",
    Auto = "auto",
    Bf16Mixed = "bf16-mixed",
    Fp32 = "fp32"
);
text_enum!(AttentionKernel, "attention", "`auto`, `naive` or `fused`", Auto = "auto", Naive = "naive", Fused = "fused");

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by index; plain `cuda` is GPU 0, as in torch.
    Cuda(u32),
}

impl Device {
    pub const EXPECTED: &str = "\"cpu\", \"cuda\" or \"cuda:N\"";

    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(Self::Cpu),
            "cuda" => Some(Self::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:")?;
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                index.parse().ok().map(Self::Cuda)
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_backend_and_explicit_requests_are_checked() {
        let auto = ComputeOptions::default();
        let gpu = BackendCaps { bf16: true, fast_bf16: true, fused_attention: true };
        let cuda = auto.resolve("cuda", gpu).unwrap();
        // The fused kernels are not `auto`'s until a GPU has measured them faster.
        assert!(cuda.bf16_matmul && !cuda.fused_attention && !cuda.recompute_activations);
        let asked = ComputeOptions { attention: AttentionKernel::Fused, ..auto };
        assert!(asked.resolve("cuda", gpu).unwrap().fused_attention, "still there when asked for");
        let cpu = auto.resolve("ndarray", BackendCaps::default()).unwrap();
        assert!(!cpu.bf16_matmul && !cpu.fused_attention);
        // bf16 emulated on a CPU: not taken by `auto`, allowed when asked for.
        let flex = BackendCaps { bf16: true, ..BackendCaps::default() };
        assert!(!auto.resolve("flex", flex).unwrap().bf16_matmul);
        let bf16 = ComputeOptions { precision: Precision::Bf16Mixed, ..auto };
        assert!(bf16.resolve("flex", flex).unwrap().bf16_matmul);
        let fp32 = ComputeOptions {
            precision: Precision::Fp32,
            attention: AttentionKernel::Naive,
            recompute_activations: true,
        };
        assert_eq!(fp32.resolve("cuda", gpu).unwrap().to_string(), "fp32, naive attention, blocks recomputed");
        let err = bf16.resolve("ndarray", BackendCaps::default()).unwrap_err().to_string();
        assert_eq!(err, "setting `precision` = \"bf16-mixed\" is not available on the ndarray backend");
        let fused = ComputeOptions { attention: AttentionKernel::Fused, ..auto };
        assert!(fused.resolve("ndarray", BackendCaps::default()).unwrap_err().to_string().contains("`attention`"));
    }

    #[test]
    fn text_round_trips_and_names_the_setting() {
        for p in [Precision::Auto, Precision::Bf16Mixed, Precision::Fp32] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!("FUSED".parse::<AttentionKernel>().unwrap(), AttentionKernel::Fused);
        let err = "bf16".parse::<Precision>().unwrap_err().to_string();
        assert_eq!(err, "setting `precision`: \"bf16\" is not one of `auto`, `bf16-mixed` or `fp32`");
        let toml: ComputeOptions =
            serde_json::from_str(r#"{"precision":"bf16-mixed","recompute_activations":true}"#).unwrap();
        assert_eq!(toml.precision, Precision::Bf16Mixed);
        assert!(toml.recompute_activations);
    }
}
