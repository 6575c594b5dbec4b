//! The compression half of a SparseLoCo exchange (arXiv 2508.15706; templar's production
//! exchange), as pure functions: no I/O, no signatures, no model fingerprint — the signed
//! envelope that carries a [`Payload`] is the caller's.
//!
//! **What SparseLoCo sends.** After H inner AdamW steps a miner holds a pseudo-gradient
//! Δ = θ_start − θ_end per parameter tensor. It keeps an error-feedback buffer e:
//! e ← β·e + Δ; in every chunk of e it keeps the top-k entries by magnitude, quantises the
//! kept values of each tensor to 2 bits, sends their in-chunk positions and codes, and
//! subtracts what it sent (the *dequantised* values) from e, so that both what top-k
//! dropped and what quantisation rounded away are sent in a later round ([`compress`]).
//! Receivers decode every peer's payload, pull each peer's whole contribution back to the
//! median of the peers' L2 norms and average each position over the peers that chose it
//! ([`aggregate`]).
//!
//! **Chunks** ([`TensorChunks`]). A parameter with a 2-D shape `[rows, cols]` is a matrix
//! cut into `tile × tile` tiles (64 × 64; the last tile row and column partial); any other
//! shape is a vector (flattened row-major) cut into contiguous chunks of `chunk` values
//! (4096; the last partial). Chunks are numbered row-major over the tile grid (tile row by
//! tile row, left to right) or from the vector's start. A value's *index* is its row-major
//! position inside its chunk (`local_row · tile_width + local_col`, tile_width being the
//! partial width at the right edge), so it is `< 4096` and fits 12 bits. Each chunk keeps
//! `min(top_k, chunk_len)` entries; ties in magnitude go to the smaller index.
//!
//! **Quantisation** ([`quantise`]), per tensor over its kept values in chunk order (chunk
//! by chunk, indices ascending), all in f64: μ = Σv/n, σ = √(Σ(v−μ)²/n) (population),
//! lo = μ − 6σ, hi = μ + 6σ, w = (hi − lo)/4; code = min(3, ⌊(clamp(v, lo, hi) − lo)/w⌋)
//! (0 for all when w = 0). The lookup table holds, per code, the mean of the unclamped
//! kept values with that code (Σ in chunk order, then one division, then rounded to f32),
//! or the bin's centre lo + (b + ½)·w when no value has it.
//!
//! **Byte layout** ([`Payload::to_bytes`]), all little-endian, no padding, nothing after:
//! ```text
//! 0    8 bytes   MAGIC "TESSLOCO"
//! 8    u16       format version (1)
//! 10   u16       chunk
//! 12   u16       tile
//! 14   u32       top_k
//! 18   u32       tensor count T (= the layout's)
//! 22   T times, in layout order:
//!        4 × f32        lookup table, code 0..3
//!        C × u16        kept count of each chunk, in chunk order (C fixed by the layout)
//!        ⌈3n/2⌉ bytes   indices, n = Σ counts, chunk by chunk, ascending in a chunk;
//!                       a pair (a, b) is [a & 0xff, a >> 8 | (b & 0xf) << 4, b >> 4];
//!                       an odd last index is [a & 0xff, a >> 8] (high nibble zero)
//!        ⌈n/4⌉ bytes    codes, code j at bits 2·(j mod 4) of byte j/4; unused bits zero
//! ```
//!
//! **What is bounded.** [`Payload::from_bytes`] refuses input longer than the layout's
//! [`ChunkPlan::max_encoded_len`] before parsing, then checks the header against the
//! expected settings and layout, every count against its chunk's k, every index against
//! its chunk's length and for strict ascent (no duplicates), every padding bit, and every
//! lookup value for finiteness and against a caller-given bound — so a decoded payload's
//! contribution has at most Σk entries of magnitude at most that bound. [`aggregate`]
//! re-checks the geometry against its layout and never panics; its median-norm clip bounds
//! what any minority of hostile peers can add.
//!
//! **Determinism.** Top-k is a total order, statistics are sequential f64 sums in chunk
//! order, and the aggregate sums peers in the order given with f32 adds per position;
//! rayon only splits work over independent chunks. Every node gets the same bits.

mod aggregate;
mod chunks;
mod compress;
mod pack;
mod wire;

#[cfg(test)]
mod tests;

use thiserror::Error;

pub use aggregate::{Clip, Sparse, SparseTensor, aggregate, aggregate_tensor, clip, decompress, dequantise};
pub use chunks::{ChunkPlan, ChunkView, MAX_CHUNK, MAX_TILE, TensorChunks, TensorKind};
pub use compress::{compress, compress_tensor, quantise};
pub use pack::{pack_codes, pack_indices, packed_codes_len, packed_indices_len, unpack_codes, unpack_indices};
pub use wire::{FORMAT_VERSION, HEADER_LEN, MAGIC, Payload, TensorPayload};

/// The bytes of a SparseLoCo delta object of `params`: the signed envelope and the
/// payload, whose length the layout fixes (every chunk keeps `min(top_k, len)` entries).
pub fn delta_object_bytes(params: &[crate::model::ParamSpec], settings: &CompressSettings) -> Result<u64, SparseError> {
    Ok((crate::slice::max_encoded_len(0) + ChunkPlan::new(params, settings)?.max_encoded_len()) as u64)
}

/// The exchange's knobs; every peer of a run must use the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressSettings {
    /// Values per chunk of a vector (≤ [`MAX_CHUNK`], so indices fit 12 bits).
    pub chunk: usize,
    /// Side of a matrix tile (≤ [`MAX_TILE`]: tile² ≤ 4096).
    pub tile: usize,
    /// Entries kept per chunk (fewer where a chunk is smaller).
    pub top_k: usize,
    /// Error-feedback decay: e ← β·e + Δ.
    pub beta: f32,
}

impl Default for CompressSettings {
    /// The paper's and templar's values.
    fn default() -> Self {
        Self { chunk: 4096, tile: 64, top_k: 64, beta: 0.95 }
    }
}

impl CompressSettings {
    pub fn validate(&self) -> Result<(), SparseError> {
        let bad = |reason: String| Err(SparseError::Settings(reason));
        if !(1..=MAX_CHUNK).contains(&self.chunk) {
            return bad(format!("chunk must be in 1..={MAX_CHUNK}, got {}", self.chunk));
        }
        if !(1..=MAX_TILE).contains(&self.tile) {
            return bad(format!("tile must be in 1..={MAX_TILE}, got {}", self.tile));
        }
        if self.top_k == 0 || self.top_k > u32::MAX as usize {
            return bad(format!("top_k must be in 1..={}, got {}", u32::MAX, self.top_k));
        }
        if !(self.beta.is_finite() && (0.0..=1.0).contains(&self.beta)) {
            return bad(format!("beta must be in [0, 1], got {}", self.beta));
        }
        Ok(())
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum SparseError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("{what} has {got} values, the layout {expected}")]
    Length { what: &'static str, expected: usize, got: usize },
    #[error("tensor {tensor} position {position}: β·e + Δ = {value} is not finite")]
    NonFinite { tensor: usize, position: usize, value: f32 },
    #[error("tensor {tensor}: quantising its kept values overflows f32")]
    Overflow { tensor: usize },
    #[error("payload is {len} bytes, the layout allows at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("payload truncated: {what} of tensor {tensor} needs {needed} bytes, {left} left")]
    Truncated { what: &'static str, tensor: usize, needed: usize, left: usize },
    #[error("payload truncated: header needs {HEADER_LEN} bytes, {left} left")]
    TruncatedHeader { left: usize },
    #[error("not a SparseLoCo payload (bad magic)")]
    Magic,
    #[error("payload format version {0}, this build reads {FORMAT_VERSION}")]
    Version(u16),
    #[error("payload {field} is {got}, expected {expected}")]
    SettingsMismatch { field: &'static str, expected: usize, got: usize },
    #[error("payload has {got} tensors, the layout {expected}")]
    TensorCount { expected: usize, got: usize },
    #[error("tensor {tensor} has {got} chunk counts, the layout {expected} chunks")]
    ChunkCount { tensor: usize, expected: usize, got: usize },
    #[error("tensor {tensor} chunk {chunk}: count {count} is above the chunk's k = {k}")]
    CountAboveK { tensor: usize, chunk: usize, count: usize, k: usize },
    #[error("tensor {tensor} chunk {chunk}: index {index} is not below the chunk length {len}")]
    IndexOutOfChunk { tensor: usize, chunk: usize, index: usize, len: usize },
    #[error("tensor {tensor} chunk {chunk}: indices not strictly ascending ({index} after {previous})")]
    IndexOrder { tensor: usize, chunk: usize, index: usize, previous: usize },
    #[error("tensor {tensor}: lookup[{code}] = {value} is not finite")]
    LookupNotFinite { tensor: usize, code: usize, value: f32 },
    #[error("tensor {tensor}: |lookup[{code}]| = {value} is beyond the bound {bound}")]
    LookupBeyondBound { tensor: usize, code: usize, value: f32, bound: f32 },
    #[error("tensor {tensor}: nonzero padding bits in the packed {what}")]
    Padding { tensor: usize, what: &'static str },
    #[error("{extra} bytes after the last tensor")]
    Trailing { extra: usize },
    #[error("packed {what}: {len} bytes cannot hold {count} entries")]
    PackedLength { what: &'static str, len: usize, count: usize },
    #[error("tensor index {tensor} is outside the layout's {count} tensors")]
    NoSuchTensor { tensor: usize, count: usize },
    #[error("{got} clip scales for {expected} peers")]
    ClipMismatch { expected: usize, got: usize },
}
