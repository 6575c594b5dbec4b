//! The fused attention's algorithm on plain f32 slices: FlashAttention-2's blocking run
//! on the CPU, the specification the CubeCL kernels follow step for step, tested here
//! against the O(T²) formula ([`naive_forward`], [`naive_backward`]).
//!
//! Layouts are contiguous row-major: `q, out, dq: [batch, heads, seq, head_dim]`,
//! `k, v, dk, dv: [batch, kv_heads, seq, head_dim]`, `lse: [batch, heads, seq]`.
//!
//! Forward, per (batch, head, block of query rows): walk the key blocks up to the diagonal
//! (the causal mask makes later ones all-masked), keep a running row max `m` and row sum
//! `l` of `exp(s − m)`, rescale the output accumulator by `exp(m_old − m_new)` when the
//! max grows, and finish with `out = acc / l`, `lse = m + ln l`.
//!
//! Backward, from `lse` alone (no stored probabilities): `D_i = dO_i·O_i`, then per tile
//! `P = exp(scale·QKᵀ − lse)`, `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P∘(dP − D)`,
//! `dQ += scale·dS K`, `dK += scale·dSᵀ Q`. It runs as the kernels do: one pass per key
//! block for `dK`, `dV` (summing over the query heads of its group), one pass per query
//! block for `dQ`, so neither needs atomics.

use super::{AttentionShape, AttentionShapeError};

/// Block sizes: query rows and key columns per tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    pub block_q: usize,
    pub block_k: usize,
}

impl Blocking {
    fn validate(&self) -> Result<(), AttentionShapeError> {
        if self.block_q == 0 || self.block_k == 0 {
            return Err(AttentionShapeError::ZeroBlock { block_q: self.block_q, block_k: self.block_k });
        }
        Ok(())
    }

    /// The last key block (inclusive) a query block reaches under the causal mask.
    fn last_key_block(&self, q_start: usize, q_end: usize) -> usize {
        debug_assert!(q_end > q_start);
        (q_end - 1) / self.block_k
    }
}

/// Forward output: `out` and the log-sum-exp rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
}

/// Backward output: the gradients of `q`, `k` and `v`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

/// Offsets of one head's `[seq, head_dim]` matrix in a q-shaped or kv-shaped buffer.
struct Heads {
    shape: AttentionShape,
}

impl Heads {
    fn q(&self, b: usize, h: usize) -> usize {
        (b * self.shape.heads + h) * self.shape.seq * self.shape.head_dim
    }
    fn kv(&self, b: usize, h: usize) -> usize {
        (b * self.shape.kv_heads + h / self.shape.group()) * self.shape.seq * self.shape.head_dim
    }
    fn kv_head(&self, b: usize, g: usize) -> usize {
        (b * self.shape.kv_heads + g) * self.shape.seq * self.shape.head_dim
    }
    fn row(&self, b: usize, h: usize) -> usize {
        (b * self.shape.heads + h) * self.shape.seq
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn check_inputs(shape: &AttentionShape, q: &[f32], k: &[f32], v: &[f32]) -> Result<(), AttentionShapeError> {
    shape.validate()?;
    shape.check_len("q", q.len(), shape.q_len())?;
    shape.check_len("k", k.len(), shape.kv_len())?;
    shape.check_len("v", v.len(), shape.kv_len())
}

/// Blocked causal attention forward (online softmax, causal block skipping, GQA).
pub fn forward(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    blocking: Blocking,
) -> Result<Forward, AttentionShapeError> {
    check_inputs(shape, q, k, v)?;
    blocking.validate()?;
    let (t, d) = (shape.seq, shape.head_dim);
    let heads = Heads { shape: *shape };
    let mut out = vec![0.0; shape.q_len()];
    let mut lse = vec![0.0; shape.rows()];
    // One "cube" of the kernel: a (batch, head, query block).
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            let (qo, kvo, ro) = (heads.q(b, h), heads.kv(b, h), heads.row(b, h));
            for q_start in (0..t).step_by(blocking.block_q) {
                let q_end = (q_start + blocking.block_q).min(t);
                let rows = q_end - q_start;
                let mut m = vec![f32::NEG_INFINITY; rows];
                let mut l = vec![0.0f32; rows];
                let mut acc = vec![0.0f32; rows * d];
                let mut s = vec![0.0f32; blocking.block_k];
                for kb in 0..=blocking.last_key_block(q_start, q_end) {
                    let k_start = kb * blocking.block_k;
                    let k_end = (k_start + blocking.block_k).min(t);
                    for r in 0..rows {
                        let i = q_start + r;
                        let q_row = &q[qo + i * d..qo + (i + 1) * d];
                        // Scores of this tile row; masked entries (j > i) are -inf.
                        let mut block_max = f32::NEG_INFINITY;
                        for (c, j) in (k_start..k_end).enumerate() {
                            s[c] = if j <= i {
                                scale * dot(q_row, &k[kvo + j * d..kvo + (j + 1) * d])
                            } else {
                                f32::NEG_INFINITY
                            };
                            block_max = block_max.max(s[c]);
                        }
                        let m_new = m[r].max(block_max);
                        if m_new == f32::NEG_INFINITY {
                            continue; // nothing visible yet for this row
                        }
                        // Rescale what was accumulated under the old max.
                        let alpha = (m[r] - m_new).exp();
                        let acc_row = &mut acc[r * d..(r + 1) * d];
                        acc_row.iter_mut().for_each(|a| *a *= alpha);
                        let mut block_sum = 0.0;
                        for (c, j) in (k_start..k_end).enumerate() {
                            let p = if j <= i { (s[c] - m_new).exp() } else { 0.0 };
                            block_sum += p;
                            let v_row = &v[kvo + j * d..kvo + (j + 1) * d];
                            acc_row.iter_mut().zip(v_row).for_each(|(a, x)| *a += p * x);
                        }
                        l[r] = alpha * l[r] + block_sum;
                        m[r] = m_new;
                    }
                }
                for r in 0..rows {
                    let i = q_start + r;
                    let inv = 1.0 / l[r];
                    for x in 0..d {
                        out[qo + i * d + x] = acc[r * d + x] * inv;
                    }
                    lse[ro + i] = m[r] + l[r].ln();
                }
            }
        }
    }
    Ok(Forward { out, lse })
}

/// `D_i = dO_i · O_i` for every query row (`[batch, heads, seq]`): the backward's
/// softmax correction, the kernels' first backward step.
pub fn delta(shape: &AttentionShape, out: &[f32], grad_out: &[f32]) -> Vec<f32> {
    let d = shape.head_dim;
    out.chunks_exact(d).zip(grad_out.chunks_exact(d)).map(|(o, g)| dot(o, g)).collect()
}

/// Blocked backward: `dK`, `dV` per key block, then `dQ` per query block, probabilities
/// recomputed from `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    grad_out: &[f32],
    scale: f32,
    blocking: Blocking,
) -> Result<Gradients, AttentionShapeError> {
    check_inputs(shape, q, k, v)?;
    shape.check_len("out", out.len(), shape.q_len())?;
    shape.check_len("grad_out", grad_out.len(), shape.q_len())?;
    shape.check_len("lse", lse.len(), shape.rows())?;
    blocking.validate()?;
    let (t, d) = (shape.seq, shape.head_dim);
    let heads = Heads { shape: *shape };
    let dd = delta(shape, out, grad_out);
    let mut dq = vec![0.0; shape.q_len()];
    let mut dk = vec![0.0; shape.kv_len()];
    let mut dv = vec![0.0; shape.kv_len()];
    // P and dS of one (query row, key) pair, recomputed from lse as both passes do.
    let p_ds = |b: usize, h: usize, i: usize, j: usize| -> (f32, f32) {
        let (qo, kvo, ro) = (heads.q(b, h), heads.kv(b, h), heads.row(b, h));
        let q_row = &q[qo + i * d..qo + (i + 1) * d];
        let s = scale * dot(q_row, &k[kvo + j * d..kvo + (j + 1) * d]);
        let p = (s - lse[ro + i]).exp();
        let dp = dot(&grad_out[qo + i * d..qo + (i + 1) * d], &v[kvo + j * d..kvo + (j + 1) * d]);
        (p, p * (dp - dd[ro + i]))
    };

    // Pass 1: one "cube" per (batch, kv head, key block); accumulators stay in the cube.
    for b in 0..shape.batch {
        for g in 0..shape.kv_heads {
            let kvo = heads.kv_head(b, g);
            for k_start in (0..t).step_by(blocking.block_k) {
                let k_end = (k_start + blocking.block_k).min(t);
                let mut dk_acc = vec![0.0f32; (k_end - k_start) * d];
                let mut dv_acc = vec![0.0f32; (k_end - k_start) * d];
                for h in g * shape.group()..(g + 1) * shape.group() {
                    let qo = heads.q(b, h);
                    // Query blocks from the one holding the diagonal onwards.
                    let first = k_start / blocking.block_q * blocking.block_q;
                    for q_start in (first..t).step_by(blocking.block_q) {
                        let q_end = (q_start + blocking.block_q).min(t);
                        for i in q_start..q_end {
                            for j in k_start..k_end.min(i + 1) {
                                let (p, ds) = p_ds(b, h, i, j);
                                let c = j - k_start;
                                for x in 0..d {
                                    dv_acc[c * d + x] += p * grad_out[qo + i * d + x];
                                    dk_acc[c * d + x] += scale * ds * q[qo + i * d + x];
                                }
                            }
                        }
                    }
                }
                dk[kvo + k_start * d..kvo + k_end * d].copy_from_slice(&dk_acc);
                dv[kvo + k_start * d..kvo + k_end * d].copy_from_slice(&dv_acc);
            }
        }
    }

    // Pass 2: one "cube" per (batch, head, query block), key blocks up to the diagonal.
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            let (qo, kvo) = (heads.q(b, h), heads.kv(b, h));
            for q_start in (0..t).step_by(blocking.block_q) {
                let q_end = (q_start + blocking.block_q).min(t);
                for kb in 0..=blocking.last_key_block(q_start, q_end) {
                    let k_start = kb * blocking.block_k;
                    let k_end = (k_start + blocking.block_k).min(t);
                    for i in q_start..q_end {
                        for j in k_start..k_end.min(i + 1) {
                            let (_, ds) = p_ds(b, h, i, j);
                            for x in 0..d {
                                dq[qo + i * d + x] += scale * ds * k[kvo + j * d + x];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Gradients { dq, dk, dv })
}

/// The O(T²) formula: full score matrix, masked softmax, `P V`. Test reference.
pub fn naive_forward(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
) -> Result<Forward, AttentionShapeError> {
    check_inputs(shape, q, k, v)?;
    let (t, d) = (shape.seq, shape.head_dim);
    let heads = Heads { shape: *shape };
    let mut out = vec![0.0; shape.q_len()];
    let mut lse = vec![0.0; shape.rows()];
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            let (qo, kvo, ro) = (heads.q(b, h), heads.kv(b, h), heads.row(b, h));
            for i in 0..t {
                // f64 so the reference's own rounding is negligible.
                let s: Vec<f64> = (0..=i)
                    .map(|j| (scale * dot(&q[qo + i * d..qo + (i + 1) * d], &k[kvo + j * d..kvo + (j + 1) * d])) as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for x in 0..d {
                    let o: f64 = (0..=i).map(|j| (s[j] - m).exp() / z * v[kvo + j * d + x] as f64).sum();
                    out[qo + i * d + x] = o as f32;
                }
                lse[ro + i] = (m + z.ln()) as f32;
            }
        }
    }
    Ok(Forward { out, lse })
}

/// The O(T²) gradients of [`naive_forward`] (softmax Jacobian written out). Test reference.
pub fn naive_backward(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    grad_out: &[f32],
    scale: f32,
) -> Result<Gradients, AttentionShapeError> {
    check_inputs(shape, q, k, v)?;
    shape.check_len("grad_out", grad_out.len(), shape.q_len())?;
    let (t, d) = (shape.seq, shape.head_dim);
    let heads = Heads { shape: *shape };
    let mut dq = vec![0.0f64; shape.q_len()];
    let mut dk = vec![0.0f64; shape.kv_len()];
    let mut dv = vec![0.0f64; shape.kv_len()];
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            let (qo, kvo) = (heads.q(b, h), heads.kv(b, h));
            for i in 0..t {
                let qi = &q[qo + i * d..qo + (i + 1) * d];
                let gi = &grad_out[qo + i * d..qo + (i + 1) * d];
                let s: Vec<f64> =
                    (0..=i).map(|j| (scale * dot(qi, &k[kvo + j * d..kvo + (j + 1) * d])) as f64).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                // dP_ij = dO_i · V_j; dS_ij = P_ij (dP_ij − Σ_l P_il dP_il).
                let dp: Vec<f64> = (0..=i).map(|j| dot(gi, &v[kvo + j * d..kvo + (j + 1) * d]) as f64).collect();
                let mean: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - mean);
                    for x in 0..d {
                        dv[kvo + j * d + x] += p[j] * gi[x] as f64;
                        dk[kvo + j * d + x] += scale as f64 * ds * qi[x] as f64;
                        dq[qo + i * d + x] += scale as f64 * ds * k[kvo + j * d + x] as f64;
                    }
                }
            }
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|x| x as f32).collect();
    Ok(Gradients { dq: f(dq), dk: f(dk), dv: f(dv) })
}

/// Test inputs shared by the CPU and kernel tests: deterministic values in [-1, 1).
pub fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64*: enough spread for numerical tests, no dependency.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (r as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Largest `|a − b| / (atol + rtol·|b|)`; ≤ 1 means within tolerance.
pub fn max_error_ratio(a: &[f32], b: &[f32], atol: f32, rtol: f32) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (atol + rtol * y.abs())).fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        shape: AttentionShape,
        blocking: Blocking,
    }

    fn case(batch: usize, heads: usize, kv_heads: usize, seq: usize, head_dim: usize, bq: usize, bk: usize) -> Case {
        Case {
            shape: AttentionShape { batch, heads, kv_heads, seq, head_dim },
            blocking: Blocking { block_q: bq, block_k: bk },
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            case(1, 1, 1, 1, 4, 4, 4),     // one token
            case(1, 2, 2, 8, 8, 4, 4),     // seq a multiple of the block
            case(2, 4, 2, 13, 16, 4, 4),   // GQA, odd length
            case(1, 4, 1, 19, 8, 8, 4),    // multi-query, bq > bk
            case(1, 6, 3, 17, 12, 4, 8),   // bq < bk, head_dim not a power of two
            case(2, 2, 1, 33, 32, 16, 16), // longer, several blocks each way
            case(1, 2, 2, 5, 64, 16, 16),  // seq shorter than one block
        ]
    }

    fn inputs(shape: &AttentionShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        // Scaled up so softmax rows are peaked and the online rescaling matters.
        let up = |x: Vec<f32>| x.into_iter().map(|x| 3.0 * x).collect::<Vec<_>>();
        (
            up(test_values(shape.q_len(), seed)),
            up(test_values(shape.kv_len(), seed + 1)),
            test_values(shape.kv_len(), seed + 2),
            test_values(shape.q_len(), seed + 3),
        )
    }

    #[test]
    fn blocked_forward_matches_the_formula() {
        for (n, c) in cases().into_iter().enumerate() {
            let (q, k, v, _) = inputs(&c.shape, n as u64);
            let scale = 1.0 / (c.shape.head_dim as f32).sqrt();
            let got = forward(&c.shape, &q, &k, &v, scale, c.blocking).unwrap();
            let want = naive_forward(&c.shape, &q, &k, &v, scale).unwrap();
            let e_out = max_error_ratio(&got.out, &want.out, 1e-5, 1e-4);
            let e_lse = max_error_ratio(&got.lse, &want.lse, 1e-5, 1e-5);
            assert!(e_out <= 1.0 && e_lse <= 1.0, "{:?}: out {e_out}, lse {e_lse}", c.shape);
        }
    }

    #[test]
    fn blocked_backward_matches_the_formula() {
        for (n, c) in cases().into_iter().enumerate() {
            let (q, k, v, g) = inputs(&c.shape, 10 + n as u64);
            let scale = 1.0 / (c.shape.head_dim as f32).sqrt();
            let fwd = forward(&c.shape, &q, &k, &v, scale, c.blocking).unwrap();
            let got = backward(&c.shape, &q, &k, &v, &fwd.out, &fwd.lse, &g, scale, c.blocking).unwrap();
            let want = naive_backward(&c.shape, &q, &k, &v, &g, scale).unwrap();
            for (name, a, b) in [("dq", &got.dq, &want.dq), ("dk", &got.dk, &want.dk), ("dv", &got.dv, &want.dv)] {
                let e = max_error_ratio(a, b, 1e-4, 1e-3);
                assert!(e <= 1.0, "{:?} {name}: error ratio {e}", c.shape);
            }
        }
    }

    /// The naive backward itself, against central differences of the naive forward.
    #[test]
    fn naive_backward_matches_finite_differences() {
        let shape = AttentionShape { batch: 1, heads: 2, kv_heads: 1, seq: 5, head_dim: 3 };
        let (q, k, v, g) = inputs(&shape, 99);
        let scale = 0.7;
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let out = naive_forward(&shape, q, k, v, scale).unwrap().out;
            out.iter().zip(&g).map(|(o, g)| *o as f64 * *g as f64).sum()
        };
        let grads = naive_backward(&shape, &q, &k, &v, &g, scale).unwrap();
        let eps = 1e-2f32;
        for (which, analytic) in [(0, &grads.dq), (1, &grads.dk), (2, &grads.dv)] {
            for idx in 0..analytic.len() {
                let mut bufs = [q.clone(), k.clone(), v.clone()];
                bufs[which][idx] += eps;
                let up = loss(&bufs[0], &bufs[1], &bufs[2]);
                bufs[which][idx] -= 2.0 * eps;
                let down = loss(&bufs[0], &bufs[1], &bufs[2]);
                let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
                let err = (numeric - analytic[idx]).abs();
                assert!(err < 2e-2 * (1.0 + numeric.abs()), "grad {which}[{idx}]: {numeric} vs {}", analytic[idx]);
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let shape = AttentionShape { batch: 1, heads: 3, kv_heads: 2, seq: 2, head_dim: 2 };
        let x = vec![0.0; 12];
        let y = vec![0.0; 8];
        let b = Blocking { block_q: 2, block_k: 2 };
        assert!(matches!(forward(&shape, &x, &y, &y, 1.0, b), Err(AttentionShapeError::UnevenGroups { .. })));
        let shape = AttentionShape { kv_heads: 3, ..shape };
        assert!(matches!(forward(&shape, &x, &y, &y, 1.0, b), Err(AttentionShapeError::Length { what: "k", .. })));
        let shape = AttentionShape { kv_heads: 1, ..shape };
        let z = vec![0.0; 4];
        let nb = Blocking { block_q: 0, block_k: 2 };
        assert!(matches!(forward(&shape, &x, &z, &z, 1.0, nb), Err(AttentionShapeError::ZeroBlock { .. })));
    }
}
