//! Error feedback, per-chunk top-k, 2-bit quantisation and packing.
//!
//! Compression runs in two phases so that a failure leaves the error buffer untouched:
//! first, reading only, each chunk's `β·e + Δ` is formed in scratch, checked finite and
//! its top-k chosen, and each tensor's kept values quantised and their residuals checked
//! finite; then the buffer is rewritten as `β·e + Δ` with the dequantised values
//! subtracted at the kept positions — the same operations, so the same bits.

use rayon::prelude::*;

use super::chunks::{ChunkPlan, TensorChunks};
use super::pack::{pack_codes, pack_indices};
use super::wire::{Payload, TensorPayload};
use super::{CompressSettings, SparseError};
use crate::model::ParamSpec;

/// `β·e + Δ`, rounded after each operation (Rust never fuses them): selection and update
/// must agree to the bit.
#[inline]
fn feedback(beta: f32, e: f32, d: f32) -> f32 {
    beta * e + d
}

/// One tensor's choice before the error buffer changes.
#[derive(Debug, Default)]
struct Chosen {
    counts: Vec<u16>,
    indices: Vec<u16>,
    values: Vec<f32>,
    lookup: [f32; 4],
    codes: Vec<u8>,
}

impl Chosen {
    fn into_payload(self) -> TensorPayload {
        TensorPayload::from_parts(self.lookup, self.counts, pack_indices(&self.indices), pack_codes(&self.codes))
    }
}

#[derive(Default)]
struct Scratch {
    acc: Vec<f32>,
    keys: Vec<u64>,
    top: Vec<u16>,
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), SparseError> {
    if expected == got { Ok(()) } else { Err(SparseError::Length { what, expected, got }) }
}

/// Compresses a whole model's pseudo-gradient `delta` (all tensors flat, in layout order)
/// and updates the error-feedback buffer `error` (same layout) in place. On error the
/// buffer is unchanged.
pub fn compress(
    params: &[ParamSpec],
    delta: &[f32],
    error: &mut [f32],
    settings: &CompressSettings,
) -> Result<Payload, SparseError> {
    let plan = ChunkPlan::new(params, settings)?;
    check_len("delta", plan.total_numel(), delta.len())?;
    check_len("error buffer", plan.total_numel(), error.len())?;
    let chosen = (0..plan.tensors().len())
        .into_par_iter()
        .map(|t| choose(&plan, t, &delta[plan.range(t)], &error[plan.range(t)]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut parts = Vec::with_capacity(plan.tensors().len());
    let mut rest = error;
    for t in 0..plan.tensors().len() {
        let (part, tail) = rest.split_at_mut(plan.range(t).len());
        parts.push(part);
        rest = tail;
    }
    parts.into_par_iter().zip(chosen.par_iter()).enumerate().for_each(|(t, (e, c))| {
        update(&plan.tensors()[t], settings.beta, &delta[plan.range(t)], e, c);
    });
    Ok(Payload::new(settings, chosen.into_iter().map(Chosen::into_payload).collect()))
}

/// [`compress`] for tensor `t` alone (`delta` and `error` are that tensor's values), to
/// bound memory by the largest tensor; assemble with [`Payload::from_tensors`].
pub fn compress_tensor(
    plan: &ChunkPlan,
    t: usize,
    delta: &[f32],
    error: &mut [f32],
) -> Result<TensorPayload, SparseError> {
    let chunks = plan.tensor(t)?;
    check_len("delta", chunks.numel(), delta.len())?;
    check_len("error buffer", chunks.numel(), error.len())?;
    let chosen = choose(plan, t, delta, error)?;
    update(chunks, plan.settings().beta, delta, error, &chosen);
    Ok(chosen.into_payload())
}

/// Phase 1 for one tensor: top-k of every chunk, then quantisation.
fn choose(plan: &ChunkPlan, t: usize, delta: &[f32], error: &[f32]) -> Result<Chosen, SparseError> {
    let chunks = &plan.tensors()[t];
    let band_len = chunks.band_len();
    let bands = delta
        .par_chunks(band_len)
        .zip(error.par_chunks(band_len))
        .enumerate()
        .map_init(Scratch::default, |s, (b, (d, e))| select_band(chunks, t, b, d, e, plan.settings(), s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut chosen = Chosen::default();
    for band in bands {
        chosen.counts.extend_from_slice(&band.counts);
        chosen.indices.extend_from_slice(&band.indices);
        chosen.values.extend_from_slice(&band.values);
    }
    let (lookup, codes) = quantise(&chosen.values);
    let overflow = lookup.iter().any(|v| !v.is_finite())
        || chosen.values.iter().zip(&codes).any(|(&v, &c)| !(v - lookup[usize::from(c)]).is_finite());
    if overflow {
        return Err(SparseError::Overflow { tensor: t });
    }
    chosen.lookup = lookup;
    chosen.codes = codes;
    Ok(chosen)
}

/// Top-k of each chunk of band `b` (`d`, `e`: the band's values).
fn select_band(
    chunks: &TensorChunks,
    t: usize,
    b: usize,
    d: &[f32],
    e: &[f32],
    settings: &CompressSettings,
    s: &mut Scratch,
) -> Result<Chosen, SparseError> {
    let mut out = Chosen::default();
    for c in chunks.band_chunks(b) {
        let view = chunks.view(c);
        s.acc.clear();
        for r in view.row_ranges() {
            s.acc.extend(d[r.clone()].iter().zip(&e[r]).map(|(&d, &e)| feedback(settings.beta, e, d)));
        }
        if let Some(i) = s.acc.iter().position(|v| !v.is_finite()) {
            let position = b * chunks.band_len() + view.band_pos(i);
            return Err(SparseError::NonFinite { tensor: t, position, value: s.acc[i] });
        }
        top_k(&s.acc, chunks.chunk_k(c, settings.top_k), &mut s.keys, &mut s.top);
        // k ≤ chunk length ≤ 4096: fits u16.
        out.counts.push(s.top.len() as u16);
        out.indices.extend_from_slice(&s.top);
        out.values.extend(s.top.iter().map(|&i| s.acc[usize::from(i)]));
    }
    Ok(out)
}

/// The `k` largest magnitudes of `acc` (ties: smaller index first), as ascending indices.
/// Keys are |v|'s bits (monotonic for non-negative floats) above the complemented index,
/// so they are distinct and one integer selection gives the protocol's total order.
fn top_k(acc: &[f32], k: usize, keys: &mut Vec<u64>, top: &mut Vec<u16>) {
    keys.clear();
    keys.extend(acc.iter().enumerate().map(|(i, v)| (u64::from(v.abs().to_bits()) << 32) | u64::from(!(i as u32))));
    let n = keys.len();
    let k = k.min(n);
    if k < n {
        keys.select_nth_unstable(n - k);
    }
    top.clear();
    top.extend(keys[n - k..].iter().map(|&key| !(key as u32) as u16));
    top.sort_unstable();
}

/// Quantises one tensor's kept values (in chunk order) to 2-bit codes and a lookup table,
/// exactly as the module doc specifies. No values: all-zero table.
pub fn quantise(values: &[f32]) -> ([f32; 4], Vec<u8>) {
    if values.is_empty() {
        return ([0.0; 4], Vec::new());
    }
    let n = values.len() as f64;
    let mean = values.iter().fold(0.0f64, |s, &v| s + f64::from(v)) / n;
    let var = values.iter().fold(0.0f64, |s, &v| s + (f64::from(v) - mean) * (f64::from(v) - mean)) / n;
    let std = var.sqrt();
    let (lo, hi) = (mean - 6.0 * std, mean + 6.0 * std);
    let width = (hi - lo) / 4.0;
    let code = |v: f32| -> u8 {
        if width > 0.0 { ((f64::from(v).clamp(lo, hi) - lo) / width).floor().min(3.0) as u8 } else { 0 }
    };
    let codes: Vec<u8> = values.iter().map(|&v| code(v)).collect();
    let (mut sums, mut counts) = ([0.0f64; 4], [0u64; 4]);
    for (&v, &c) in values.iter().zip(&codes) {
        sums[usize::from(c)] += f64::from(v);
        counts[usize::from(c)] += 1;
    }
    let lookup = std::array::from_fn(|b| {
        if counts[b] > 0 { (sums[b] / counts[b] as f64) as f32 } else { (lo + (b as f64 + 0.5) * width) as f32 }
    });
    (lookup, codes)
}

/// Phase 2 for one tensor: `e ← β·e + Δ`, then `e ← e − lookup[code]` at the kept positions.
fn update(chunks: &TensorChunks, beta: f32, delta: &[f32], error: &mut [f32], chosen: &Chosen) {
    let mut offsets = Vec::with_capacity(chosen.counts.len() + 1);
    offsets.push(0usize);
    for &c in &chosen.counts {
        offsets.push(offsets[offsets.len() - 1] + usize::from(c));
    }
    let band_len = chunks.band_len();
    error.par_chunks_mut(band_len).zip(delta.par_chunks(band_len)).enumerate().for_each(|(b, (e, d))| {
        e.iter_mut().zip(d).for_each(|(e, &d)| *e = feedback(beta, *e, d));
        for c in chunks.band_chunks(b) {
            let view = chunks.view(c);
            for j in offsets[c]..offsets[c + 1] {
                e[view.band_pos(usize::from(chosen.indices[j]))] -= chosen.lookup[usize::from(chosen.codes[j])];
            }
        }
    });
}
