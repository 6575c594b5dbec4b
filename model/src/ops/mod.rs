//! The model's own operations, over burn's: a backend trait [`ModelBackend`] with
//! the fused causal attention (FlashAttention-2 style, forward and backward) and the
//! decoder block as points a backend can replace.
//!
//! - CPU backends take the defaults: naive tensor operations, which are also the reference
//!   the fused kernels are tested against.
//! - CubeCL backends (CUDA) run the fused attention kernels (`crate::fused`).
//! - `Autodiff<B>` ([`autodiff`]) wraps B's fused attention in a custom autodiff operation
//!   whose backward is B's fused backward (saving q, k, v, the output and the log-sum-exp
//!   rows, never the `[batch, heads, seq, seq]` scores).
//!
//! (Block recomputation is not an operation here but a way of running the step:
//! `crate::recompute`.)

mod autodiff;
mod naive;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};
use burn::tensor::{Bool, Tensor, TensorPrimitive};
use tessera_core::model::ResolvedCompute;

pub use naive::{naive_attention, naive_attention_backward, naive_attention_forward, repeat_kv, sum_groups};

/// A backend the model runs on: burn's [`Backend`] plus the operations below, each with a
/// default in plain tensor operations.
pub trait ModelBackend: Backend {
    /// Whether [`Self::fused_attention_forward`] and [`Self::fused_attention_backward`]
    /// run fused kernels here (else they are the naive reference and `attention = "fused"`
    /// is refused).
    fn has_fused_attention() -> bool {
        false
    }

    /// Whether burn's own attention operation (`burn::tensor::module::attention`: on
    /// CubeCL backends cubek's flash attention with tensor cores, autotuned against its
    /// separate kernels) should serve forward passes that take no gradient. Off on CPU
    /// backends, where it is the same naive computation in another order.
    fn has_inference_attention() -> bool {
        false
    }

    /// Causal attention. `q: [b, h, t, d]`; `k`, `v: [b, kv, t, d]` with `h % kv == 0`
    /// (query head `i` reads KV head `i / (h / kv)`). Returns the output `[b, h, t, d]` in
    /// q's float type and the log-sum-exp rows `lse: [b, h, t]` in f32,
    /// `lse_i = log Σ_{j ≤ i} exp(scale · q_i·k_j)`.
    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) = naive_attention_forward::<Self>(float(q), float(k), float(v), scale);
        (out.into_primitive().tensor(), lse.into_primitive().tensor())
    }

    /// `(dq, dk, dv)` of [`Self::fused_attention_forward`] given its output, its lse rows and
    /// the output's gradient.
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = naive_attention_backward::<Self>(
            float(q),
            float(k),
            float(v),
            float(out),
            float(lse),
            float(grad_out),
            scale,
        );
        (dq.into_primitive().tensor(), dk.into_primitive().tensor(), dv.into_primitive().tensor())
    }
}

/// A training backend: autodiff over a [`ModelBackend`].
pub trait TrainBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> TrainBackend for B where B: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

/// What every decoder block of one forward pass shares.
#[derive(Debug, Clone)]
pub struct BlockContext<B: Backend> {
    /// Rotary tables, `[1, 1, T, head_dim]`.
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
    /// `true` above the diagonal (the positions masked), `[1, 1, T, T]`; naive attention only.
    pub mask: Tensor<B, 4, Bool>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub compute: ResolvedCompute,
    /// No gradient will be taken through this pass (evaluation, scoring): forward-only
    /// kernels may serve it.
    pub inference: bool,
}

/// Causal attention as `compute` asks: the fused operation, or naive tensor operations
/// (autodiff then differentiates each of them).
pub fn causal_attention<B: ModelBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    ctx: &BlockContext<B>,
) -> Tensor<B, 4> {
    let scale = 1.0 / (ctx.head_dim as f32).sqrt();
    if ctx.inference && B::has_inference_attention() {
        inference_attention(q, k, v, ctx.num_heads / ctx.num_kv_heads.max(1))
    } else if ctx.compute.fused_attention {
        fused_attention(q, k, v, scale)
    } else {
        naive_attention(q, k, v, ctx.mask.clone(), scale, ctx.compute.bf16_matmul)
    }
}

/// burn's attention operation, causal, at its default scale 1/√head_dim (a scale given
/// explicitly sends CubeCL backends to their separate kernels); grouped KV heads are
/// repeated to the query heads first. Forward only.
pub fn inference_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    groups: usize,
) -> Tensor<B, 4> {
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    burn::tensor::module::attention(q, repeat_kv(k, groups), repeat_kv(v, groups), None, None, options)
}

/// The backend's fused causal attention on tensors (the log-sum-exp rows dropped).
pub fn fused_attention<B: ModelBackend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, scale: f32) -> Tensor<B, 4> {
    let (out, _lse) = B::fused_attention_forward(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        scale,
    );
    float(out)
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

#[cfg(feature = "ndarray")]
impl ModelBackend for burn::backend::NdArray<f32> {}
/// f64: the gradient checks' finite differences.
#[cfg(feature = "ndarray")]
impl ModelBackend for burn::backend::NdArray<f64> {}
#[cfg(any(feature = "flex", feature = "bf16-test"))]
impl ModelBackend for burn::backend::Flex<f32> {}
#[cfg(feature = "candle")]
#[allow(deprecated)]
impl ModelBackend for burn::backend::Candle<f32> {}

/// The bf16-mixed step; flex is the CPU backend with bf16.
#[cfg(all(test, any(feature = "flex", feature = "bf16-test")))]
mod tests;
