//! Chunk geometry: which values of a tensor form each chunk, in the protocol's order.
//!
//! Work is split into *bands*, contiguous runs of a tensor that hold whole chunks: one
//! chunk of a vector, one row of tiles (`tile × cols` values) of a matrix. Bands are
//! independent, so they can be processed in parallel and mutated through disjoint
//! slices, and concatenating their results in band order gives chunk order.

use std::ops::Range;

use super::{CompressSettings, SparseError};
use crate::model::ParamSpec;

/// Longest vector chunk: in-chunk indices are 12 bits.
pub const MAX_CHUNK: usize = 4096;
/// Largest matrix tile side: tile² ≤ [`MAX_CHUNK`].
pub const MAX_TILE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Any shape but 2-D, flattened row-major, cut into contiguous chunks.
    Vector,
    /// A 2-D shape, cut into tiles.
    Matrix { rows: usize, cols: usize },
}

/// Where a chunk's values lie inside its band: `rows` runs of `width` values, `stride`
/// apart, the first at `start`. Value `i` of the chunk is at
/// `start + (i / width) · stride + i % width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkView {
    pub start: usize,
    pub rows: usize,
    pub width: usize,
    pub stride: usize,
}

impl ChunkView {
    pub fn len(&self) -> usize {
        self.rows * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Band position of the chunk's value `i` (`i < len`).
    #[inline]
    pub fn band_pos(&self, i: usize) -> usize {
        self.start + (i / self.width) * self.stride + i % self.width
    }

    /// Band ranges of the chunk's rows, in index order.
    pub fn row_ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.rows).map(|r| {
            let s = self.start + r * self.stride;
            s..s + self.width
        })
    }
}

/// The chunks of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorChunks {
    kind: TensorKind,
    numel: usize,
    chunk: usize,
    tile: usize,
}

impl TensorChunks {
    /// `settings` must be valid ([`CompressSettings::validate`]).
    pub fn new(spec: &ParamSpec, settings: &CompressSettings) -> Self {
        let numel = spec.numel();
        let kind = match spec.shape[..] {
            [rows, cols] if numel > 0 => TensorKind::Matrix { rows, cols },
            _ => TensorKind::Vector,
        };
        Self { kind, numel, chunk: settings.chunk.max(1), tile: settings.tile.max(1) }
    }

    pub fn kind(&self) -> TensorKind {
        self.kind
    }

    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Tiles across a matrix (1 for a vector).
    fn tiles_per_row(&self) -> usize {
        match self.kind {
            TensorKind::Vector => 1,
            TensorKind::Matrix { cols, .. } => cols.div_ceil(self.tile),
        }
    }

    pub fn chunk_count(&self) -> usize {
        self.band_count() * self.tiles_per_row()
    }

    /// Values per band (≥ 1); the last band may be shorter.
    pub fn band_len(&self) -> usize {
        match self.kind {
            TensorKind::Vector => self.chunk,
            TensorKind::Matrix { cols, .. } => self.tile * cols,
        }
    }

    pub fn band_count(&self) -> usize {
        self.numel.div_ceil(self.band_len())
    }

    /// The chunks of band `band`.
    pub fn band_chunks(&self, band: usize) -> Range<usize> {
        let per = self.tiles_per_row();
        band * per..(band + 1) * per
    }

    /// Geometry of chunk `c` inside its band.
    pub fn view(&self, c: usize) -> ChunkView {
        match self.kind {
            TensorKind::Vector => {
                let len = self.chunk.min(self.numel.saturating_sub(c * self.chunk));
                ChunkView { start: 0, rows: 1, width: len, stride: len }
            }
            TensorKind::Matrix { rows, cols } => {
                let per = self.tiles_per_row();
                let (tr, tc) = (c / per, c % per);
                let height = self.tile.min(rows.saturating_sub(tr * self.tile));
                let width = self.tile.min(cols.saturating_sub(tc * self.tile));
                ChunkView { start: tc * self.tile, rows: height, width, stride: cols }
            }
        }
    }

    pub fn chunk_len(&self, c: usize) -> usize {
        self.view(c).len()
    }

    /// Entries chunk `c` keeps.
    pub fn chunk_k(&self, c: usize, top_k: usize) -> usize {
        top_k.min(self.chunk_len(c))
    }

    /// Row-major position in the tensor of value `i` of chunk `c`.
    pub fn position(&self, c: usize, i: usize) -> usize {
        let band = c / self.tiles_per_row();
        band * self.band_len() + self.view(c).band_pos(i)
    }

    /// Most entries the tensor keeps: Σ over chunks of `min(top_k, chunk_len)`.
    pub fn max_kept(&self, top_k: usize) -> usize {
        (0..self.chunk_count()).map(|c| self.chunk_k(c, top_k)).sum()
    }
}

/// The chunks of every tensor of a layout, with each tensor's range in a flat vector
/// holding all tensors in layout order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPlan {
    settings: CompressSettings,
    tensors: Vec<TensorChunks>,
    offsets: Vec<usize>,
}

impl ChunkPlan {
    pub fn new(params: &[ParamSpec], settings: &CompressSettings) -> Result<Self, SparseError> {
        settings.validate()?;
        let tensors: Vec<_> = params.iter().map(|p| TensorChunks::new(p, settings)).collect();
        let mut offsets = Vec::with_capacity(tensors.len() + 1);
        let mut total = 0usize;
        offsets.push(0);
        for t in &tensors {
            total = total.checked_add(t.numel()).ok_or_else(|| SparseError::Settings("layout too large".into()))?;
            offsets.push(total);
        }
        Ok(Self { settings: *settings, tensors, offsets })
    }

    pub fn settings(&self) -> &CompressSettings {
        &self.settings
    }

    pub fn tensors(&self) -> &[TensorChunks] {
        &self.tensors
    }

    pub fn tensor(&self, t: usize) -> Result<&TensorChunks, SparseError> {
        self.tensors.get(t).ok_or(SparseError::NoSuchTensor { tensor: t, count: self.tensors.len() })
    }

    pub fn total_numel(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Range of tensor `t` in the flat vector.
    pub fn range(&self, t: usize) -> Range<usize> {
        self.offsets[t]..self.offsets[t + 1]
    }

    /// The flat vector's length in bytes as f32: what the payload replaces.
    pub fn dense_bytes(&self) -> usize {
        self.total_numel() * 4
    }

    /// Length of the largest payload this layout admits (every chunk at its k).
    pub fn max_encoded_len(&self) -> usize {
        let per_tensor = self.tensors.iter().map(|t| {
            let n = t.max_kept(self.settings.top_k);
            16 + 2 * t.chunk_count() + super::packed_indices_len(n) + super::packed_codes_len(n)
        });
        super::HEADER_LEN + per_tensor.sum::<usize>()
    }
}
