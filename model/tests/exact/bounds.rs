//! How far the explicit attention in f32 may lie from exact arithmetic: a first-order bound
//! on the rounding error of every element of `out`, `lse`, `dq`, `dk` and `dv`, computed
//! from the magnitudes of the exact (f64) intermediates.
//!
//! The rules used (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3), with
//! u = 2⁻²⁴ the unit roundoff of f32:
//! - a sum or dot product of n terms, in any order, with or without FMA (so whatever the
//!   processor's matmul kernel or SIMD reduction does) errs by at most n·u·Σ|terms|;
//! - one elementwise operation by u relative; libm's `expf` and `logf` by one ulp (2u);
//! - an absolute error δ in exp's argument is a relative error δ of its value, and a
//!   relative error δ in log's argument an absolute error δ of its value.
//!
//! Terms of order u² are left out (here n·u < 10⁻⁵). The f64 reference's own error is the
//! same bound with 2⁻⁵³ for u, which [`Bounds::check`] adds.

use burn::backend::NdArray;
use burn::tensor::{Bool, Tensor};

use tessera_model::ops::{repeat_kv, sum_groups};

type F64 = NdArray<f64>;
type T4 = Tensor<F64, 4>;

/// f32's unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Bounds on |f32 − exact|, element by element, in the layout of the outputs.
pub struct Bounds {
    pub out: T4,
    pub lse: Tensor<F64, 3>,
    pub dq: T4,
    pub dk: T4,
    pub dv: T4,
}

impl Bounds {
    /// Asserts |got − exact| ≤ bound for every element, and that the bound is tight enough
    /// to mean something: below 10⁻³ of the largest exact value (a wrong term in the
    /// equations moves values by 10⁻² or more; measured bounds are 5·10⁻⁷ to 5·10⁻⁴).
    /// Returns the largest ratio of error to bound (measured: 0.13).
    pub fn check(what: &str, got: &[f64], exact: &[f64], bound: &[f64]) -> f64 {
        assert_eq!((got.len(), exact.len()), (bound.len(), bound.len()), "{what}: lengths");
        let largest = exact.iter().fold(f64::MIN_POSITIVE, |m, x| m.max(x.abs()));
        let mut worst: f64 = 0.0;
        for (i, ((g, e), b)) in got.iter().zip(exact).zip(bound).enumerate() {
            let allowed = b * (1.0 + 2f64.powi(-29));
            assert!((g - e).abs() <= allowed, "{what}[{i}]: f32 {g} vs exact {e}, beyond the rounding bound {b:e}");
            assert!(*b < 1e-3 * largest, "{what}[{i}]: the bound {b:e} says nothing next to {largest}");
            worst = worst.max((g - e).abs() / b.max(f64::MIN_POSITIVE));
        }
        worst
    }
}

/// The bound for [`super::naive_attention_forward`] and [`super::naive_attention_backward`]
/// run in f32 on inputs that f32 holds exactly (`q: [b, h, t, d]`, `k`, `v: [b, kv, t, d]`,
/// `d_out` like q), the backward fed the forward's f32 `out` and `lse`.
pub fn f32_rounding_bounds(q: T4, k: T4, v: T4, d_out: T4, scale: f32) -> Bounds {
    let [_, h, t, d] = q.dims();
    let kv = k.dims()[1];
    let rep = h / kv;
    let (t_, d_, rep_) = (t as f64, d as f64, rep as f64);
    let (kr, vr) = (repeat_kv(k, rep), repeat_kv(v, rep));
    let above = Tensor::<F64, 2, Bool>::tril_mask([t, t], 0, &q.device()).unsqueeze::<4>();
    let keep = above.clone().bool_not().float();

    // Scores: a dot product of d terms, then the scale.
    let e_s =
        q.clone().abs().matmul(kr.clone().abs().swap_dims(2, 3)) * (f64::from(scale) * (d_ + 2.0) * U) * keep.clone();
    let raw = q.clone().matmul(kr.clone().swap_dims(2, 3)) * f64::from(scale);
    let masked = raw.clone().mask_fill(above, f64::NEG_INFINITY);
    let max = masked.clone().max_dim(3);
    let z = (masked - max.clone()).exp().sum_dim(3);
    let lse = max.clone() + z.clone().log();
    let p = (raw.clone() - lse.clone()).exp() * keep.clone();

    // lse = max + log Σ exp(s − max): the scores' errors (lse moves by at most their
    // largest), u·|s − max| per subtraction, exp, a sum of t terms, the log and the add.
    let spread = ((max - raw.clone()) * keep.clone()).max_dim(3);
    let rounding = spread + (t_ + 2.0) + z.log().abs() * 2.0 + lse.clone().abs();
    let e_lse = e_s.clone().max_dim(3) + rounding * U;
    // Relative error of p = exp(s − lse): both arguments' errors, the subtraction, exp.
    let rel_p = (e_s + e_lse.clone() + (raw - lse).abs() * U + 2.0 * U) * keep;

    // out = P V: p's errors and a sum of t terms.
    let out = p.clone().matmul(vr.clone());
    let e_out = ((rel_p.clone() + (t_ + 1.0) * U) * p.clone()).matmul(vr.clone().abs());

    // D = rowsum(dO ∘ out), from the f32 out; dP = dO Vᵀ; dS = P ∘ (dP − D).
    let d_out_abs = d_out.clone().abs();
    let rowsum = (d_out.clone() * out.clone()).sum_dim(3);
    let e_rowsum =
        (d_out_abs.clone() * e_out.clone()).sum_dim(3) + (d_out_abs.clone() * out.abs()).sum_dim(3) * ((d_ + 1.0) * U);
    let dp = d_out.matmul(vr.clone().swap_dims(2, 3));
    let e_dp = d_out_abs.clone().matmul(vr.abs().swap_dims(2, 3)) * ((d_ + 1.0) * U);
    let gap = dp - rowsum;
    let ds_abs = (p.clone() * gap.clone()).abs();
    let e_ds = p.clone() * ((rel_p.clone() + 2.0 * U) * gap.abs() + e_dp + e_rowsum);

    // dQ = scale·dS K, dK = scale·dSᵀ Q, dV = Pᵀ dO: t terms each, the scale, and for K and
    // V the sum over the `rep` query heads of their group.
    let scale = f64::from(scale);
    let dq = (e_ds.clone() + ds_abs.clone() * ((t_ + 2.0) * U)).matmul(kr.abs()) * scale;
    let dk = (e_ds + ds_abs * ((t_ + rep_ + 2.0) * U)).swap_dims(2, 3).matmul(q.abs()) * scale;
    let dv = ((rel_p + (t_ + rep_ + 1.0) * U) * p).swap_dims(2, 3).matmul(d_out_abs);
    Bounds { out: e_out, lse: e_lse.squeeze_dim::<3>(3), dq, dk: sum_groups(dk, kv), dv: sum_groups(dv, kv) }
}
