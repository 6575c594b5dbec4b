//! The canonical parameter list of `LlamaForCausalLM`: names, shapes and order exactly as
//! HF transformers' `state_dict()`, so slices index the same values in every peer and a
//! model trained here maps one-to-one onto an HF checkpoint.
//!
//! A parameter's values are addressed by their row-major (C-contiguous) position in the HF
//! shape — `[out_features, in_features]` for linear layers — whatever layout a backend
//! keeps internally.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The architecture numbers that decide the parameter list (HF `LlamaConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
}

#[derive(Debug, Error, PartialEq)]
pub enum ModelShapeError {
    #[error("{field} must be at least 1, got 0")]
    Zero { field: &'static str },
    #[error("num_attention_heads ({heads}) must divide hidden_size ({hidden})")]
    HeadsDontDivideHidden { heads: usize, hidden: usize },
    #[error("num_key_value_heads ({kv_heads}) must divide num_attention_heads ({heads})")]
    KvHeadsDontDivideHeads { kv_heads: usize, heads: usize },
    #[error("{field} must be a finite positive number, got {value}")]
    NotPositive { field: &'static str, value: f64 },
    #[error("parameter {name} has {numel} values; the slice protocol addresses at most 2^32")]
    ParameterTooLarge { name: String, numel: u64 },
}

impl ModelShape {
    /// The seed network's 1.2B Llama (hparams of November 2024, LLaMA-2 32k tokenizer).
    pub fn seed_1b2() -> Self {
        Self {
            vocab_size: 32_000,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 8,
            num_key_value_heads: 8,
            max_position_embeddings: 2048,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
        }
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn validate(&self) -> Result<(), ModelShapeError> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(ModelShapeError::Zero { field });
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelShapeError::HeadsDontDivideHidden {
                heads: self.num_attention_heads,
                hidden: self.hidden_size,
            });
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(ModelShapeError::KvHeadsDontDivideHeads {
                kv_heads: self.num_key_value_heads,
                heads: self.num_attention_heads,
            });
        }
        for (field, value) in [("rope_theta", self.rope_theta), ("rms_norm_eps", self.rms_norm_eps)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ModelShapeError::NotPositive { field, value });
            }
        }
        Ok(())
    }
}

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    fn new(name: String, shape: &[usize]) -> Self {
        Self { name, shape: shape.to_vec() }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// BLAKE3 of the architecture, parameter names and shapes: peers whose fingerprints differ
/// train different models and must never mix slices.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelFingerprint(pub [u8; 32]);

impl fmt::Display for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelFingerprint({self})")
    }
}

const FINGERPRINT_CONTEXT: &str = "tessera 2024-11 model fingerprint v1";

/// The ordered parameter list of a model, with its fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    params: Vec<ParamSpec>,
    fingerprint: ModelFingerprint,
}

impl ParamLayout {
    /// The layout of HF `LlamaForCausalLM` (untied `lm_head`) for `shape`.
    pub fn llama(shape: &ModelShape) -> Result<Self, ModelShapeError> {
        shape.validate()?;
        let h = shape.hidden_size;
        let kv = shape.num_key_value_heads * shape.head_dim();
        let i = shape.intermediate_size;
        let mut params = Vec::with_capacity(3 + 9 * shape.num_hidden_layers);
        params.push(ParamSpec::new("model.embed_tokens.weight".into(), &[shape.vocab_size, h]));
        for l in 0..shape.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            params.push(ParamSpec::new(p("self_attn.q_proj.weight"), &[h, h]));
            params.push(ParamSpec::new(p("self_attn.k_proj.weight"), &[kv, h]));
            params.push(ParamSpec::new(p("self_attn.v_proj.weight"), &[kv, h]));
            params.push(ParamSpec::new(p("self_attn.o_proj.weight"), &[h, h]));
            params.push(ParamSpec::new(p("mlp.gate_proj.weight"), &[i, h]));
            params.push(ParamSpec::new(p("mlp.up_proj.weight"), &[i, h]));
            params.push(ParamSpec::new(p("mlp.down_proj.weight"), &[h, i]));
            params.push(ParamSpec::new(p("input_layernorm.weight"), &[h]));
            params.push(ParamSpec::new(p("post_attention_layernorm.weight"), &[h]));
        }
        params.push(ParamSpec::new("model.norm.weight".into(), &[h]));
        params.push(ParamSpec::new("lm_head.weight".into(), &[shape.vocab_size, h]));
        for p in &params {
            let numel = p.shape.iter().map(|&d| d as u64).product::<u64>();
            if numel > u64::from(u32::MAX) + 1 {
                return Err(ModelShapeError::ParameterTooLarge { name: p.name.clone(), numel });
            }
        }
        let fingerprint = fingerprint("llama", shape, &params);
        Ok(Self { params, fingerprint })
    }

    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn total_numel(&self) -> usize {
        self.params.iter().map(ParamSpec::numel).sum()
    }

    pub fn fingerprint(&self) -> ModelFingerprint {
        self.fingerprint
    }

    /// Position of a parameter in canonical order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }
}

fn fingerprint(arch: &str, shape: &ModelShape, params: &[ParamSpec]) -> ModelFingerprint {
    let mut h = blake3::Hasher::new_derive_key(FINGERPRINT_CONTEXT);
    let put_str = |h: &mut blake3::Hasher, s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put_str(&mut h, arch);
    // Numbers that change the function the parameters compute, beyond their shapes.
    h.update(&(shape.num_attention_heads as u64).to_le_bytes());
    h.update(&(shape.num_key_value_heads as u64).to_le_bytes());
    h.update(&shape.rope_theta.to_le_bytes());
    h.update(&shape.rms_norm_eps.to_le_bytes());
    h.update(&(params.len() as u64).to_le_bytes());
    for p in params {
        put_str(&mut h, &p.name);
        h.update(&(p.shape.len() as u64).to_le_bytes());
        for &d in &p.shape {
            h.update(&(d as u64).to_le_bytes());
        }
    }
    ModelFingerprint(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_shape_has_1_2b_parameters_in_hf_order() {
        let layout = ParamLayout::llama(&ModelShape::seed_1b2()).unwrap();
        assert_eq!(layout.len(), 3 + 9 * 16);
        assert_eq!(layout.total_numel(), 1_204_881_408);
        let names: Vec<_> = layout.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[0], "model.embed_tokens.weight");
        assert_eq!(names[1], "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(names[7], "model.layers.0.mlp.down_proj.weight");
        assert_eq!(names[9], "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(names[names.len() - 2], "model.norm.weight");
        assert_eq!(names[names.len() - 1], "lm_head.weight");
        assert_eq!(layout.params()[7].shape, [2048, 8192]);
        assert_eq!(layout.position("lm_head.weight"), Some(layout.len() - 1));
    }

    #[test]
    fn grouped_kv_heads_shrink_k_and_v() {
        let shape = ModelShape { num_key_value_heads: 2, ..ModelShape::seed_1b2() };
        let layout = ParamLayout::llama(&shape).unwrap();
        assert_eq!(layout.params()[2].name, "model.layers.0.self_attn.k_proj.weight");
        assert_eq!(layout.params()[2].shape, [512, 2048]);
        assert_eq!(layout.params()[3].shape, [512, 2048]);
    }

    /// Pinned: a change here splits the network (peers reject each other's slices).
    #[test]
    fn seed_fingerprint_is_pinned() {
        let layout = ParamLayout::llama(&ModelShape::seed_1b2()).unwrap();
        assert_eq!(
            layout.fingerprint().to_string(),
            "8871cde7b6795a00216e455254b944a63cba82320e5946aa2d3f05d6b909a310"
        );
    }

    #[test]
    fn any_architecture_change_changes_the_fingerprint() {
        let base = ModelShape::seed_1b2();
        let fp = |s: &ModelShape| ParamLayout::llama(s).unwrap().fingerprint();
        let variants = [
            ModelShape { vocab_size: 32_001, ..base.clone() },
            ModelShape { num_hidden_layers: 15, ..base.clone() },
            ModelShape { num_key_value_heads: 4, ..base.clone() },
            ModelShape { num_attention_heads: 16, ..base.clone() },
            ModelShape { rope_theta: 500_000.0, ..base.clone() },
            ModelShape { rms_norm_eps: 1e-5, ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(fp(v), fp(&base), "{v:?}");
        }
        // max_position_embeddings bounds the input, not the function: same fingerprint.
        assert_eq!(fp(&ModelShape { max_position_embeddings: 4096, ..base.clone() }), fp(&base));
    }

    #[test]
    fn inconsistent_shapes_are_rejected_with_the_cause() {
        let base = ModelShape::seed_1b2();
        let e = ParamLayout::llama(&ModelShape { num_attention_heads: 3, ..base.clone() }).unwrap_err();
        assert_eq!(e, ModelShapeError::HeadsDontDivideHidden { heads: 3, hidden: 2048 });
        let e = ParamLayout::llama(&ModelShape { num_key_value_heads: 3, ..base.clone() }).unwrap_err();
        assert!(matches!(e, ModelShapeError::KvHeadsDontDivideHeads { .. }));
        let e = ParamLayout::llama(&ModelShape { hidden_size: 0, ..base.clone() }).unwrap_err();
        assert_eq!(e, ModelShapeError::Zero { field: "hidden_size" });
        let e = ParamLayout::llama(&ModelShape { rope_theta: f64::NAN, ..base }).unwrap_err();
        assert!(matches!(e, ModelShapeError::NotPositive { field: "rope_theta", .. }));
    }
}
