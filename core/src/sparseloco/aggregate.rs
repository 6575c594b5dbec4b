//! Decoding payloads and averaging many peers' contributions.
//!
//! **Median-norm clip.** Each peer's whole contribution (all tensors) is scaled by
//! `min(1, median / norm)`, the median taken over the peers whose norm is finite and
//! non-zero (the mean of the two middle ones for an even count); peers with a zero or
//! non-finite norm are left out entirely. While fewer than half the peers are hostile the
//! median is at most some honest peer's norm, so no hostile peer contributes more than an
//! honest one could.
//!
//! **Contributor mean.** A position's result is the sum of the scaled values of the peers
//! that chose it divided by how many did (not by the peer count), so a value that only one
//! peer's top-k found is not diluted; positions nobody chose are zero. Sums are f32, peer
//! by peer in the order given, so every node gets the same bits.

use rayon::prelude::*;

use super::chunks::{ChunkPlan, MAX_CHUNK};
use super::pack::{code_at, index_at};
use super::wire::{Payload, TensorPayload};
use super::{CompressSettings, SparseError};
use crate::model::ParamSpec;

/// One tensor of a decoded payload: row-major positions in the tensor (chunk by chunk,
/// ascending within a chunk) and their dequantised values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseTensor {
    pub positions: Vec<usize>,
    pub values: Vec<f32>,
}

/// A decoded payload, one entry per tensor in layout order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sparse {
    pub tensors: Vec<SparseTensor>,
}

/// Checks and visits entries `from..from + count` of chunk `c` of tensor `t`: every index
/// below `len` and strictly ascending; calls `f(index, code)` for each.
#[inline]
pub(crate) fn visit_chunk(
    tp: &TensorPayload,
    t: usize,
    c: usize,
    len: usize,
    from: usize,
    count: usize,
    mut f: impl FnMut(usize, usize),
) -> Result<(), SparseError> {
    let (indices, codes) = (tp.packed_indices(), tp.packed_codes());
    let mut previous: Option<usize> = None;
    let mut visit = |j: usize, index: usize| {
        if index >= len {
            return Err(SparseError::IndexOutOfChunk { tensor: t, chunk: c, index, len });
        }
        if let Some(previous) = previous
            && index <= previous
        {
            return Err(SparseError::IndexOrder { tensor: t, chunk: c, index, previous });
        }
        previous = Some(index);
        f(index, code_at(codes, j));
        Ok(())
    };
    let (mut j, end) = (from, from + count);
    if j < end && j % 2 == 1 {
        visit(j, index_at(indices, j))?;
        j += 1;
    }
    // Whole pairs: one 3-byte group gives two indices.
    let pairs = indices.get(j / 2 * 3..(end / 2) * 3).ok_or(SparseError::PackedLength {
        what: "indices",
        len: indices.len(),
        count: end,
    })?;
    for group in pairs.chunks_exact(3) {
        let (a, b) = (
            usize::from(group[0]) | (usize::from(group[1] & 0xf) << 8),
            usize::from(group[1] >> 4) | (usize::from(group[2]) << 4),
        );
        visit(j, a)?;
        visit(j + 1, b)?;
        j += 2;
    }
    if j < end {
        visit(j, index_at(indices, j))?;
    }
    Ok(())
}

/// Start of each chunk's entries in the tensor's lists, and the end.
fn chunk_offsets(counts: &[u16]) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(counts.len() + 1);
    let mut at = 0;
    offsets.push(at);
    for &c in counts {
        at += usize::from(c);
        offsets.push(at);
    }
    offsets
}

/// Decodes a payload made for `params` with `settings` to positions and values.
pub fn decompress(payload: &Payload, params: &[ParamSpec], settings: &CompressSettings) -> Result<Sparse, SparseError> {
    let plan = ChunkPlan::new(params, settings)?;
    let tensors = (0..plan.tensors().len())
        .map(|t| {
            let tp = payload.check_tensor_plan(&plan, t)?;
            let chunks = &plan.tensors()[t];
            let lookup = tp.lookup();
            let mut out = SparseTensor::default();
            let offsets = chunk_offsets(tp.counts());
            for c in 0..chunks.chunk_count() {
                let (from, count) = (offsets[c], offsets[c + 1] - offsets[c]);
                visit_chunk(tp, t, c, chunks.chunk_len(c), from, count, |i, code| {
                    out.positions.push(chunks.position(c, i));
                    out.values.push(lookup[code]);
                })?;
            }
            Ok(out)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sparse { tensors })
}

/// One peer's transmitted values as a dense flat vector (zero where nothing was sent).
pub fn dequantise(
    payload: &Payload,
    params: &[ParamSpec],
    settings: &CompressSettings,
) -> Result<Vec<f32>, SparseError> {
    let plan = ChunkPlan::new(params, settings)?;
    let sparse = decompress(payload, params, settings)?;
    let mut out = vec![0.0; plan.total_numel()];
    for (t, tensor) in sparse.tensors.iter().enumerate() {
        let dst = &mut out[plan.range(t)];
        tensor.positions.iter().zip(&tensor.values).for_each(|(&p, &v)| dst[p] = v);
    }
    Ok(out)
}

/// Each peer's norm, their median and each peer's clip scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// L2 norm of each peer's dequantised contribution, in f64.
    pub norms: Vec<f64>,
    /// Median of the finite, non-zero norms; `None` when there are none.
    pub median: Option<f64>,
    /// `min(1, median / norm)` as f32; `None` for a peer left out.
    pub scales: Vec<Option<f32>>,
}

/// L2 norm of a payload's dequantised values: per tensor Σ_code count·lookup², summed in
/// f64 over tensors in order (codes counted by byte; padding codes are zero bits).
fn payload_norm(p: &Payload) -> f64 {
    let mut square = 0.0f64;
    for tp in p.tensors() {
        let mut by_byte = [0u64; 256];
        tp.packed_codes().iter().for_each(|&b| by_byte[usize::from(b)] += 1);
        let mut hist = [0u64; 4];
        for (byte, &n) in by_byte.iter().enumerate() {
            (0..4).for_each(|j| hist[(byte >> (2 * j)) & 3] += n);
        }
        hist[0] = hist[0].saturating_sub((4 * tp.packed_codes().len()).saturating_sub(tp.kept()) as u64);
        for (h, v) in hist.iter().zip(tp.lookup()) {
            square += *h as f64 * (f64::from(v) * f64::from(v));
        }
    }
    square.sqrt()
}

/// The median-norm clip of the module doc.
pub fn clip(peers: &[Payload]) -> Clip {
    let norms: Vec<f64> = peers.par_iter().map(payload_norm).collect();
    let admitted = |n: f64| n.is_finite() && n > 0.0;
    let mut valid: Vec<f64> = norms.iter().copied().filter(|&n| admitted(n)).collect();
    valid.sort_by(f64::total_cmp);
    let m = valid.len();
    let median = match m {
        0 => None,
        _ if m % 2 == 1 => Some(valid[m / 2]),
        _ => Some((valid[m / 2 - 1] + valid[m / 2]) / 2.0),
    };
    let scales = norms
        .iter()
        .map(|&n| match median {
            Some(median) if admitted(n) => Some((median / n).min(1.0) as f32),
            _ => None,
        })
        .collect();
    Clip { norms, median, scales }
}

/// Decompresses, clips and averages `peers` into one dense flat vector (all tensors in
/// layout order).
pub fn aggregate(
    peers: &[Payload],
    params: &[ParamSpec],
    settings: &CompressSettings,
) -> Result<Vec<f32>, SparseError> {
    let plan = ChunkPlan::new(params, settings)?;
    let scales = clip(peers).scales;
    let mut out = vec![0.0f32; plan.total_numel()];
    let mut parts = Vec::with_capacity(plan.tensors().len());
    let mut rest = out.as_mut_slice();
    for t in 0..plan.tensors().len() {
        let (part, tail) = rest.split_at_mut(plan.range(t).len());
        parts.push(part);
        rest = tail;
    }
    parts.into_par_iter().enumerate().try_for_each(|(t, dst)| aggregate_into(&plan, t, peers, &scales, dst))?;
    Ok(out)
}

/// [`aggregate`] for tensor `t` alone, with the clip computed once ([`clip`]) for all
/// tensors: memory bounded by the largest tensor.
pub fn aggregate_tensor(
    peers: &[Payload],
    scales: &[Option<f32>],
    plan: &ChunkPlan,
    t: usize,
) -> Result<Vec<f32>, SparseError> {
    let mut out = vec![0.0f32; plan.tensor(t)?.numel()];
    aggregate_into(plan, t, peers, scales, &mut out)?;
    Ok(out)
}

/// One admitted peer's view of a tensor: its entries and its scaled lookup table.
struct Contribution<'a> {
    tp: &'a TensorPayload,
    lookup: [f32; 4],
    offsets: Vec<usize>,
}

fn aggregate_into(
    plan: &ChunkPlan,
    t: usize,
    peers: &[Payload],
    scales: &[Option<f32>],
    dst: &mut [f32],
) -> Result<(), SparseError> {
    if scales.len() != peers.len() {
        return Err(SparseError::ClipMismatch { expected: peers.len(), got: scales.len() });
    }
    let chunks = plan.tensor(t)?;
    let contributions = peers
        .iter()
        .zip(scales)
        .filter_map(|(p, s)| s.map(|s| (p, s)))
        .map(|(p, s)| {
            let tp = p.check_tensor_plan(plan, t)?;
            Ok(Contribution { tp, lookup: tp.lookup().map(|v| s * v), offsets: chunk_offsets(tp.counts()) })
        })
        .collect::<Result<Vec<_>, SparseError>>()?;
    let scratch = || (vec![0.0f32; MAX_CHUNK], vec![0u32; MAX_CHUNK]);
    dst.par_chunks_mut(chunks.band_len()).enumerate().try_for_each_init(scratch, |(sum, count), (b, band)| {
        for c in chunks.band_chunks(b) {
            let view = chunks.view(c);
            let len = view.len();
            sum[..len].fill(0.0);
            count[..len].fill(0);
            for p in &contributions {
                let (from, n) = (p.offsets[c], p.offsets[c + 1] - p.offsets[c]);
                visit_chunk(p.tp, t, c, len, from, n, |i, code| {
                    sum[i] += p.lookup[code];
                    count[i] += 1;
                })?;
            }
            for (row, range) in view.row_ranges().enumerate() {
                let at = row * view.width;
                for ((out, &s), &n) in band[range].iter_mut().zip(&sum[at..]).zip(&count[at..]) {
                    if n > 0 {
                        *out = s / n as f32;
                    }
                }
            }
        }
        Ok(())
    })
}
