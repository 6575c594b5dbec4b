//! The bridge between the model and the slice protocol: parameters addressed by their
//! canonical position (`tessera_core::model::ParamLayout`), read and written at slice
//! indices **on the model's device** — only the slice crosses to the host, never the model.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use tessera_core::model::ParamLayout;
use tessera_core::slice::SliceIndices;
use thiserror::Error;

use crate::llama::Llama;

/// Parameters per decoder layer, in canonical order (names after `model.layers.{i}.`).
const LAYER_FIELDS: [&str; 9] = [
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
];
const PER_LAYER: usize = LAYER_FIELDS.len();

#[derive(Debug, Error, PartialEq)]
pub enum ParamError {
    #[error("parameter position {index} does not exist (the model has {count})")]
    NoSuchParam { index: usize, count: usize },
    #[error("parameter {index} has {expected} values, {found} given")]
    WrongLength { index: usize, expected: usize, found: usize },
    #[error("no parameter named {0:?} in this model")]
    NoSuchName(String),
    #[error("the slice layout has {found} parameters, the model {expected}")]
    LayoutMismatch { expected: usize, found: usize },
    #[error("a non-finite value ({value}) at position {position} of the slice")]
    NonFinite { position: usize, value: f32 },
}

/// A canonical parameter, whatever its rank.
pub enum ParamRef<'a, B: Backend> {
    Matrix(&'a Param<Tensor<B, 2>>),
    Vector(&'a Param<Tensor<B, 1>>),
}

impl<B: Backend> ParamRef<'_, B> {
    /// The values, flattened row-major (HF order), on the device.
    pub fn flat(&self) -> Tensor<B, 1> {
        match self {
            ParamRef::Matrix(p) => {
                let [r, c] = p.val().dims();
                p.val().reshape([r * c])
            }
            ParamRef::Vector(p) => p.val(),
        }
    }

    pub fn numel(&self) -> usize {
        match self {
            ParamRef::Matrix(p) => p.val().dims().iter().product(),
            ParamRef::Vector(p) => p.val().dims()[0],
        }
    }
}

/// Applies `f` to a parameter's flat values, keeping its id, shape and autodiff status.
fn map_flat<B: Backend, const D: usize>(
    param: Param<Tensor<B, D>>,
    f: impl FnOnce(Tensor<B, 1>) -> Tensor<B, 1>,
) -> Param<Tensor<B, D>> {
    param.map(|t| {
        let require_grad = t.is_require_grad();
        let shape = t.shape();
        let n = shape.num_elements();
        let out: Tensor<B, D> = f(t.detach().reshape([n])).reshape(shape);
        // A fresh leaf: after an optimizer step `out` is the result of ops, and autodiff
        // refuses to track a non-leaf.
        if require_grad { out.detach().require_grad() } else { out }
    })
}

impl<B: Backend> Llama<B> {
    /// Number of canonical parameters.
    pub fn num_params(&self) -> usize {
        3 + PER_LAYER * self.layers.len()
    }

    /// The parameter at canonical position `index`.
    pub fn param(&self, index: usize) -> Result<ParamRef<'_, B>, ParamError> {
        let count = self.num_params();
        let missing = ParamError::NoSuchParam { index, count };
        Ok(match index {
            0 => ParamRef::Matrix(&self.embed_tokens),
            i if i == count - 2 => ParamRef::Vector(&self.norm),
            i if i == count - 1 => ParamRef::Matrix(&self.lm_head),
            i if i < count => {
                let layer = &self.layers[(i - 1) / PER_LAYER];
                match (i - 1) % PER_LAYER {
                    0 => ParamRef::Matrix(&layer.q_proj),
                    1 => ParamRef::Matrix(&layer.k_proj),
                    2 => ParamRef::Matrix(&layer.v_proj),
                    3 => ParamRef::Matrix(&layer.o_proj),
                    4 => ParamRef::Matrix(&layer.gate_proj),
                    5 => ParamRef::Matrix(&layer.up_proj),
                    6 => ParamRef::Matrix(&layer.down_proj),
                    7 => ParamRef::Vector(&layer.input_layernorm),
                    _ => ParamRef::Vector(&layer.post_attention_layernorm),
                }
            }
            _ => return Err(missing),
        })
    }

    /// Canonical position of an HF parameter name (`model.layers.3.mlp.up_proj.weight`).
    pub fn position_of(&self, name: &str) -> Result<usize, ParamError> {
        let layers = self.layers.len();
        let index = match name {
            "model.embed_tokens.weight" => Some(0),
            "model.norm.weight" => Some(1 + PER_LAYER * layers),
            "lm_head.weight" => Some(2 + PER_LAYER * layers),
            _ => name.strip_prefix("model.layers.").and_then(|rest| {
                let (layer, field) = rest.split_once('.')?;
                let index: usize = layer.parse::<usize>().ok().filter(|&l| l < layers && layer == l.to_string())?;
                let offset = LAYER_FIELDS.iter().position(|f| *f == field)?;
                Some(1 + PER_LAYER * index + offset)
            }),
        };
        index.ok_or_else(|| ParamError::NoSuchName(name.to_owned()))
    }

    /// The parameter with HF name `name`.
    pub fn param_by_name(&self, name: &str) -> Result<ParamRef<'_, B>, ParamError> {
        self.param(self.position_of(name)?)
    }

    /// Replaces parameter `index`'s flat values with `f(values)`.
    pub fn map_param(mut self, index: usize, f: impl FnOnce(Tensor<B, 1>) -> Tensor<B, 1>) -> Result<Self, ParamError> {
        let count = self.num_params();
        match index {
            0 => self.embed_tokens = map_flat(self.embed_tokens, f),
            i if i == count - 2 => self.norm = map_flat(self.norm, f),
            i if i == count - 1 => self.lm_head = map_flat(self.lm_head, f),
            i if i < count => {
                let at = (i - 1) / PER_LAYER;
                let mut layer = self.layers.remove(at);
                match (i - 1) % PER_LAYER {
                    0 => layer.q_proj = map_flat(layer.q_proj, f),
                    1 => layer.k_proj = map_flat(layer.k_proj, f),
                    2 => layer.v_proj = map_flat(layer.v_proj, f),
                    3 => layer.o_proj = map_flat(layer.o_proj, f),
                    4 => layer.gate_proj = map_flat(layer.gate_proj, f),
                    5 => layer.up_proj = map_flat(layer.up_proj, f),
                    6 => layer.down_proj = map_flat(layer.down_proj, f),
                    7 => layer.input_layernorm = map_flat(layer.input_layernorm, f),
                    _ => layer.post_attention_layernorm = map_flat(layer.post_attention_layernorm, f),
                }
                self.layers.insert(at, layer);
            }
            _ => return Err(ParamError::NoSuchParam { index, count }),
        }
        Ok(self)
    }

    /// All values of parameter `index`, flattened in HF order (export, tests).
    pub fn param_values(&self, index: usize) -> Result<Vec<f32>, ParamError> {
        let flat = self.param(index)?.flat();
        Ok(to_vec(flat))
    }

    /// Overwrites all values of parameter `index` (HF order).
    pub fn set_param_values(self, index: usize, values: &[f32]) -> Result<Self, ParamError> {
        let expected = self.param(index)?.numel();
        if values.len() != expected {
            return Err(ParamError::WrongLength { index, expected, found: values.len() });
        }
        let data = TensorData::new(values.to_vec(), [expected]);
        self.map_param(index, |t| Tensor::from_data(data, &t.device()))
    }

    /// The model's values at the window's slice positions, in slice body order. Gathered
    /// on the device; one transfer of the slice to the host.
    pub fn gather(&self, indices: &SliceIndices) -> Result<Vec<f32>, ParamError> {
        self.check_layout(indices)?;
        let device = self.embed_tokens.val().device();
        let parts = (0..self.num_params())
            .map(|p| {
                let idx = index_tensor::<B>(indices.param(p), &device);
                Ok(self.param(p)?.flat().select(0, idx))
            })
            .collect::<Result<Vec<_>, ParamError>>()?;
        Ok(to_vec(Tensor::cat(parts, 0)))
    }

    /// Writes slice `values` at the window's positions (on the device); nothing else changes.
    pub fn scatter(self, indices: &SliceIndices, values: &[f32]) -> Result<Self, ParamError> {
        // `Assign` is not implemented by every backend (ndarray panics); two additions
        // are, and stay exact: x + (-x) = 0, then 0 + v = v.
        self.scatter_with(indices, values, |t, idx, vals| {
            let old = t.clone().select(0, idx.clone());
            t.select_assign(0, idx.clone(), old.neg(), IndexingUpdateOp::Add).select_assign(
                0,
                idx,
                vals,
                IndexingUpdateOp::Add,
            )
        })
    }

    /// Adds `deltas` at the window's positions (on the device); nothing else changes.
    pub fn scatter_add(self, indices: &SliceIndices, deltas: &[f32]) -> Result<Self, ParamError> {
        self.scatter_with(indices, deltas, |t, idx, vals| t.select_assign(0, idx, vals, IndexingUpdateOp::Add))
    }

    /// Checks `values` against the window's positions, then replaces each parameter's flat
    /// tensor with `f(tensor, positions, its part of values)`.
    fn scatter_with(
        mut self,
        indices: &SliceIndices,
        values: &[f32],
        f: impl Fn(Tensor<B, 1>, Tensor<B, 1, Int>, Tensor<B, 1>) -> Tensor<B, 1>,
    ) -> Result<Self, ParamError> {
        self.check_layout(indices)?;
        if values.len() != indices.total_len() {
            return Err(ParamError::WrongLength {
                index: usize::MAX,
                expected: indices.total_len(),
                found: values.len(),
            });
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(ParamError::NonFinite { position, value: values[position] });
        }
        let device = self.embed_tokens.val().device();
        let offsets = indices.offsets();
        for p in 0..self.num_params() {
            let part = &values[offsets[p]..offsets[p + 1]];
            let idx = index_tensor::<B>(indices.param(p), &device);
            let vals = Tensor::<B, 1>::from_data(TensorData::new(part.to_vec(), [part.len()]), &device);
            self = self.map_param(p, |t| f(t, idx, vals))?;
        }
        Ok(self)
    }

    fn check_layout(&self, indices: &SliceIndices) -> Result<(), ParamError> {
        if indices.num_params() != self.num_params() {
            return Err(ParamError::LayoutMismatch { expected: self.num_params(), found: indices.num_params() });
        }
        Ok(())
    }

    /// Checks the model against the canonical layout (names are positional).
    pub fn matches_layout(&self, layout: &ParamLayout) -> bool {
        layout.len() == self.num_params()
            && layout.params().iter().enumerate().all(|(i, spec)| self.param(i).map(|p| p.numel()) == Ok(spec.numel()))
    }
}

fn index_tensor<B: Backend>(indices: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = indices.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(data, [indices.len()]), device)
}

/// Device tensor to host values (f32, whatever the backend's float type).
pub(crate) fn to_vec<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap_or_default()
}
