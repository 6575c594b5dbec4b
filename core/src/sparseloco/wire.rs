//! The payload and its byte layout (see the module doc): bounded, canonical, checked in
//! full before any value is used.

use super::chunks::{ChunkPlan, TensorChunks};
use super::pack::{
    code_at, codes_padding_clear, index_at, indices_padding_clear, packed_codes_len, packed_indices_len,
};
use super::{CompressSettings, SparseError};
use crate::model::ParamSpec;

pub const MAGIC: [u8; 8] = *b"TESSLOCO";
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the first tensor.
pub const HEADER_LEN: usize = 22;

/// One tensor's share of a payload. Its packed lists always hold exactly `kept()` entries
/// with clear padding, and its lookup values are finite.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPayload {
    lookup: [f32; 4],
    counts: Vec<u16>,
    indices: Vec<u8>,
    codes: Vec<u8>,
    kept: usize,
}

impl TensorPayload {
    /// Callers pass lists packed from `Σ counts` entries and finite lookup values.
    pub(crate) fn from_parts(lookup: [f32; 4], counts: Vec<u16>, indices: Vec<u8>, codes: Vec<u8>) -> Self {
        let kept = counts.iter().map(|&c| usize::from(c)).sum();
        debug_assert_eq!(indices.len(), packed_indices_len(kept));
        debug_assert_eq!(codes.len(), packed_codes_len(kept));
        Self { lookup, counts, indices, codes, kept }
    }

    /// The dequantised value of each code.
    pub fn lookup(&self) -> [f32; 4] {
        self.lookup
    }

    /// Entries kept in each chunk, in chunk order.
    pub fn counts(&self) -> &[u16] {
        &self.counts
    }

    /// Entries kept in the whole tensor.
    pub fn kept(&self) -> usize {
        self.kept
    }

    pub fn packed_indices(&self) -> &[u8] {
        &self.indices
    }

    pub fn packed_codes(&self) -> &[u8] {
        &self.codes
    }

    /// In-chunk indices, chunk by chunk.
    pub fn indices(&self) -> Vec<u16> {
        (0..self.kept).map(|j| index_at(&self.indices, j) as u16).collect()
    }

    /// Codes, in the order of [`Self::indices`].
    pub fn codes(&self) -> Vec<u8> {
        (0..self.kept).map(|j| code_at(&self.codes, j) as u8).collect()
    }

    pub fn encoded_len(&self) -> usize {
        16 + 2 * self.counts.len() + self.indices.len() + self.codes.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        self.lookup.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.counts.iter().for_each(|c| out.extend_from_slice(&c.to_le_bytes()));
        out.extend_from_slice(&self.indices);
        out.extend_from_slice(&self.codes);
    }
}

/// One peer's compressed pseudo-gradient: the settings it was made with and one
/// [`TensorPayload`] per tensor of the layout, in layout order.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    chunk: usize,
    tile: usize,
    top_k: usize,
    tensors: Vec<TensorPayload>,
}

impl Payload {
    pub(crate) fn new(settings: &CompressSettings, tensors: Vec<TensorPayload>) -> Self {
        Self { chunk: settings.chunk, tile: settings.tile, top_k: settings.top_k, tensors }
    }

    /// Assembles per-tensor results ([`super::compress_tensor`]) and checks them against
    /// `plan` as [`Self::from_bytes`] would (the lookup bound aside).
    pub fn from_tensors(plan: &ChunkPlan, tensors: Vec<TensorPayload>) -> Result<Self, SparseError> {
        let payload = Self::new(plan.settings(), tensors);
        payload.check_header(plan)?;
        if payload.tensors.len() != plan.tensors().len() {
            return Err(SparseError::TensorCount { expected: plan.tensors().len(), got: payload.tensors.len() });
        }
        for (t, (tp, chunks)) in payload.tensors.iter().zip(plan.tensors()).enumerate() {
            check_lookup(&tp.lookup, t, f32::INFINITY)?;
            check_counts(&tp.counts, chunks, plan.settings().top_k, t)?;
            check_indices(tp, chunks, t)?;
        }
        Ok(payload)
    }

    pub fn tensors(&self) -> &[TensorPayload] {
        &self.tensors
    }

    /// (chunk, tile, top_k) the payload was made with.
    pub fn geometry(&self) -> (usize, usize, usize) {
        (self.chunk, self.tile, self.top_k)
    }

    /// Entries kept over all tensors.
    pub fn kept(&self) -> usize {
        self.tensors.iter().map(TensorPayload::kept).sum()
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.tensors.iter().map(TensorPayload::encoded_len).sum::<usize>()
    }

    /// The byte layout of the module doc.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Settings are validated (chunk ≤ 4096, tile ≤ 64, top_k ≤ u32::MAX) before any
        // payload exists, so these casts are exact.
        out.extend_from_slice(&(self.chunk as u16).to_le_bytes());
        out.extend_from_slice(&(self.tile as u16).to_le_bytes());
        out.extend_from_slice(&(self.top_k as u32).to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        self.tensors.iter().for_each(|t| t.write(&mut out));
        out
    }

    /// Decodes and checks a payload made with `settings` for `params`, refusing lookup
    /// values beyond `max_abs` in magnitude.
    pub fn from_bytes(
        bytes: &[u8],
        params: &[ParamSpec],
        settings: &CompressSettings,
        max_abs: f32,
    ) -> Result<Self, SparseError> {
        Self::from_bytes_with_plan(bytes, &ChunkPlan::new(params, settings)?, max_abs)
    }

    /// [`Self::from_bytes`] with the plan built once for many peers.
    pub fn from_bytes_with_plan(bytes: &[u8], plan: &ChunkPlan, max_abs: f32) -> Result<Self, SparseError> {
        let max = plan.max_encoded_len();
        if bytes.len() > max {
            return Err(SparseError::TooLong { len: bytes.len(), max });
        }
        let header = bytes.get(..HEADER_LEN).ok_or(SparseError::TruncatedHeader { left: bytes.len() })?;
        if header[..8] != MAGIC {
            return Err(SparseError::Magic);
        }
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        if u16_at(8) != FORMAT_VERSION {
            return Err(SparseError::Version(u16_at(8)));
        }
        let payload = Self {
            chunk: usize::from(u16_at(10)),
            tile: usize::from(u16_at(12)),
            top_k: u32_at(14) as usize,
            tensors: Vec::new(),
        };
        payload.check_header(plan)?;
        let count = u32_at(18) as usize;
        if count != plan.tensors().len() {
            return Err(SparseError::TensorCount { expected: plan.tensors().len(), got: count });
        }
        let mut reader = Reader { bytes, pos: HEADER_LEN };
        let tensors = plan
            .tensors()
            .iter()
            .enumerate()
            .map(|(t, chunks)| read_tensor(&mut reader, t, chunks, plan.settings().top_k, max_abs))
            .collect::<Result<Vec<_>, _>>()?;
        if reader.pos != bytes.len() {
            return Err(SparseError::Trailing { extra: bytes.len() - reader.pos });
        }
        Ok(Self { tensors, ..payload })
    }

    /// The settings match `plan`'s (the tensor count aside).
    fn check_header(&self, plan: &ChunkPlan) -> Result<(), SparseError> {
        let s = plan.settings();
        for (field, expected, got) in
            [("chunk", s.chunk, self.chunk), ("tile", s.tile, self.tile), ("top_k", s.top_k, self.top_k)]
        {
            if expected != got {
                return Err(SparseError::SettingsMismatch { field, expected, got });
            }
        }
        Ok(())
    }

    /// Checks what decoding against `plan` relies on for tensor `t` (settings, tensor
    /// count, chunk counts); indices are checked where they are read.
    pub(crate) fn check_tensor_plan(&self, plan: &ChunkPlan, t: usize) -> Result<&TensorPayload, SparseError> {
        self.check_header(plan)?;
        if self.tensors.len() != plan.tensors().len() {
            return Err(SparseError::TensorCount { expected: plan.tensors().len(), got: self.tensors.len() });
        }
        let chunks = plan.tensor(t)?;
        let tp = &self.tensors[t];
        check_counts(&tp.counts, chunks, plan.settings().top_k, t)?;
        Ok(tp)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str, tensor: usize) -> Result<&'a [u8], SparseError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(SparseError::Truncated { what, tensor, needed: n, left });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
}

fn read_tensor(
    r: &mut Reader<'_>,
    t: usize,
    chunks: &TensorChunks,
    top_k: usize,
    max_abs: f32,
) -> Result<TensorPayload, SparseError> {
    let raw = r.take(16, "lookup table", t)?;
    let mut lookup = [0f32; 4];
    for (v, b) in lookup.iter_mut().zip(raw.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    check_lookup(&lookup, t, max_abs)?;
    let raw = r.take(2 * chunks.chunk_count(), "chunk counts", t)?;
    let counts: Vec<u16> = raw.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    check_counts(&counts, chunks, top_k, t)?;
    let kept: usize = counts.iter().map(|&c| usize::from(c)).sum();
    let indices = r.take(packed_indices_len(kept), "indices", t)?.to_vec();
    if !indices_padding_clear(&indices, kept) {
        return Err(SparseError::Padding { tensor: t, what: "indices" });
    }
    let codes = r.take(packed_codes_len(kept), "codes", t)?.to_vec();
    if !codes_padding_clear(&codes, kept) {
        return Err(SparseError::Padding { tensor: t, what: "codes" });
    }
    let tp = TensorPayload { lookup, counts, indices, codes, kept };
    check_indices(&tp, chunks, t)?;
    Ok(tp)
}

fn check_lookup(lookup: &[f32; 4], tensor: usize, bound: f32) -> Result<(), SparseError> {
    for (code, &value) in lookup.iter().enumerate() {
        if !value.is_finite() {
            return Err(SparseError::LookupNotFinite { tensor, code, value });
        }
        // A NaN bound refuses everything.
        if bound.is_nan() || value.abs() > bound {
            return Err(SparseError::LookupBeyondBound { tensor, code, value, bound });
        }
    }
    Ok(())
}

fn check_counts(counts: &[u16], chunks: &TensorChunks, top_k: usize, tensor: usize) -> Result<(), SparseError> {
    if counts.len() != chunks.chunk_count() {
        return Err(SparseError::ChunkCount { tensor, expected: chunks.chunk_count(), got: counts.len() });
    }
    for (chunk, &count) in counts.iter().enumerate() {
        let k = chunks.chunk_k(chunk, top_k);
        if usize::from(count) > k {
            return Err(SparseError::CountAboveK { tensor, chunk, count: usize::from(count), k });
        }
    }
    Ok(())
}

/// Every index below its chunk's length and strictly ascending within its chunk.
fn check_indices(tp: &TensorPayload, chunks: &TensorChunks, tensor: usize) -> Result<(), SparseError> {
    let mut from = 0;
    for (c, &count) in tp.counts.iter().enumerate() {
        let count = usize::from(count);
        super::aggregate::visit_chunk(tp, tensor, c, chunks.chunk_len(c), from, count, |_, _| {})?;
        from += count;
    }
    Ok(())
}
