//! The streaming mean of a window's slices, with each peer's pull bounded.
//!
//! Slices arrive one at a time (downloaded, decoded, added, dropped), so memory stays one
//! slice plus one accumulator whatever the number of peers. The mean then replaces the
//! model's values at the window's positions (see `extract::apply`); nothing else changes.
//!
//! **Centred norm clipping.** Every reader measures each slice's distance from a centre
//! (its own model's values at the positions for state and seed-exchange slices, zero for
//! updates) and pulls a slice farther than `CLIP_FACTOR ×` the (lower) median distance back
//! to that radius along its own direction ([`clip_scales`], [`MeanAccumulator::add_clipped`]).
//! Assumption: fewer than half of the averaged peers are hostile. Then the median distance
//! is at most some honest peer's, and each hostile peer moves the mean by at most
//! `τ / n` (τ = the clip radius, n = slices averaged) beyond diluting the honest mean —
//! whatever values it sends ([`MAX_ABS_VALUE`](super::wire::MAX_ABS_VALUE) bounds them at
//! decode). A slice within the radius is added as is, so among honest peers the mean is
//! the plain mean, to the bit.

use thiserror::Error;

use super::wire::SliceView;

#[derive(Debug, Error, PartialEq)]
pub enum AggregateError {
    #[error("slice has {found} values, the accumulator {expected}")]
    LengthMismatch { expected: usize, found: usize },
    #[error("the mean is not finite at position {position} ({value}): a slice's values overflowed the sum")]
    NonFiniteMean { position: usize, value: f32 },
}

/// Running sum of slices of one kind and window.
#[derive(Debug, Clone)]
pub struct MeanAccumulator {
    sum: Vec<f32>,
    count: u32,
}

impl MeanAccumulator {
    pub fn new(value_count: usize) -> Self {
        Self { sum: vec![0.0; value_count], count: 0 }
    }

    /// Adds a validated slice.
    pub fn add(&mut self, slice: &SliceView<'_>) -> Result<(), AggregateError> {
        let found = slice.header.value_count as usize;
        if found != self.sum.len() {
            return Err(AggregateError::LengthMismatch { expected: self.sum.len(), found });
        }
        slice.add_into(&mut self.sum);
        self.count += 1;
        Ok(())
    }

    /// Adds `center + scale · (values − center)` (`center` zero when `None`): a slice
    /// pulled back to the clip radius. At `scale ≥ 1` exactly [`Self::add_values`].
    pub fn add_clipped(&mut self, values: &[f32], center: Option<&[f32]>, scale: f32) -> Result<(), AggregateError> {
        if scale >= 1.0 {
            return self.add_values(values);
        }
        if values.len() != self.sum.len() || center.is_some_and(|c| c.len() != self.sum.len()) {
            return Err(AggregateError::LengthMismatch { expected: self.sum.len(), found: values.len() });
        }
        match center {
            Some(center) => {
                self.sum.iter_mut().zip(values.iter().zip(center)).for_each(|(a, (v, c))| *a += c + scale * (v - c))
            }
            None => self.sum.iter_mut().zip(values).for_each(|(a, v)| *a += scale * v),
        }
        self.count += 1;
        Ok(())
    }

    /// Adds raw values (our own slice, which never went through the wire).
    pub fn add_values(&mut self, values: &[f32]) -> Result<(), AggregateError> {
        if values.len() != self.sum.len() {
            return Err(AggregateError::LengthMismatch { expected: self.sum.len(), found: values.len() });
        }
        self.sum.iter_mut().zip(values).for_each(|(a, v)| *a += v);
        self.count += 1;
        Ok(())
    }

    /// How many slices were added.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The mean at every position, or `None` when nothing was added.
    pub fn finish(mut self) -> Option<Vec<f32>> {
        if self.count == 0 {
            return None;
        }
        let inv = 1.0 / self.count as f32;
        self.sum.iter_mut().for_each(|v| *v *= inv);
        Some(self.sum)
    }

    /// [`Self::finish`], refusing a mean that is not finite everywhere (finite slices whose
    /// sum overflows, e.g. two peers' values near ±3.4e38): applying it would make every
    /// later loss non-finite.
    pub fn finish_finite(self) -> Result<Option<Vec<f32>>, AggregateError> {
        let Some(mean) = self.finish() else { return Ok(None) };
        match mean.iter().position(|v| !v.is_finite()) {
            Some(position) => Err(AggregateError::NonFiniteMean { position, value: mean[position] }),
            None => Ok(Some(mean)),
        }
    }
}

/// How far a slice may be from the centre, in (lower) median distances of the window's
/// slices. 2: an honest peer is rarely more than twice as far as the median one (measured
/// on the devnet: the honest spread of update norms stays within ±30% of the median), so
/// honest slices are added as they are while a hostile one counts at most twice a typical
/// peer.
pub const CLIP_FACTOR: f64 = 2.0;

/// Around the reader's own values, while fewer than [`CLIP_QUORUM`] peers' slices are at
/// hand, the radius is also at most this share of their norm: the median is no bound among
/// so few (a real-time window whose only peer slice so far is a poisoner's: it *is* the
/// median, and every honest loss went to 1e7 in a measured devnet run).
pub const CENTRED_RADIUS_CAP: f64 = 0.1;

/// Peers' slices from which their median distance alone sets the radius around the
/// reader's own values. With fewer the cap above applies too. Not always: a reader that
/// does not train (a validator, a node catching up) is farther from every training peer
/// each window, by their training; capped at a tenth of the norm, a validator's distance
/// from the miners grew from 0.28 to 1.68 over 18 windows at fixed compute 8, its radius
/// 0.07 — it no longer followed the network it scores.
pub const CLIP_QUORUM: usize = 3;

/// A state slice farther from the centre than this many clip radii measured among the
/// peers that trained is a fault of its sender, not a disagreement: honest state slices
/// sit within ~1.1 radii on the devnet (the radius being twice their median distance), a
/// poisoner's at 10⁶. Clipped, it moved the mean no more than a near one; the fault is
/// what lets a validator make it cost weight.
pub const FAULT_RADII: f64 = 10.0;

/// Whether a slice at `distance` lies beyond [`FAULT_RADII`] radii of [`CLIP_FACTOR`]
/// times `median` (the training peers' median distance); never when the median is 0
/// (nothing to measure by).
pub fn far_beyond(distance: f64, median: f64) -> bool {
    median > 0.0 && distance > FAULT_RADII * CLIP_FACTOR * median
}

/// [`CENTRED_RADIUS_CAP`] times the norm of the centre.
pub fn centred_cap(center: &[f32]) -> f64 {
    CENTRED_RADIUS_CAP * deviation_norm(center, None)
}

/// The clip radius around the reader's own values `center` given the peers' distances
/// from them (the reader's own slice left out): [`CLIP_FACTOR`] times their lower median,
/// agreeing peers counted, and within [`centred_cap`] below [`CLIP_QUORUM`] peers.
pub fn centred_radius(peer_distances: &[f64], center: &[f32]) -> f64 {
    let radius = clip_radius(peer_distances, CLIP_FACTOR, Zeros::Count);
    if peer_distances.len() < CLIP_QUORUM { radius.min(centred_cap(center)) } else { radius }
}

/// Euclidean distance of `values` from `center` (from zero when `None`), in f64.
pub fn deviation_norm(values: &[f32], center: Option<&[f32]>) -> f64 {
    let squares: f64 = match center {
        Some(center) => values.iter().zip(center).map(|(v, c)| (f64::from(*v) - f64::from(*c)).powi(2)).sum(),
        None => values.iter().map(|v| f64::from(*v).powi(2)).sum(),
    };
    squares.sqrt()
}

/// The clip radius `τ = factor · lower median` of the slices' distances, and each slice's
/// scale `min(1, τ / distance)`. A non-finite distance gets scale 0 (its slice counts as
/// the centre), so no value of one peer can make the mean non-finite.
pub fn clip_scales(distances: &[f64], factor: f64) -> (f64, Vec<f32>) {
    let radius = clip_radius(distances, factor, Zeros::Skip);
    (radius, scales_within(distances, radius))
}

/// Whether zero distances count toward the median.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// Updates (centre zero): a zero update is a lazy peer's, which says nothing of the
    /// step size; left out, so lazy peers cannot shrink the radius to nothing.
    Skip,
    /// Values around the reader's own (state): a zero distance is a peer that agrees
    /// exactly, the best evidence there is; counted, so that when most agree the radius is
    /// ~0 and a lone far slice is pulled to the centre.
    Count,
}

/// `factor ·` the lower median of the finite `distances` (zeros as `zeros` says; 0 when
/// there are none). A
/// reader whose centre is its own model leaves its own slice out of them: it is at
/// distance ~0 from itself and would pull the median, and so the radius, to nothing.
pub fn clip_radius(distances: &[f64], factor: f64, zeros: Zeros) -> f64 {
    let mut finite: Vec<f64> =
        distances.iter().copied().filter(|d| d.is_finite() && (*d > 0.0 || zeros == Zeros::Count)).collect();
    finite.sort_by(f64::total_cmp);
    // The lower median: with two slices, the nearer one sets the radius.
    factor * finite.get(finite.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// Each slice's scale `min(1, radius / distance)`; 0 for a non-finite distance, and for
/// any distance beyond a radius of 0 (the others all agree with the centre: the slice is
/// pulled onto it). A measured real-time devnet run without this: the honest miners' states
/// agreed with their own to the bit after a window none of them trained, a poisoner's
/// slice set the median alone, and every honest loss went to 1e7.
pub fn scales_within(distances: &[f64], radius: f64) -> Vec<f32> {
    distances
        .iter()
        .map(|&d| match d {
            d if !d.is_finite() => 0.0,
            d if d <= radius => 1.0,
            _ if radius <= 0.0 => 0.0,
            d => (radius / d) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hotkey::dev_keypair;
    use crate::model::ModelFingerprint;
    use crate::slice::key::SliceKind;
    use crate::slice::wire::{Dtype, Expected, SliceMeta, decode, encode};

    const N: usize = 1000;

    fn meta(dtype: Dtype) -> SliceMeta {
        SliceMeta {
            kind: SliceKind::State,
            window: 3,
            fingerprint: ModelFingerprint([9; 32]),
            compression: 10,
            dtype,
            version: 1,
        }
    }

    fn expected() -> Expected<'static> {
        Expected {
            kind: SliceKind::State,
            window: 3,
            hotkey: None,
            registered: None,
            fingerprint: ModelFingerprint([9; 32]),
            compression: 10,
            value_count: N,
            version: 1,
            max_abs: crate::slice::MAX_ABS_VALUE,
        }
    }

    #[test]
    fn mean_of_streamed_slices_is_the_mean_at_every_position() {
        let peers = ["Alice", "Bob", "Charlie", "Dave"];
        let values: Vec<Vec<f32>> =
            (0..peers.len()).map(|p| (0..N).map(|i| (i * (p + 1)) as f32 * 0.25 - 7.0).collect()).collect();
        let mut acc = MeanAccumulator::new(N);
        for (peer, v) in peers.iter().zip(&values) {
            // One slice in memory at a time: encode, decode, add, drop.
            let bytes = encode(meta(Dtype::F32), v, &dev_keypair(peer).unwrap()).unwrap();
            acc.add(&decode(&bytes, &expected()).unwrap()).unwrap();
        }
        assert_eq!(acc.count(), 4);
        let mean = acc.finish().unwrap();
        for i in 0..N {
            let want = values.iter().map(|v| v[i]).sum::<f32>() / 4.0;
            assert!((mean[i] - want).abs() <= 1e-5 * want.abs().max(1.0), "{i}: {} vs {want}", mean[i]);
        }
    }

    #[test]
    fn bf16_and_f32_slices_mix_in_one_mean() {
        let a: Vec<f32> = vec![1.0; N];
        let b: Vec<f32> = vec![3.0; N];
        let mut acc = MeanAccumulator::new(N);
        let bytes_a = encode(meta(Dtype::F32), &a, &dev_keypair("Alice").unwrap()).unwrap();
        let bytes_b = encode(meta(Dtype::Bf16), &b, &dev_keypair("Bob").unwrap()).unwrap();
        acc.add(&decode(&bytes_a, &expected()).unwrap()).unwrap();
        acc.add(&decode(&bytes_b, &expected()).unwrap()).unwrap();
        acc.add_values(&[5.0; N]).unwrap();
        assert_eq!(acc.finish().unwrap(), vec![3.0; N]);
    }

    #[test]
    fn empty_accumulator_has_no_mean_and_lengths_must_match() {
        assert_eq!(MeanAccumulator::new(5).finish(), None);
        let mut acc = MeanAccumulator::new(5);
        assert_eq!(acc.add_values(&[1.0; 4]), Err(AggregateError::LengthMismatch { expected: 5, found: 4 }));
        let bytes = encode(meta(Dtype::F32), &[1.0; N], &dev_keypair("Alice").unwrap()).unwrap();
        let view = decode(&bytes, &expected()).unwrap();
        assert_eq!(acc.add(&view), Err(AggregateError::LengthMismatch { expected: 5, found: N }));
        assert_eq!(acc.count(), 0);
    }

    #[test]
    fn a_mean_that_overflows_is_refused_and_a_finite_one_kept() {
        let mut acc = MeanAccumulator::new(4);
        acc.add_values(&[1.0, f32::MAX, 0.0, 2.0]).unwrap();
        acc.add_values(&[3.0, f32::MAX, 0.0, 2.0]).unwrap();
        assert_eq!(
            acc.finish_finite(),
            Err(AggregateError::NonFiniteMean { position: 1, value: f32::INFINITY }),
            "two finite values near the f32 limit sum to inf"
        );
        let mut acc = MeanAccumulator::new(2);
        acc.add_values(&[1.0, -3.0e38]).unwrap();
        acc.add_values(&[3.0, 3.0e38]).unwrap();
        assert_eq!(acc.finish_finite(), Ok(Some(vec![2.0, 0.0])));
        assert_eq!(MeanAccumulator::new(2).finish_finite(), Ok(None));
    }
}

#[cfg(test)]
mod clipping {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const LEN: usize = 512;

    /// The clipped mean of `slices` around `center`, as a reader computes it.
    fn clipped_mean(slices: &[Vec<f32>], center: Option<&[f32]>) -> Vec<f32> {
        let distances: Vec<f64> = slices.iter().map(|s| deviation_norm(s, center)).collect();
        let (_, scales) = clip_scales(&distances, CLIP_FACTOR);
        let mut acc = MeanAccumulator::new(LEN);
        for (slice, scale) in slices.iter().zip(scales) {
            acc.add_clipped(slice, center, scale).unwrap();
        }
        acc.finish_finite().unwrap().unwrap()
    }

    fn distance(a: &[f32], b: &[f32]) -> f64 {
        deviation_norm(a, Some(b))
    }

    /// Every hostile pattern we could think of, against `n` honest slices around `center`.
    fn hostile_patterns(honest: &[f32], rng: &mut StdRng) -> Vec<(&'static str, Vec<f32>)> {
        let max = crate::slice::wire::MAX_ABS_VALUE;
        vec![
            ("all at the magnitude bound", vec![max; LEN]),
            ("alternating ± bound", (0..LEN).map(|i| if i % 2 == 0 { max } else { -max }).collect()),
            ("one spike", (0..LEN).map(|i| if i == 17 { max } else { honest[i] }).collect()),
            ("honest × −1000", honest.iter().map(|v| -1000.0 * v).collect()),
            ("honest × 50", honest.iter().map(|v| 50.0 * v).collect()),
            ("zeros", vec![0.0; LEN]),
            ("random ±1", (0..LEN).map(|_| rng.random_range(-1.0f32..1.0)).collect()),
        ]
    }

    #[test]
    fn one_hostile_slice_moves_the_mean_at_most_its_share_of_the_radius() {
        let mut rng = StdRng::seed_from_u64(7);
        for centred in [false, true] {
            let center: Vec<f32> = (0..LEN).map(|_| rng.random_range(-0.1f32..0.1)).collect();
            let c = centred.then_some(center.as_slice());
            for n_honest in [2usize, 3, 5, 9] {
                let common: Vec<f32> = (0..LEN).map(|_| rng.random_range(-1e-3f32..1e-3)).collect();
                let honest: Vec<Vec<f32>> = (0..n_honest)
                    .map(|_| {
                        let base = c.map_or(vec![0.0; LEN], <[f32]>::to_vec);
                        base.iter().zip(&common).map(|(b, m)| b + m + rng.random_range(-1e-3f32..1e-3)).collect()
                    })
                    .collect();
                let honest_mean = clipped_mean(&honest, c);
                let radius = CLIP_FACTOR * honest.iter().map(|h| deviation_norm(h, c)).fold(0.0, f64::max);
                for (name, hostile) in hostile_patterns(&honest[0], &mut rng) {
                    let mut all = honest.clone();
                    all.push(hostile);
                    let n = all.len() as f64;
                    let mean = clipped_mean(&all, c);
                    // The hostile slice: at most τ from the centre, over n; the honest mean
                    // diluted by 1/n.
                    let own_distance = deviation_norm(&honest_mean, c);
                    let bound = (radius + own_distance) / n * 1.0001 + 1e-6;
                    let moved = distance(&mean, &honest_mean);
                    assert!(moved <= bound, "{name}, {n_honest} honest, centred {centred}: moved {moved} > {bound}");
                }
            }
        }
    }

    #[test]
    fn honest_slices_within_the_radius_give_the_plain_mean_to_the_bit() {
        let slices: Vec<Vec<f32>> =
            (0..4).map(|p| (0..LEN).map(|i| ((i * (p + 3)) % 11) as f32 * 0.01).collect()).collect();
        let mut plain = MeanAccumulator::new(LEN);
        slices.iter().for_each(|s| plain.add_values(s).unwrap());
        let center = vec![0.05f32; LEN];
        assert_eq!(clipped_mean(&slices, Some(&center)), plain.finish().unwrap());
    }

    #[test]
    fn clip_scales_use_the_lower_median_and_zero_a_non_finite_distance() {
        let (radius, scales) = clip_scales(&[1.0, 3.0, 100.0, f64::INFINITY], 2.0);
        assert_eq!(radius, 6.0, "lower median of the finite distances (3.0) × 2");
        assert_eq!(scales, vec![1.0, 1.0, 0.06, 0.0]);
        let (radius, scales) = clip_scales(&[4.0, 1.0], 2.0);
        assert_eq!((radius, scales), (2.0, vec![0.5, 1.0]), "with two, the nearer sets the radius");
        assert_eq!(clip_scales(&[], 2.0), (0.0, vec![]));
        assert_eq!(scales_within(&[0.0, 5.0], 0.0), vec![1.0, 0.0], "a radius of 0: a far slice goes to the centre");
        assert_eq!(clip_radius(&[0.0, 5.0, 7.0], 2.0, Zeros::Skip), 10.0);
        assert_eq!(clip_radius(&[0.0, 0.0, 0.0, 5.0, 7.0, 1e9], 2.0, Zeros::Skip), 14.0, "lazy zeros left out");
        assert_eq!(clip_radius(&[0.0, 0.0, 1e4], 2.0, Zeros::Count), 0.0, "agreeing peers count");
        assert_eq!(
            clip_radius(&[5.0, 7.0], 2.0, Zeros::Skip),
            10.0,
            "the own slice left out: the peers set the radius"
        );
    }
}
