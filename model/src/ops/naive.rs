//! Attention as plain tensor operations: what the model runs where no fused kernel exists,
//! and the reference the fused kernels are tested against. The explicit forward (with its
//! log-sum-exp rows) and backward are FlashAttention-2's equations without the tiling.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, FloatDType, Tensor};

/// The float type the explicit forward and backward compute in: f32 for half-precision
/// inputs, f64 inputs as they are (the tests' reference runs the same equations in f64).
fn widened<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F64 { t } else { t.cast(FloatDType::F32) }
}

/// `[b, kv, t, d]` → `[b, kv · rep, t, d]`, each KV head repeated for its `rep` query heads.
pub fn repeat_kv<B: Backend>(t: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    if rep == 1 {
        return t;
    }
    let [b, kv, s, d] = t.dims();
    t.unsqueeze_dim::<5>(2).repeat_dim(2, rep).reshape([b, kv * rep, s, d])
}

/// `[b, kv · rep, t, d]` → `[b, kv, t, d]`, summing each group's query heads (the
/// gradient of [`repeat_kv`]).
pub fn sum_groups<B: Backend>(t: Tensor<B, 4>, kv: usize) -> Tensor<B, 4> {
    let [b, h, s, d] = t.dims();
    if h == kv {
        return t;
    }
    t.reshape([b, kv, h / kv, s, d]).sum_dim(2).reshape([b, kv, s, d])
}

fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, bf16: bool) -> Tensor<B, D> {
    if bf16 { a.cast(FloatDType::BF16).matmul(b.cast(FloatDType::BF16)).cast(FloatDType::F32) } else { a.matmul(b) }
}

/// Causal attention by scores, mask and softmax; `mask` is `true` above the diagonal,
/// broadcast over batch and heads. With `bf16`, both products take bf16 operands (the
/// softmax stays f32), as torch's autocast does.
pub fn naive_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
    scale: f32,
    bf16: bool,
) -> Tensor<B, 4> {
    let rep = q.dims()[1] / k.dims()[1];
    let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
    let scores = matmul(q, k.swap_dims(2, 3), bf16) * scale;
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    matmul(softmax(scores, 3), v, bf16)
}

/// Scaled, masked scores in at least f32, `[b, h, t, t]`, from q and the repeated k.
fn scores<B: Backend>(q: &Tensor<B, 4>, k: Tensor<B, 4>, scale: f32) -> Tensor<B, 4> {
    let [_, _, t, _] = q.dims();
    let mask = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &q.device()).unsqueeze::<4>();
    let s = widened(q.clone()).matmul(widened(k).swap_dims(2, 3)) * scale;
    s.mask_fill(mask, f32::NEG_INFINITY)
}

/// `(out, lse)` as the fused forward returns them: `out` in q's float type, `lse: [b, h, t]`
/// in f32 (f64 for f64 inputs).
pub fn naive_attention_forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let dtype = q.dtype();
    let rep = q.dims()[1] / k.dims()[1];
    let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
    let s = scores(&q, k, scale);
    let max = s.clone().max_dim(3);
    let lse = max.clone() + (s.clone() - max).exp().sum_dim(3).log();
    let p = (s - lse.clone()).exp();
    let out = p.matmul(widened(v)).cast(dtype);
    (out, lse.squeeze_dim::<3>(3))
}

/// `(dq, dk, dv)` from the forward's `out` and `lse` and the output gradient, each in its
/// input's float type: `D = rowsum(dO ∘ O)`, `P = exp(S − lse)`, `dV = Pᵀ dO`,
/// `dS = P ∘ (dO Vᵀ − D)`, `dQ = scale · dS K`, `dK = scale · dSᵀ Q`; grouped KV heads sum
/// over their query heads.
#[allow(clippy::too_many_arguments)]
pub fn naive_attention_backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    grad_out: Tensor<B, 4>,
    scale: f32,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let (q_dtype, k_dtype, v_dtype) = (q.dtype(), k.dtype(), v.dtype());
    let kv = k.dims()[1];
    let rep = q.dims()[1] / kv;
    let (kr, vr) = (widened(repeat_kv(k, rep)), widened(repeat_kv(v, rep)));
    let q32 = widened(q);
    let d_out = widened(grad_out);
    let p = (scores(&q32, kr.clone(), scale) - lse.unsqueeze_dim::<4>(3)).exp();
    let d = (d_out.clone() * widened(out)).sum_dim(3);
    let dv = p.clone().swap_dims(2, 3).matmul(d_out.clone());
    let dp = d_out.matmul(vr.swap_dims(2, 3));
    let ds = p * (dp - d);
    let dq = ds.clone().matmul(kr) * scale;
    let dk = ds.swap_dims(2, 3).matmul(q32) * scale;
    (dq.cast(q_dtype), sum_groups(dk, kv).cast(k_dtype), sum_groups(dv, kv).cast(v_dtype))
}
