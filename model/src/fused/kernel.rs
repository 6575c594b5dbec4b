//! The fused attention's CubeCL kernels: [`super::reference`]'s blocking, one cube per
//! tile owner, written for correctness first (scalar f32 arithmetic in shared-memory tiles,
//! no tensor cores).
//!
//! Every kernel runs `block × block` units per cube; unit `(UNIT_POS_Y, UNIT_POS_X)` owns
//! one entry of the score tile and, in the `P·V`-like products, the head dimensions
//! `UNIT_POS_X + j · block` of its row. Tiles are kept in the input float type (bf16 halves
//! the shared memory), all arithmetic and accumulators are f32, `lse` and `D` are f32.
//! All tensors are contiguous: `[batch, heads, seq, head_dim]` flat, so offsets are computed
//! here rather than read from strides.
//!
//! Masked scores use a finite sentinel ([`MASKED`]) since WGSL cannot spell `-inf`; a
//! probability is only ever taken of an unmasked score, so the sentinel never leaks.

use cubecl::prelude::*;

/// Score of a masked (future or out-of-range) key.
const MASKED: f32 = -1.0e30;
/// Anything above this is a real score.
const VISIBLE: f32 = -1.0e29;

/// Copies rows `[row_start, row_start + block)` of one head's `[seq, head_dim]` matrix into a
/// `block × head_dim` tile, zero past `seq`. Strided over all units of the cube.
#[cube]
fn load_tile<F: Float>(
    src: &Tensor<F>,
    offset: usize,
    row_start: usize,
    seq: usize,
    tile: &mut SharedMemory<F>,
    #[comptime] block: usize,
    #[comptime] head_dim: usize,
) {
    let units = block * block;
    let mut idx = (UNIT_POS_Y as usize) * block + UNIT_POS_X as usize;
    while idx < block * head_dim {
        let row = row_start + idx / head_dim;
        tile[idx] = if row < seq { src[offset + row * head_dim + idx % head_dim] } else { F::new(0.0) };
        idx += units;
    }
}

/// `Σ_x a[ra·d + x] · b[rb·d + x]` over two tiles, in f32.
#[cube]
fn tile_dot<F: Float>(
    a: &SharedMemory<F>,
    ra: usize,
    b: &SharedMemory<F>,
    rb: usize,
    #[comptime] head_dim: usize,
) -> f32 {
    let mut sum = 0.0f32;
    for x in 0..head_dim {
        sum += f32::cast_from(a[ra * head_dim + x]) * f32::cast_from(b[rb * head_dim + x]);
    }
    sum
}

/// Forward: cube `(query block, head, batch)`; writes `out` and `lse`.
///
/// Per key block up to the diagonal: scores into shared memory, each unit derives its row's
/// new max and sum from the row of scores (the same values in all units of the row, so no
/// reduction step), rescales its accumulators by `exp(m_old − m_new)`, then adds `P·V` for
/// its head dimensions.
#[cube(launch)]
#[allow(clippy::too_many_arguments, arithmetic_overflow)] // CUBE_* are placeholders in Rust
pub fn attention_forward<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    seq: u32,
    group: u32,
    #[comptime] block: usize,
    #[comptime] head_dim: usize,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let t = seq as usize;
    let group = group as usize;
    let heads = CUBE_COUNT_Y as usize;
    // Longest rows (most key blocks) first.
    let qb = CUBE_COUNT_X as usize - 1 - CUBE_POS_X as usize;
    let h = CUBE_POS_Y as usize;
    let b = CUBE_POS_Z as usize;
    let r = UNIT_POS_Y as usize;
    let c = UNIT_POS_X as usize;

    let row_off = (b * heads + h) * t;
    let q_off = row_off * head_dim;
    let kv_off = (b * (heads / group) + h / group) * t * head_dim;
    let q_start = qb * block;
    let i = q_start + r;

    let mut q_tile = SharedMemory::<F>::new(block * head_dim);
    let mut k_tile = SharedMemory::<F>::new(block * head_dim);
    let mut v_tile = SharedMemory::<F>::new(block * head_dim);
    let mut s_tile = SharedMemory::<f32>::new(block * block);
    load_tile::<F>(q, q_off, q_start, t, &mut q_tile, block, head_dim);

    let mut acc = Array::<f32>::new(per_unit);
    for j in 0..per_unit {
        acc[j] = 0.0;
    }
    let mut m = f32::new(MASKED);
    let mut l = 0.0f32;

    let q_last = if q_start + block < t { q_start + block } else { t };
    let last_kb = (q_last - 1) / block;
    for kb in 0..last_kb + 1 {
        let k_start = kb * block;
        sync_cube();
        load_tile::<F>(k, kv_off, k_start, t, &mut k_tile, block, head_dim);
        load_tile::<F>(v, kv_off, k_start, t, &mut v_tile, block, head_dim);
        sync_cube();

        let key = k_start + c;
        let mut s = f32::new(MASKED);
        if key <= i && key < t {
            s = scale * tile_dot::<F>(&q_tile, r, &k_tile, c, head_dim);
        }
        s_tile[r * block + c] = s;
        sync_cube();

        let mut block_max = f32::new(MASKED);
        for cc in 0..block {
            let x = s_tile[r * block + cc];
            if x > block_max {
                block_max = x;
            }
        }
        let m_new = if block_max > m { block_max } else { m };
        let mut block_sum = 0.0f32;
        for cc in 0..block {
            let x = s_tile[r * block + cc];
            if x > VISIBLE {
                block_sum += (x - m_new).exp();
            }
        }
        let alpha = (m - m_new).exp();
        l = alpha * l + block_sum;
        m = m_new;
        let p = if s > VISIBLE { (s - m_new).exp() } else { f32::new(0.0) };
        sync_cube();
        s_tile[r * block + c] = p;
        sync_cube();

        for j in 0..per_unit {
            let x = c + j * block;
            if x < head_dim {
                let mut a = acc[j] * alpha;
                for cc in 0..block {
                    a += s_tile[r * block + cc] * f32::cast_from(v_tile[cc * head_dim + x]);
                }
                acc[j] = a;
            }
        }
    }

    if i < t {
        let inv = 1.0f32 / l;
        for j in 0..per_unit {
            let x = c + j * block;
            if x < head_dim {
                out[q_off + i * head_dim + x] = F::cast_from(acc[j] * inv);
            }
        }
        if c == 0 {
            lse[row_off + i] = m + l.ln();
        }
    }
}

/// `D_i = dO_i · O_i` per query row (one unit per row), the backward's softmax correction.
#[cube(launch)]
pub fn attention_delta<F: Float>(
    out: &Tensor<F>,
    grad_out: &Tensor<F>,
    delta: &mut Tensor<f32>,
    rows: u32,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row < rows as usize {
        let mut sum = 0.0f32;
        for x in 0..head_dim {
            let idx = row * head_dim + x;
            sum += f32::cast_from(out[idx]) * f32::cast_from(grad_out[idx]);
        }
        delta[row] = sum;
    }
}

/// `P` and `dS` of query row `i` (tile row `r`) against key `key` (tile row `c`),
/// recomputed from `lse`; zero where masked.
#[cube]
#[allow(clippy::too_many_arguments)]
fn probability_and_grad<F: Float>(
    q_tile: &SharedMemory<F>,
    do_tile: &SharedMemory<F>,
    k_tile: &SharedMemory<F>,
    v_tile: &SharedMemory<F>,
    row_lse: f32,
    row_delta: f32,
    r: usize,
    c: usize,
    visible: bool,
    scale: f32,
    #[comptime] head_dim: usize,
) -> (f32, f32) {
    let mut p = 0.0f32;
    let mut ds = 0.0f32;
    if visible {
        let s = scale * tile_dot::<F>(q_tile, r, k_tile, c, head_dim);
        p = (s - row_lse).exp();
        let dp = tile_dot::<F>(do_tile, r, v_tile, c, head_dim);
        ds = p * (dp - row_delta);
    }
    (p, ds)
}

/// Backward for `dK`, `dV`: cube `(key block, kv head, batch)`, looping over the query
/// heads of the group and the query blocks from the diagonal on; accumulators stay in the
/// cube, so no atomics. Unit `(c, r)`: key `c` of the block, query row `r` / head dims
/// `r + j · block`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_kv<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    grad_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    scale: f32,
    seq: u32,
    group: u32,
    #[comptime] block: usize,
    #[comptime] head_dim: usize,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let t = seq as usize;
    let group = group as usize;
    let kv_heads = CUBE_COUNT_Y as usize;
    let kb = CUBE_POS_X as usize; // block 0 has the most query blocks: first
    let g = CUBE_POS_Y as usize;
    let b = CUBE_POS_Z as usize;
    let c = UNIT_POS_Y as usize;
    let r = UNIT_POS_X as usize;
    let num_qb = CUBE_COUNT_X as usize;

    let kv_off = (b * kv_heads + g) * t * head_dim;
    let k_start = kb * block;
    let key = k_start + c;

    let mut k_tile = SharedMemory::<F>::new(block * head_dim);
    let mut v_tile = SharedMemory::<F>::new(block * head_dim);
    let mut q_tile = SharedMemory::<F>::new(block * head_dim);
    let mut do_tile = SharedMemory::<F>::new(block * head_dim);
    let mut p_tile = SharedMemory::<f32>::new(block * block);
    let mut ds_tile = SharedMemory::<f32>::new(block * block);
    let mut lse_tile = SharedMemory::<f32>::new(block);
    let mut delta_tile = SharedMemory::<f32>::new(block);
    load_tile::<F>(k, kv_off, k_start, t, &mut k_tile, block, head_dim);
    load_tile::<F>(v, kv_off, k_start, t, &mut v_tile, block, head_dim);

    let mut dk_acc = Array::<f32>::new(per_unit);
    let mut dv_acc = Array::<f32>::new(per_unit);
    for j in 0..per_unit {
        dk_acc[j] = 0.0;
        dv_acc[j] = 0.0;
    }

    for hh in 0..group {
        let h = g * group + hh;
        let row_off = (b * kv_heads * group + h) * t;
        let q_off = row_off * head_dim;
        // The query block holding the diagonal is `kb` (square blocks); earlier ones see
        // none of these keys.
        for qb in kb..num_qb {
            let q_start = qb * block;
            sync_cube();
            load_tile::<F>(q, q_off, q_start, t, &mut q_tile, block, head_dim);
            load_tile::<F>(grad_out, q_off, q_start, t, &mut do_tile, block, head_dim);
            if c == 0 {
                let row = q_start + r;
                lse_tile[r] = if row < t { lse[row_off + row] } else { f32::new(0.0) };
                delta_tile[r] = if row < t { delta[row_off + row] } else { f32::new(0.0) };
            }
            sync_cube();

            let i = q_start + r;
            let (p, ds) = probability_and_grad::<F>(
                &q_tile,
                &do_tile,
                &k_tile,
                &v_tile,
                lse_tile[r],
                delta_tile[r],
                r,
                c,
                key <= i && i < t,
                scale,
                head_dim,
            );
            p_tile[c * block + r] = p;
            ds_tile[c * block + r] = ds;
            sync_cube();

            for j in 0..per_unit {
                let x = r + j * block;
                if x < head_dim {
                    let mut a_v = dv_acc[j];
                    let mut a_k = dk_acc[j];
                    for rr in 0..block {
                        a_v += p_tile[c * block + rr] * f32::cast_from(do_tile[rr * head_dim + x]);
                        a_k += ds_tile[c * block + rr] * f32::cast_from(q_tile[rr * head_dim + x]);
                    }
                    dv_acc[j] = a_v;
                    dk_acc[j] = a_k;
                }
            }
        }
    }

    if key < t {
        for j in 0..per_unit {
            let x = r + j * block;
            if x < head_dim {
                dk[kv_off + key * head_dim + x] = F::cast_from(scale * dk_acc[j]);
                dv[kv_off + key * head_dim + x] = F::cast_from(dv_acc[j]);
            }
        }
    }
}

/// Backward for `dQ`: cube `(query block, head, batch)`, key blocks up to the diagonal.
/// Unit `(r, c)`: query row `r`, key `c` / head dims `c + j · block`.
#[cube(launch)]
#[allow(clippy::too_many_arguments, arithmetic_overflow)] // CUBE_* are placeholders in Rust
pub fn attention_backward_q<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    grad_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dq: &mut Tensor<F>,
    scale: f32,
    seq: u32,
    group: u32,
    #[comptime] block: usize,
    #[comptime] head_dim: usize,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let t = seq as usize;
    let group = group as usize;
    let heads = CUBE_COUNT_Y as usize;
    let qb = CUBE_COUNT_X as usize - 1 - CUBE_POS_X as usize;
    let h = CUBE_POS_Y as usize;
    let b = CUBE_POS_Z as usize;
    let r = UNIT_POS_Y as usize;
    let c = UNIT_POS_X as usize;

    let row_off = (b * heads + h) * t;
    let q_off = row_off * head_dim;
    let kv_off = (b * (heads / group) + h / group) * t * head_dim;
    let q_start = qb * block;
    let i = q_start + r;

    let mut q_tile = SharedMemory::<F>::new(block * head_dim);
    let mut do_tile = SharedMemory::<F>::new(block * head_dim);
    let mut k_tile = SharedMemory::<F>::new(block * head_dim);
    let mut v_tile = SharedMemory::<F>::new(block * head_dim);
    let mut ds_tile = SharedMemory::<f32>::new(block * block);
    load_tile::<F>(q, q_off, q_start, t, &mut q_tile, block, head_dim);
    load_tile::<F>(grad_out, q_off, q_start, t, &mut do_tile, block, head_dim);
    let row_lse = if i < t { lse[row_off + i] } else { f32::new(0.0) };
    let row_delta = if i < t { delta[row_off + i] } else { f32::new(0.0) };

    let mut dq_acc = Array::<f32>::new(per_unit);
    for j in 0..per_unit {
        dq_acc[j] = 0.0;
    }

    let q_last = if q_start + block < t { q_start + block } else { t };
    let last_kb = (q_last - 1) / block;
    for kb in 0..last_kb + 1 {
        let k_start = kb * block;
        sync_cube();
        load_tile::<F>(k, kv_off, k_start, t, &mut k_tile, block, head_dim);
        load_tile::<F>(v, kv_off, k_start, t, &mut v_tile, block, head_dim);
        sync_cube();

        let key = k_start + c;
        let (_p, ds) = probability_and_grad::<F>(
            &q_tile,
            &do_tile,
            &k_tile,
            &v_tile,
            row_lse,
            row_delta,
            r,
            c,
            key <= i && i < t,
            scale,
            head_dim,
        );
        ds_tile[r * block + c] = ds;
        sync_cube();

        for j in 0..per_unit {
            let x = c + j * block;
            if x < head_dim {
                let mut a = dq_acc[j];
                for cc in 0..block {
                    a += ds_tile[r * block + cc] * f32::cast_from(k_tile[cc * head_dim + x]);
                }
                dq_acc[j] = a;
            }
        }
    }

    if i < t {
        for j in 0..per_unit {
            let x = c + j * block;
            if x < head_dim {
                dq[q_off + i * head_dim + x] = F::cast_from(scale * dq_acc[j]);
            }
        }
    }
}
