//! The window's gradient out of the trainer, and an aggregate gradient back in: the two
//! halves of the gradient exchange, where every miner takes the same AdamW step on the
//! peers' aggregate gradient (data parallelism with a compressed all-reduce).

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

use super::{StepReport, Trainer};
use crate::params::{ParamError, ParamRef, to_vec};

impl<B: AutodiffBackend> Trainer<B> {
    /// The gradient accumulated since the last step, every parameter flattened row-major
    /// in canonical order (zeros where a parameter has none), and how many micro-batches
    /// it sums; the accumulator is emptied. `None` when nothing is pending.
    pub fn take_gradient(&mut self) -> Option<(Vec<f32>, usize)> {
        if self.pending == 0 {
            return None;
        }
        let grads = std::mem::replace(&mut self.accum, GradientsAccumulator::new()).grads();
        let pending = std::mem::take(&mut self.pending);
        let model = self.model.as_ref()?;
        let mut out = Vec::new();
        for index in 0..model.num_params() {
            let param = model.param(index).ok()?;
            let flat = match &param {
                ParamRef::Matrix(p) => grads.get::<B::InnerBackend, 2>(p.id).map(|g| {
                    let n = g.shape().num_elements();
                    g.reshape([n])
                }),
                ParamRef::Vector(p) => grads.get::<B::InnerBackend, 1>(p.id),
            };
            match flat {
                Some(g) => out.extend(to_vec(g)),
                None => out.extend(std::iter::repeat_n(0.0, param.numel())),
            }
        }
        Some((out, pending))
    }

    /// One AdamW step with `gradient` (as [`Self::take_gradient`] lays it out) in place of
    /// the accumulated one: clipped to the global norm, at the scheduled learning rate, the
    /// step counter advanced; pending gradients are dropped. The model is unchanged when
    /// `gradient` does not fit it.
    pub fn step_with_gradient(&mut self, gradient: &[f32], micro_batches: usize) -> Result<StepReport, ParamError> {
        let model = self.model();
        let expected: usize = (0..model.num_params()).map(|i| model.param(i).map_or(0, |p| p.numel())).sum();
        if gradient.len() != expected {
            return Err(ParamError::WrongLength { index: 0, expected, found: gradient.len() });
        }
        if let Some(position) = gradient.iter().position(|v| !v.is_finite()) {
            return Err(ParamError::NonFinite { position, value: gradient[position] });
        }
        let mut grads = GradientsParams::new();
        let mut at = 0;
        for index in 0..model.num_params() {
            match model.param(index)? {
                ParamRef::Matrix(p) => {
                    let [rows, cols] = p.val().dims();
                    let values = TensorData::new(gradient[at..at + rows * cols].to_vec(), [rows * cols]);
                    let g = Tensor::<B::InnerBackend, 1>::from_data(values, &p.val().device()).reshape([rows, cols]);
                    grads.register::<B::InnerBackend, 2>(p.id, g);
                    at += rows * cols;
                }
                ParamRef::Vector(p) => {
                    let n = p.val().dims()[0];
                    let values = TensorData::new(gradient[at..at + n].to_vec(), [n]);
                    grads.register::<B::InnerBackend, 1>(p.id, Tensor::from_data(values, &p.val().device()));
                    at += n;
                }
            }
        }
        self.accum = GradientsAccumulator::new();
        self.pending = 0;
        self.apply_step(grads, micro_batches).ok_or(ParamError::LayoutMismatch { expected, found: at })
    }
}
