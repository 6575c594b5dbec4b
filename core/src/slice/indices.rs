//! Slice index sets `I(s, p)`: which positions of each parameter a window exchanges.
//!
//! This sampler *is* the protocol: every peer must compute bit-identical sets, forever, on
//! every platform. So it is written here over integer arithmetic only, and pinned by test
//! vectors; library samplers whose output may change between versions are not used.
//!
//! For window seed `s` and parameter `p` (canonical name, `n` values):
//! 1. `k = max(1, n / compression)` (integer division);
//! 2. the PRNG is ChaCha8 seeded with `BLAKE3-derive_key(INDEX_CONTEXT, s_le64 ‖
//!    len(name)_le64 ‖ name)`;
//! 3. `k` distinct positions are drawn with Floyd's algorithm: for `j` in `n-k .. n`, draw
//!    `t` uniform in `[0, j]` (Lemire's multiply-and-reject on `next_u64`); take `t` unless
//!    already taken, else take `j`;
//! 4. the set is returned sorted ascending.
//!
//! Floyd's algorithm needs exactly `k` draws (plus rare rejections), so its cost is
//! proportional to the slice, not to the parameter.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use rustc_hash::FxHashSet;
use thiserror::Error;

use crate::model::ParamLayout;

/// BLAKE3 key-derivation context of the per-parameter PRNG seed. Part of the protocol.
pub const INDEX_CONTEXT: &str = "tessera 2024-11 slice indices v1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("compression must be at least 1, got 0")]
    ZeroCompression,
    #[error("parameter {name} is empty; nothing to sample")]
    EmptyParameter { name: String },
    #[error("parameter {name} has {numel} values; the slice protocol addresses at most 2^32")]
    ParameterTooLarge { name: String, numel: u64 },
}

/// How many positions of an `n`-value parameter a slice carries.
pub fn slice_len(numel: u64, compression: u32) -> u64 {
    (numel / u64::from(compression.max(1))).max(1)
}

/// The seed of the per-parameter PRNG.
pub fn param_seed(window_seed: u64, name: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(INDEX_CONTEXT);
    h.update(&window_seed.to_le_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    *h.finalize().as_bytes()
}

/// A uniform integer in `[0, bound)`, `bound ≥ 1`: Lemire's nearly-divisionless method.
fn uniform_below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let mut m = u128::from(rng.next_u64()) * u128::from(bound);
    if (m as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(bound);
        }
    }
    (m >> 64) as u64
}

/// Membership structure for Floyd's algorithm. Both give the same set; the dense bitmap is
/// faster when the slice is a sizeable fraction of the parameter.
enum Taken {
    Dense(Vec<u64>),
    Sparse(FxHashSet<u32>),
}

impl Taken {
    fn new(numel: u64, k: u64) -> Self {
        // A bitmap costs n/8 bytes and a scan of n/64 words; a hash set ~16 bytes a value
        // plus a sort. Prefer the bitmap up to compression 256.
        if numel <= k.saturating_mul(256) {
            Taken::Dense(vec![0u64; numel.div_ceil(64) as usize])
        } else {
            Taken::Sparse(FxHashSet::with_capacity_and_hasher(k as usize, Default::default()))
        }
    }

    /// Marks `i`; returns false if it was already marked.
    fn insert(&mut self, i: u32) -> bool {
        match self {
            Taken::Dense(bits) => {
                let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                let fresh = bits[word] & bit == 0;
                bits[word] |= bit;
                fresh
            }
            Taken::Sparse(set) => set.insert(i),
        }
    }

    fn into_sorted(self, k: usize) -> Vec<u32> {
        match self {
            Taken::Dense(bits) => {
                let mut out = Vec::with_capacity(k);
                for (w, &word) in bits.iter().enumerate() {
                    let mut word = word;
                    while word != 0 {
                        out.push((w as u32) * 64 + word.trailing_zeros());
                        word &= word - 1;
                    }
                }
                out
            }
            Taken::Sparse(set) => {
                let mut out: Vec<u32> = set.into_iter().collect();
                out.sort_unstable();
                out
            }
        }
    }
}

/// `I(window_seed, name)` for a parameter of `numel` values: sorted, distinct, in `[0, numel)`.
pub fn param_indices(window_seed: u64, name: &str, numel: u64, compression: u32) -> Result<Vec<u32>, IndexError> {
    param_indices_with(window_seed, name, numel, compression, None)
}

fn param_indices_with(
    window_seed: u64,
    name: &str,
    numel: u64,
    compression: u32,
    force_dense: Option<bool>,
) -> Result<Vec<u32>, IndexError> {
    if compression == 0 {
        return Err(IndexError::ZeroCompression);
    }
    if numel == 0 {
        return Err(IndexError::EmptyParameter { name: name.to_owned() });
    }
    if numel > u64::from(u32::MAX) + 1 {
        return Err(IndexError::ParameterTooLarge { name: name.to_owned(), numel });
    }
    let k = slice_len(numel, compression);
    let mut rng = ChaCha8Rng::from_seed(param_seed(window_seed, name));
    let mut taken = match force_dense {
        None => Taken::new(numel, k),
        Some(true) => Taken::Dense(vec![0u64; numel.div_ceil(64) as usize]),
        Some(false) => Taken::Sparse(FxHashSet::default()),
    };
    for j in (numel - k)..numel {
        let t = uniform_below(&mut rng, j + 1) as u32;
        if !taken.insert(t) {
            taken.insert(j as u32);
        }
    }
    Ok(taken.into_sorted(k as usize))
}

/// The index sets of every parameter of a model for one window, in canonical order, with
/// each parameter's offset in the flat slice body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceIndices {
    window_seed: u64,
    compression: u32,
    per_param: Vec<Vec<u32>>,
    offsets: Vec<usize>,
}

impl SliceIndices {
    /// Computes all parameters' sets in parallel (each has its own PRNG stream).
    pub fn compute(layout: &ParamLayout, window_seed: u64, compression: u32) -> Result<Self, IndexError> {
        let per_param = layout
            .params()
            .par_iter()
            .map(|p| param_indices(window_seed, &p.name, p.numel() as u64, compression))
            .collect::<Result<Vec<_>, _>>()?;
        let mut offsets = Vec::with_capacity(per_param.len() + 1);
        let mut acc = 0usize;
        offsets.push(0);
        for idx in &per_param {
            acc += idx.len();
            offsets.push(acc);
        }
        Ok(Self { window_seed, compression, per_param, offsets })
    }

    /// Every position of every parameter, in layout order: what a SparseLoCo delta, which
    /// covers the whole model, is read and applied at (window seed 0, compression 1).
    pub fn all(layout: &ParamLayout) -> Self {
        let per_param: Vec<Vec<u32>> = layout.params().iter().map(|p| (0..p.numel() as u32).collect()).collect();
        let mut offsets = Vec::with_capacity(per_param.len() + 1);
        offsets.push(0);
        for idx in &per_param {
            offsets.push(offsets[offsets.len() - 1] + idx.len());
        }
        Self { window_seed: 0, compression: 1, per_param, offsets }
    }

    pub fn window_seed(&self) -> u64 {
        self.window_seed
    }

    pub fn compression(&self) -> u32 {
        self.compression
    }

    /// Indices of the parameter at canonical position `param`.
    pub fn param(&self, param: usize) -> &[u32] {
        &self.per_param[param]
    }

    pub fn per_param(&self) -> &[Vec<u32>] {
        &self.per_param
    }

    /// Where each parameter's values start in the flat slice body (`len() + 1` entries).
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Total values in a slice for this window: the body's length in values.
    pub fn total_len(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    pub fn num_params(&self) -> usize {
        self.per_param.len()
    }

    /// The positions both windows share: pairs of (position in this slice body, position
    /// in `other`'s), by a merge of each parameter's sorted indices. Empty when the two are
    /// for different models.
    pub fn overlap(&self, other: &SliceIndices) -> Vec<(usize, usize)> {
        if self.num_params() != other.num_params() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for p in 0..self.num_params() {
            let (a, b) = (&self.per_param[p], &other.per_param[p]);
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                match a[i].cmp(&b[j]) {
                    std::cmp::Ordering::Less => i += 1,
                    std::cmp::Ordering::Greater => j += 1,
                    std::cmp::Ordering::Equal => {
                        out.push((self.offsets[p] + i, other.offsets[p] + j));
                        i += 1;
                        j += 1;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelShape;
    use proptest::prelude::*;

    #[test]
    fn overlap_pairs_the_shared_positions_of_two_windows() {
        let layout = ParamLayout::llama(&ModelShape {
            vocab_size: 40,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 16,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
        })
        .unwrap();
        let (a, b) = (SliceIndices::compute(&layout, 1, 3).unwrap(), SliceIndices::compute(&layout, 2, 3).unwrap());
        let pairs = a.overlap(&b);
        let mut expected = 0;
        for p in 0..a.num_params() {
            let other: std::collections::HashSet<u32> = b.param(p).iter().copied().collect();
            expected += a.param(p).iter().filter(|i| other.contains(i)).count();
        }
        assert_eq!(pairs.len(), expected);
        assert!(expected > 0, "windows at compression 3 share positions");
        let flat = |s: &SliceIndices, pos: usize| {
            let p = s.offsets().partition_point(|&o| o <= pos) - 1;
            (p, s.param(p)[pos - s.offsets()[p]])
        };
        for (i, j) in pairs {
            assert_eq!(flat(&a, i), flat(&b, j), "the pair names one parameter position");
        }
        assert_eq!(a.overlap(&a).len(), a.total_len());
    }

    fn hash_of(indices: &[u32]) -> String {
        let mut h = blake3::Hasher::new();
        for i in indices {
            h.update(&i.to_le_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// Test vectors of the protocol. If this test fails, the change would split the
    /// network: peers would average values at different positions. Bump the protocol
    /// version (and INDEX_CONTEXT) instead of editing these.
    #[test]
    fn index_sets_match_the_committed_test_vectors() {
        // (window seed, name, numel, compression) -> (len, first, last, hash of the set)
        type Vector = (u64, &'static str, u64, u32, usize, u32, u32, &'static str);
        let vectors: &[Vector] = &[
            (0, "model.layers.0.input_layernorm.weight", 2048, 100, 20, 13, 1968, "7404bc0d5883fa98"),
            (1, "model.layers.0.self_attn.q_proj.weight", 4_194_304, 100, 41_943, 52, 4_194_271, "4fd39bd55d3dd4ee"),
            (123_456, "model.embed_tokens.weight", 65_536_000, 100, 655_360, 28, 65_535_828, "c826a8e6f686ce3b"),
            (7, "lm_head.weight", 65_536_000, 1000, 65_536, 92, 65_534_076, "1818d6f2c9b87539"),
            (u64::MAX, "model.norm.weight", 64, 100, 1, 22, 22, "91183c4be76c8c06"),
            (42, "tiny", 10, 3, 3, 0, 9, "54a7207e7ea2b2df"),
        ];
        for &(seed, name, numel, comp, len, first, last, hash) in vectors {
            let idx = param_indices(seed, name, numel, comp).unwrap();
            let got = (idx.len(), idx[0], *idx.last().unwrap(), hash_of(&idx));
            assert_eq!(got, (len, first, last, hash.to_string()), "vector ({seed}, {name}, {numel}, {comp})");
        }
    }

    #[test]
    fn uniform_below_matches_a_pinned_prng_stream() {
        let mut rng = ChaCha8Rng::from_seed([7u8; 32]);
        let draws: Vec<u64> = (0..6).map(|_| uniform_below(&mut rng, 1000)).collect();
        assert_eq!(draws, [223, 831, 290, 353, 704, 110]);
    }

    #[test]
    fn zero_compression_and_empty_parameters_are_errors() {
        assert_eq!(param_indices(0, "p", 10, 0), Err(IndexError::ZeroCompression));
        assert!(matches!(param_indices(0, "p", 0, 1), Err(IndexError::EmptyParameter { .. })));
        assert!(matches!(param_indices(0, "p", (1 << 32) + 1, 1), Err(IndexError::ParameterTooLarge { .. })));
    }

    #[test]
    fn compression_one_takes_every_position() {
        let idx = param_indices(3, "p", 1000, 1).unwrap();
        assert_eq!(idx, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn tiny_parameters_still_share_one_value() {
        assert_eq!(param_indices(3, "p", 5, 100).unwrap().len(), 1);
    }

    #[test]
    fn different_seeds_and_names_give_different_sets() {
        let a = param_indices(1, "p", 100_000, 100).unwrap();
        let b = param_indices(2, "p", 100_000, 100).unwrap();
        let c = param_indices(1, "q", 100_000, 100).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn positions_are_roughly_uniform() {
        // 20 windows x 10k draws from 1M values: each tenth of the range gets ~10%.
        let mut buckets = [0u32; 10];
        for seed in 0..20 {
            for i in param_indices(seed, "p", 1_000_000, 100).unwrap() {
                buckets[(i / 100_000) as usize] += 1;
            }
        }
        for b in buckets {
            assert!((18_800..=21_200).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn layout_indices_have_offsets_matching_each_parameter() {
        let shape = ModelShape {
            vocab_size: 300,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 128,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
        };
        let layout = ParamLayout::llama(&shape).unwrap();
        let si = SliceIndices::compute(&layout, 9, 10).unwrap();
        assert_eq!(si.num_params(), layout.len());
        for (i, p) in layout.params().iter().enumerate() {
            assert_eq!(si.param(i), param_indices(9, &p.name, p.numel() as u64, 10).unwrap().as_slice());
            assert_eq!(si.offsets()[i + 1] - si.offsets()[i], si.param(i).len());
        }
        assert_eq!(si.total_len(), layout.params().iter().map(|p| (p.numel() / 10).max(1)).sum::<usize>());
        // Every position, as compression 1 draws them (window seed 0), built directly.
        assert_eq!(SliceIndices::all(&layout), SliceIndices::compute(&layout, 0, 1).unwrap());
        assert_eq!(SliceIndices::all(&layout).total_len(), layout.total_numel());
    }

    proptest! {
        #[test]
        fn sets_are_sorted_distinct_in_range_and_sized(seed: u64, numel in 1u64..50_000, comp in 1u32..2_000) {
            let idx = param_indices(seed, "w", numel, comp).unwrap();
            prop_assert_eq!(idx.len() as u64, slice_len(numel, comp));
            prop_assert!(idx.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(u64::from(*idx.last().unwrap()) < numel);
        }

        #[test]
        fn dense_and_sparse_membership_give_the_same_set(seed: u64, numel in 1u64..20_000, comp in 1u32..1_000) {
            let dense = param_indices_with(seed, "w", numel, comp, Some(true)).unwrap();
            let sparse = param_indices_with(seed, "w", numel, comp, Some(false)).unwrap();
            prop_assert_eq!(dense, sparse);
        }

        #[test]
        fn uniform_below_stays_below_its_bound(seed: [u8; 32], bound in 1u64..u64::MAX) {
            let mut rng = ChaCha8Rng::from_seed(seed);
            for _ in 0..8 {
                prop_assert!(uniform_below(&mut rng, bound) < bound);
            }
        }
    }
}
