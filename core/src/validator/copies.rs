//! Telling copied updates apart. A miner that re-signs another's delta uploads the same
//! body (the header's BLAKE3 of the body gives it away) or, to hide, nearly the same
//! values. Nearness is the cosine similarity of a sketch of each update: the same
//! positions for every miner of the window, drawn from a seed only the validator knows,
//! so a copier cannot tell which values to disturb, and taken after removing the
//! window's mean update (honest updates share a large common part). Of two copies, the
//! later upload is the copier; when the uploads carry the same time (or none), both are.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::index::sample;

/// One miner's delta of the window, as the copy check needs it.
#[derive(Debug, Clone)]
pub struct CopyCandidate {
    pub uid: u16,
    pub body_hash: [u8; 32],
    /// The bucket's `LastModified` (unix ms).
    pub last_modified_ms: Option<i64>,
    pub sketch: Vec<f32>,
}

/// Up to `k` positions of `len`, drawn from `seed` (not a protocol value: only the
/// validator that draws them uses them).
pub fn sketch_positions(len: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut positions = sample(&mut rng, len, k.min(len)).into_vec();
    positions.sort_unstable();
    positions
}

/// The values at `positions` (missing positions read as 0).
pub fn sketch(values: &[f32], positions: &[usize]) -> Vec<f32> {
    positions.iter().map(|&i| values.get(i).copied().unwrap_or(0.0)).collect()
}

/// Each sketch minus the window's mean sketch. Honest updates of one window share a
/// large common part (the same model, similar data, weight decay), so their raw cosine
/// can exceed any threshold; what remains after the mean is each miner's own, and only
/// a copy shares it.
fn centred(candidates: &[CopyCandidate]) -> Vec<Vec<f32>> {
    let len = candidates.iter().map(|c| c.sketch.len()).max().unwrap_or(0);
    let mut mean = vec![0f64; len];
    for c in candidates {
        for (m, v) in mean.iter_mut().zip(&c.sketch) {
            *m += f64::from(*v);
        }
    }
    let n = candidates.len().max(1) as f64;
    candidates
        .iter()
        .map(|c| c.sketch.iter().zip(&mean).map(|(v, m)| (f64::from(*v) - m / n) as f32).collect())
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let norm = (na * nb).sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| dot / norm)
}

/// The copiers of the window: copier UID → the UID it copied. Two candidates are copies
/// when their bodies hash the same or their sketches' cosine similarity reaches
/// `similarity`; the later upload is the copier, and with equal (or unknown) times both are.
pub fn find_copies(candidates: &[CopyCandidate], similarity: f64) -> BTreeMap<u16, u16> {
    let residuals = centred(candidates);
    let mut copiers = BTreeMap::new();
    for (i, a) in candidates.iter().enumerate() {
        for (j, b) in candidates.iter().enumerate().skip(i + 1) {
            let same =
                a.body_hash == b.body_hash || cosine(&residuals[i], &residuals[j]).is_some_and(|c| c >= similarity);
            if !same {
                continue;
            }
            match (a.last_modified_ms, b.last_modified_ms) {
                (Some(ta), Some(tb)) if ta < tb => {
                    copiers.entry(b.uid).or_insert(a.uid);
                }
                (Some(ta), Some(tb)) if tb < ta => {
                    copiers.entry(a.uid).or_insert(b.uid);
                }
                _ => {
                    copiers.entry(a.uid).or_insert(b.uid);
                    copiers.entry(b.uid).or_insert(a.uid);
                }
            }
        }
    }
    copiers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(uid: u16, hash: u8, t: Option<i64>, sketch: Vec<f32>) -> CopyCandidate {
        CopyCandidate { uid, body_hash: [hash; 32], last_modified_ms: t, sketch }
    }

    #[test]
    fn the_later_of_two_identical_bodies_is_the_copier() {
        let found = find_copies(
            &[
                cand(3, 1, Some(2_000), vec![1.0, 0.0]),
                cand(1, 1, Some(1_000), vec![0.0, 1.0]),
                cand(2, 2, Some(500), vec![1.0, 1.0]),
            ],
            0.999,
        );
        assert_eq!(found, BTreeMap::from([(3, 1)]));
    }

    #[test]
    fn nearly_equal_values_are_copies_and_independent_updates_are_not() {
        let base: Vec<f32> = (0..256).map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0).collect();
        let disturbed: Vec<f32> =
            base.iter().enumerate().map(|(i, v)| v + if i % 17 == 0 { 1e-3 } else { 0.0 }).collect();
        let other: Vec<f32> = (0..256).map(|i| ((i * 104_729) % 199) as f32 / 100.0 - 1.0).collect();
        let found = find_copies(
            &[cand(0, 1, Some(10), base), cand(1, 2, Some(20), disturbed), cand(2, 3, Some(5), other)],
            0.999,
        );
        assert_eq!(found, BTreeMap::from([(1, 0)]));
    }

    #[test]
    fn honest_updates_with_a_large_common_part_are_not_copies() {
        let common: Vec<f32> = (0..512).map(|i| ((i * 31) % 97) as f32 / 10.0).collect();
        let own = |seed: usize| -> Vec<f32> {
            common
                .iter()
                .enumerate()
                .map(|(i, c)| c + (((i * seed * 7919) % 101) as f32 / 100.0 - 0.5) * 0.05)
                .collect()
        };
        let (a, b, c) = (own(3), own(5), own(11));
        assert!(cosine(&a, &b).unwrap() > 0.999, "raw updates look alike");
        let found = find_copies(
            &[cand(0, 1, Some(1), a.clone()), cand(1, 2, Some(2), b), cand(2, 3, Some(3), c), cand(3, 4, Some(4), a)],
            0.999,
        );
        assert_eq!(found, BTreeMap::from([(3, 0)]), "only the real copy");
    }

    #[test]
    fn equal_or_unknown_times_flag_both_and_zero_updates_only_match_by_bytes() {
        let found = find_copies(&[cand(0, 1, Some(10), vec![1.0]), cand(1, 1, Some(10), vec![1.0])], 0.999);
        assert_eq!(found, BTreeMap::from([(0, 1), (1, 0)]));
        let found = find_copies(&[cand(0, 1, None, vec![0.0; 4]), cand(1, 2, None, vec![0.0; 4])], 0.999);
        assert!(found.is_empty(), "zero sketches have no direction: {found:?}");
    }

    #[test]
    fn sketch_positions_are_distinct_sorted_and_seeded() {
        let p = sketch_positions(1000, 64, 7);
        assert_eq!(p.len(), 64);
        assert!(p.windows(2).all(|w| w[0] < w[1]) && p[63] < 1000);
        assert_eq!(p, sketch_positions(1000, 64, 7));
        assert_ne!(p, sketch_positions(1000, 64, 8));
        assert_eq!(sketch_positions(10, 64, 1).len(), 10);
        assert_eq!(sketch(&[1.0, 2.0, 3.0], &[0, 2, 5]), vec![1.0, 3.0, 0.0]);
    }
}
