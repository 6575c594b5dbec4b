//! Fused causal attention, FlashAttention-2 style: the output is computed one block of
//! query rows against one block of keys at a time with an online softmax, and only the
//! log-sum-exp row of each query is kept for the backward pass, so no
//! `[batch, heads, seq, seq]` score tensor is ever stored.
//!
//! - [`reference`]: the blocking on plain f32 slices (the algorithm's specification, run
//!   on the CPU and tested against the O(T²) formula).
//! - `kernel`, `launch`, `cube` (feature `cubecl-kernels`, on with `cuda` and `wgpu-test`):
//!   the same algorithm as CubeCL kernels, their launches on burn's CubeCL tensors, and
//!   `ModelBackend` for burn's `CubeBackend` and its `Fusion` wrapper.

#[cfg(feature = "cubecl-kernels")]
mod cube;
#[cfg(feature = "cubecl-kernels")]
mod kernel;
#[cfg(feature = "cubecl-kernels")]
pub mod launch;
pub mod reference;
#[cfg(all(test, feature = "wgpu-test"))]
mod wgpu_tests;

/// A shape the fused attention cannot run on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttentionShapeError {
    #[error("attention needs at least one query head and one key/value head, got {heads} and {kv_heads}")]
    NoHeads { heads: usize, kv_heads: usize },
    #[error("{heads} query heads cannot share {kv_heads} key/value heads evenly")]
    UnevenGroups { heads: usize, kv_heads: usize },
    #[error("head dimension must be positive")]
    ZeroHeadDim,
    #[error("{what} has {got} values, the shape {shape:?} needs {expected}")]
    Length { what: &'static str, got: usize, expected: usize, shape: AttentionShape },
    #[error("block sizes must be positive, got {block_q}×{block_k}")]
    ZeroBlock { block_q: usize, block_k: usize },
}

/// The dimensions of one causal attention call: `q: [batch, heads, seq, head_dim]`,
/// `k, v: [batch, kv_heads, seq, head_dim]`, query head `i` reading key/value head
/// `i / (heads / kv_heads)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Checks the head counts and the head dimension.
    pub fn validate(&self) -> Result<(), AttentionShapeError> {
        if self.heads == 0 || self.kv_heads == 0 {
            return Err(AttentionShapeError::NoHeads { heads: self.heads, kv_heads: self.kv_heads });
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(AttentionShapeError::UnevenGroups { heads: self.heads, kv_heads: self.kv_heads });
        }
        if self.head_dim == 0 {
            return Err(AttentionShapeError::ZeroHeadDim);
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Values of `q`, `out` and their gradients.
    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }

    /// Values of `k`, `v` and their gradients.
    pub fn kv_len(&self) -> usize {
        self.batch * self.kv_heads * self.seq * self.head_dim
    }

    /// Values of `lse`.
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }

    pub(crate) fn check_len(&self, what: &'static str, got: usize, expected: usize) -> Result<(), AttentionShapeError> {
        if got == expected { Ok(()) } else { Err(AttentionShapeError::Length { what, got, expected, shape: *self }) }
    }
}
