//! Telling copied updates apart, in the order the validator itself first saw them.
//!
//! A miner that re-signs another's delta uploads the same body (the header's BLAKE3 of the
//! body gives it away) or, to hide, a transform of it: scaled, with noise added, or the
//! mean of several others' (a "mean echo"). Each update is seen through a sketch: the same
//! positions for every miner of the window, drawn from a seed only the validator knows,
//! so a copier cannot tell which values to disturb.
//!
//! The rule: candidates are taken in the order of `first_seen_ms`, the validator's own
//! clock when it first listed the object (a bucket's `LastModified` is the peer's to set).
//! A candidate's *novelty* is what least squares on the sketches of every candidate seen
//! strictly earlier leaves of it, as a fraction of its norm, relative to the window's
//! typical *own part* (how far a candidate's direction typically is from the others'):
//! an honest update's own part is new, so its novelty is ≈ 1 however large the part all
//! updates of a window share; a copy, a scaled copy, a mean echo are ≈ 0, and a noisy
//! copy is its noise over the typical own part. Below `copy_novelty` is a copy, of the
//! earlier candidate that contributes most to the fit.
//!
//! Ties (equal `first_seen_ms`): nobody can be shown to have copied the other, so tied
//! candidates are not compared with each other by value (were they, a copier or echo that
//! lands in the same listing would take the honest originals down with it); identical
//! bodies are still flagged both ways (a Sybil pair publishing one update at once). The
//! significance gate shuts a copier's pay anyway (a copy is not trained on the copier's
//! pages); this check only makes it certain and immediate.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use rand::SeedableRng;
use rand::seq::index::sample;

use super::basis::{Explained, explain};

/// Default `copy_novelty`: a candidate is a copy below 0.3 of the window's typical own
/// part. Measured on synthetic windows (a common part plus an own part of 20–30% of the
/// norm, 40 candidates): honest 0.88–1.37 (≥ 0.77 among 128), exact, scaled and
/// mean-echo copies < 1e-6 (f32 rounding), a copy with noise of 5% of its norm 0.21. A
/// noisy copy escapes once its noise is ~0.3 of the typical own part (with own parts of
/// 10–20%, 5% noise measures 0.36); the gate still shuts it (a copy is not trained on the
/// copier's pages). Lower would miss more noisy copies, higher would flag honest miners
/// whose own part is well under the window's typical one.
pub const COPY_NOVELTY: f64 = 0.3;

/// The least typical own part (fraction of a sketch's norm) the novelty is measured
/// against: a window whose updates all point within ~5% of one another (a majority of
/// copies, or no own signal) still flags a candidate less than 1.5% new.
const OWN_PART_MIN: f64 = 0.05;

/// One miner's delta of the window, as the copy check needs it.
#[derive(Debug, Clone)]
pub struct CopyCandidate {
    pub uid: u16,
    pub body_hash: [u8; 32],
    /// The validator's own clock (unix ms) when it first listed this object: smaller is
    /// earlier; equal values are ties.
    pub first_seen_ms: i64,
    pub sketch: Vec<f32>,
    /// Whether the validator's significance gate is open for its miner (it has shown, over
    /// windows, that it trains on its own pages). A vouched update is a copy only by its
    /// bytes, never by its values: updates of one window are alike (one step from one
    /// model), and in real time one published earlier (random pages, noise) explained most
    /// of an honest miner's, which was then called a copier in 7 of 18 windows and its z
    /// driven to −3.2 by the copy penalty (`--block-time 2s`, seed 0). A copier's own pages
    /// are not what its update was trained on, so its gate stays shut and it stays
    /// catchable.
    pub vouched: bool,
}

/// What the copy check found of one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyAssessment {
    pub uid: u16,
    /// An earlier candidate with the same body (or, tied in time, another one).
    pub same_body_as: Option<u16>,
    /// Novelty (see the module doc); `None` for a sketch with no direction (zero or
    /// non-finite), which matches only by bytes, or with nothing earlier to compare.
    pub novelty: Option<f64>,
    /// The earlier candidate that contributes most to the least-squares fit.
    pub nearest: Option<u16>,
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

/// The copiers of the window: copier UID → the UID it copied. A candidate is a copier
/// when an earlier one (or a tied one) has its body, or its novelty is below `novelty`.
pub fn find_copies(candidates: &[CopyCandidate], novelty: f64) -> BTreeMap<u16, u16> {
    let vouched: Vec<u16> = candidates.iter().filter(|c| c.vouched).map(|c| c.uid).collect();
    assess_copies(candidates)
        .into_iter()
        .filter_map(|a| match (a.same_body_as, a.novelty, a.nearest) {
            (Some(original), _, _) => Some((a.uid, original)),
            (None, Some(v), Some(original)) if v < novelty && !vouched.contains(&a.uid) => Some((a.uid, original)),
            _ => None,
        })
        .filter(|(uid, original)| uid != original)
        .collect()
}

/// Every candidate's assessment, in the order of `candidates`.
pub fn assess_copies(candidates: &[CopyCandidate]) -> Vec<CopyAssessment> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (candidates[i].first_seen_ms, candidates[i].uid));
    let same_body = same_bodies(candidates, &order);
    let mut out: Vec<CopyAssessment> = candidates
        .iter()
        .map(|c| CopyAssessment {
            uid: c.uid,
            same_body_as: same_body.get(&c.uid).copied(),
            novelty: None,
            nearest: None,
        })
        .collect();
    // The candidates with a direction, in first-seen order, as f64 of one length.
    let len = candidates.iter().map(|c| c.sketch.len()).max().unwrap_or(0);
    let (directed, vectors): (Vec<usize>, Vec<Vec<f64>>) =
        order.iter().filter_map(|&i| direction(&candidates[i].sketch, len).map(|v| (i, v))).unzip();
    let norms: Vec<f64> = vectors.iter().map(|v| norm(v)).collect();
    let own_part = typical_own_part(&vectors, &norms).max(OWN_PART_MIN);
    let groups = tie_groups(&directed.iter().map(|&i| candidates[i].first_seen_ms).collect::<Vec<_>>());
    for (k, fit) in explain(&vectors, &groups).into_iter().enumerate() {
        let i = directed[k];
        let Some(nearest) = largest_contribution(&fit, &norms) else { continue };
        out[i].novelty = Some(fit.residual / norms[k] / own_part);
        out[i].nearest = Some(candidates[directed[nearest]].uid);
    }
    out
}

/// For each candidate whose body an earlier one (first seen, then lowest UID) has: that
/// one; for a body first seen by several candidates at once: each names another of them.
fn same_bodies(candidates: &[CopyCandidate], order: &[usize]) -> HashMap<u16, u16> {
    let mut first: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    let mut out = HashMap::new();
    for &i in order {
        let c = &candidates[i];
        let firsts = first.entry(c.body_hash).or_default();
        match firsts.first().map(|&f| &candidates[f]) {
            None => firsts.push(i),
            Some(f) if f.uid == c.uid => {} // one miner listed twice is not its own copier
            Some(f) if f.first_seen_ms == c.first_seen_ms => {
                // Tied with the first holder(s): both ways.
                out.entry(f.uid).or_insert(c.uid);
                out.insert(c.uid, f.uid);
                firsts.push(i);
            }
            Some(f) => {
                out.insert(c.uid, f.uid);
            }
        }
    }
    out
}

/// The sketch as f64 of `len` values, `None` when it has no direction (all zero, or a
/// non-finite value).
fn direction(sketch: &[f32], len: usize) -> Option<Vec<f64>> {
    let mut v: Vec<f64> = sketch.iter().map(|&x| f64::from(x)).collect();
    v.resize(len, 0.0);
    let n = norm(&v);
    (n > 0.0 && n.is_finite()).then_some(v)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Consecutive runs of equal times (`times` sorted).
fn tie_groups(times: &[i64]) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (i, t) in times.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if times[g.start] == *t => g.end = i + 1,
            _ => groups.push(i..i + 1),
        }
    }
    groups
}

/// The index of the vector with the largest `|coefficient| · norm` in `fit`.
fn largest_contribution(fit: &Explained, norms: &[f64]) -> Option<usize> {
    fit.coefficients
        .iter()
        .map(|&(j, c)| (j, (c * norms[j]).abs()))
        .filter(|(_, v)| v.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(j, _)| j)
}

/// How far a window's update typically points from the others': per vector, the upper
/// median over the others of the distance between unit directions (√2·sin of half the
/// angle: an honest update `c + o` with own fraction `f` is ≈ √2·f from another), over
/// √2; then the median over vectors. Medians, so a cluster of copies (fewer than half the
/// window) does not make everyone's own part look small.
fn typical_own_part(vectors: &[Vec<f64>], norms: &[f64]) -> f64 {
    let n = vectors.len();
    if n < 2 {
        return 0.0;
    }
    let units: Vec<Vec<f64>> = vectors.iter().zip(norms).map(|(v, n)| v.iter().map(|x| x / n).collect()).collect();
    let mut distances = vec![vec![0.0; n]; n];
    for j in 0..n {
        for k in j + 1..n {
            let d = units[j].iter().zip(&units[k]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
            distances[j][k] = d;
            distances[k][j] = d;
        }
    }
    let mut per_vector: Vec<f64> = distances
        .into_iter()
        .enumerate()
        .map(|(j, mut row)| {
            row.swap_remove(j);
            row.sort_by(f64::total_cmp);
            row[row.len() / 2] / std::f64::consts::SQRT_2
        })
        .collect();
    median(&mut per_vector)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => 0.5 * (values[n / 2 - 1] + values[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Sketch length of the tests (the actor's is 4096; a debug build is slow).
    const LEN: usize = 2048;

    fn cand(uid: u16, hash: u8, t: i64, sketch: Vec<f32>) -> CopyCandidate {
        CopyCandidate { uid, body_hash: [hash; 32], first_seen_ms: t, sketch, vouched: false }
    }

    fn unit(rng: &mut StdRng) -> Vec<f64> {
        let v: Vec<f64> = (0..LEN).map(|_| rng.random::<f64>() - 0.5).collect();
        let n = norm(&v);
        v.into_iter().map(|x| x / n).collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// A window of `n` honest updates: a common part shared by all, plus an own part of
    /// 20–30% of the norm, each at its own scale (0.5–2).
    fn honest(rng: &mut StdRng, n: usize) -> Vec<Vec<f64>> {
        let common = unit(rng);
        (0..n)
            .map(|_| {
                let f = 0.2 + 0.1 * rng.random::<f64>();
                let scale = 0.5 + 1.5 * rng.random::<f64>();
                let own = unit(rng);
                common.iter().zip(&own).map(|(c, o)| scale * ((1.0 - f * f).sqrt() * c + f * o)).collect()
            })
            .collect()
    }

    fn novelty_of(assessed: &[CopyAssessment], uid: u16) -> f64 {
        assessed.iter().find(|a| a.uid == uid).and_then(|a| a.novelty).unwrap_or(f64::INFINITY)
    }

    #[test]
    fn honest_updates_with_a_large_common_part_are_novel() {
        let mut rng = StdRng::seed_from_u64(11);
        let window = honest(&mut rng, 40);
        let candidates: Vec<CopyCandidate> =
            window.iter().enumerate().map(|(i, v)| cand(i as u16, i as u8, i as i64, f32s(v))).collect();
        let assessed = assess_copies(&candidates);
        let novelties: Vec<f64> = assessed.iter().filter_map(|a| a.novelty).collect();
        let least = novelties.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(novelties.len(), 39, "all but the first have something earlier");
        assert!(least > 0.75, "honest novelty ≥ 0.75: least {least}");
        assert!(find_copies(&candidates, COPY_NOVELTY).is_empty());
        // Their raw cosines are high: a cosine threshold could not tell them from copies.
        let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b));
        assert!(cos(&window[0], &window[1]) > 0.9);
    }

    #[test]
    fn exact_scaled_noisy_echo_and_sybil_copies_are_caught_and_honest_ones_are_not() {
        let mut rng = StdRng::seed_from_u64(12);
        let window = honest(&mut rng, 8);
        let noise = unit(&mut rng);
        let original = &window[2];
        let scaled: Vec<f64> = original.iter().map(|v| 1.05 * v).collect();
        let noisy: Vec<f64> = original.iter().zip(&noise).map(|(v, n)| v + 0.05 * norm(original) * n).collect();
        let echo: Vec<f64> = (0..LEN).map(|k| window.iter().map(|v| v[k]).sum::<f64>() / 8.0).collect();
        let mut candidates: Vec<CopyCandidate> =
            window.iter().enumerate().map(|(i, v)| cand(i as u16, i as u8, 100 + i as i64, f32s(v))).collect();
        candidates.extend([
            cand(20, 20, 200, f32s(original)), // the same values in another body: a Sybil
            cand(21, 21, 201, f32s(&scaled)),
            cand(22, 22, 202, f32s(&noisy)),
            cand(23, 23, 203, f32s(&echo)),
            cand(24, 2, 204, vec![0.5; LEN]), // the same body as uid 2, other values
        ]);
        let assessed = assess_copies(&candidates);
        let honest_least = (1..8).map(|u| novelty_of(&assessed, u)).fold(f64::INFINITY, f64::min);
        let copies: Vec<f64> = (20..24).map(|u| novelty_of(&assessed, u)).collect();
        assert!(honest_least > 0.75, "{honest_least}");
        assert!(copies[0] < 1e-6 && copies[1] < 1e-6 && copies[3] < 1e-6, "{copies:?}");
        assert!(copies[2] > 0.1 && copies[2] < 0.25, "5% noise on a 20–30% own part: {copies:?}");
        let found = find_copies(&candidates, COPY_NOVELTY);
        let echo_original = found.get(&23).copied();
        assert!(echo_original.is_some_and(|o| o < 8), "the echo copies one of the honest: {found:?}");
        let expected = BTreeMap::from([(20, 2), (21, 2), (22, 2), (23, echo_original.unwrap_or(0)), (24, 2)]);
        assert_eq!(found, expected);
    }

    #[test]
    fn the_first_seen_is_the_original_wherever_it_is_listed() {
        let mut rng = StdRng::seed_from_u64(13);
        let window = honest(&mut rng, 5);
        let copy: Vec<f64> = window[0].iter().map(|v| -0.9 * v).collect();
        // The copier (uid 1, a scaled and negated copy) comes first in the slice and has
        // the smaller UID, yet was first seen after uid 7, whose update it is.
        let candidates = vec![
            cand(1, 1, 5_000, f32s(&copy)),
            cand(2, 2, 1_000, f32s(&window[1])),
            cand(3, 3, 1_000, f32s(&window[2])),
            cand(4, 4, 2_000, f32s(&window[3])),
            cand(7, 7, 4_999, f32s(&window[0])),
        ];
        assert_eq!(find_copies(&candidates, COPY_NOVELTY), BTreeMap::from([(1, 7)]));
        // Seen the other way round, the blame turns.
        let mut swapped = candidates.clone();
        swapped[0].first_seen_ms = 4_000;
        assert_eq!(find_copies(&swapped, COPY_NOVELTY), BTreeMap::from([(7, 1)]));
    }

    #[test]
    fn identical_bodies_seen_together_are_both_flagged_near_copies_seen_together_neither() {
        let mut rng = StdRng::seed_from_u64(14);
        let window = honest(&mut rng, 4);
        let scaled: Vec<f64> = window[0].iter().map(|v| 1.05 * v).collect();
        let candidates = vec![
            cand(5, 9, 10, f32s(&window[0])),
            cand(3, 9, 10, f32s(&window[0])),
            cand(8, 8, 10, f32s(&scaled)),
            cand(1, 1, 10, f32s(&window[1])),
            cand(2, 2, 10, f32s(&window[2])),
        ];
        // Tied in time, nobody is shown to have copied by value: only the shared body counts.
        assert_eq!(find_copies(&candidates, COPY_NOVELTY), BTreeMap::from([(3, 5), (5, 3)]));
        // A later identical body names the first holder.
        let mut later = candidates.clone();
        later.push(cand(9, 9, 11, f32s(&window[3])));
        assert_eq!(find_copies(&later, COPY_NOVELTY).get(&9), Some(&3));
    }

    #[test]
    fn zero_or_non_finite_sketches_only_match_by_bytes() {
        let mut rng = StdRng::seed_from_u64(15);
        let window = honest(&mut rng, 3);
        let mut bad = f32s(&window[0]);
        bad[7] = f32::NAN;
        let candidates = vec![
            cand(0, 1, 1, vec![0.0; LEN]),
            cand(1, 2, 2, vec![0.0; LEN]),
            cand(2, 3, 3, f32s(&window[0])),
            cand(3, 4, 4, bad),
            cand(4, 5, 5, f32s(&window[1])),
            cand(5, 1, 6, vec![0.0; LEN]),
        ];
        let assessed = assess_copies(&candidates);
        assert!(assessed.iter().filter(|a| [0, 1, 3, 5].contains(&a.uid)).all(|a| a.novelty.is_none()));
        assert_eq!(find_copies(&candidates, COPY_NOVELTY), BTreeMap::from([(5, 0)]));
        assert!(find_copies(&[], COPY_NOVELTY).is_empty());
    }

    #[test]
    fn a_minority_cluster_of_noisy_copies_does_not_hide_them() {
        // Few honest candidates and two noisy copies of one of them: the typical own part
        // is a median over the window, so the copies do not set it.
        let mut rng = StdRng::seed_from_u64(16);
        let window = honest(&mut rng, 4);
        let mut candidates: Vec<CopyCandidate> =
            window.iter().enumerate().map(|(i, v)| cand(i as u16, i as u8, i as i64, f32s(v))).collect();
        for (k, uid) in [10u16, 11].into_iter().enumerate() {
            let noise = unit(&mut rng);
            let noisy: Vec<f64> = window[1].iter().zip(&noise).map(|(v, n)| v + 0.05 * norm(&window[1]) * n).collect();
            candidates.push(cand(uid, uid as u8, 10 + k as i64, f32s(&noisy)));
        }
        assert_eq!(find_copies(&candidates, COPY_NOVELTY), BTreeMap::from([(10, 1), (11, 1)]));
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

    #[test]
    fn a_vouched_update_is_a_copy_by_its_bytes_only() {
        let mut rng = StdRng::seed_from_u64(13);
        let window = honest(&mut rng, 6);
        // UID 0 is published first; UID 1 is almost UID 0 (an honest update whose own part
        // is unusually small); UID 6 is a scaled copy of UID 1 and UID 7 its exact copy.
        let mut candidates: Vec<CopyCandidate> =
            window.iter().enumerate().map(|(i, v)| cand(i as u16, i as u8, 10 + i as i64, f32s(v))).collect();
        let mut near = window[0].clone();
        near.iter_mut().zip(&window[1]).for_each(|(a, b)| *a = 0.98 * *a + 0.02 * b);
        candidates[1].sketch = f32s(&near);
        let scaled: Vec<f64> = near.iter().map(|v| v * 1.05).collect();
        candidates.push(cand(6, 6, 100, f32s(&scaled)));
        candidates.push(CopyCandidate { vouched: true, ..cand(7, 1, 101, f32s(&near)) });
        let copies = find_copies(&candidates, COPY_NOVELTY);
        assert_eq!(copies.get(&1), Some(&0), "unvouched: a copy by its values: {copies:?}");
        candidates[1].vouched = true;
        let copies = find_copies(&candidates, COPY_NOVELTY);
        assert!(!copies.contains_key(&1), "vouched: not by its values: {copies:?}");
        assert!(copies.contains_key(&6), "an unvouched scaled copy still is: {copies:?}");
        assert_eq!(copies.get(&7), Some(&1), "same bytes, vouched or not: {copies:?}");
    }
}
