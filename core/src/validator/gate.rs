//! The significance gate: is a miner's update measurably better on its own data than on
//! the validator's secret random data, window after window?
//!
//! Per UID the validator keeps exponentially decayed moments of `d = own − random`
//! improvement ([`Specificity`]) and tests `mean(d) > 0` with a one-sided z statistic. The
//! test uses nothing of other miners, so no group of Sybils can move anyone's gate; and it
//! is scale free, so a miner cannot pass it by making its updates larger, only by training
//! on its own pages.

use serde::{Deserialize, Serialize};

/// Windows a miner must have been measured in (scored or caught copying) before its gate
/// can open: below 5 samples the sample deviation is too unreliable (a t statistic with 4
/// degrees of freedom exceeds [`GATE_Z_OPEN`] = 3 by chance 2% of the time, with 2 degrees
/// 5%, against 0.1% for a normal one).
pub const GATE_MIN_WINDOWS: u64 = 5;

/// z from which the gate starts to open. Under the null (a miner not trained on its own
/// pages, mean d = 0) z is about standard normal: over 2000 simulated random-pages miners
/// 1.9% end above 2, 0.2% above 3. Measured on the devnet (fixed compute 1, seed 5, 20
/// windows): honest miners' z 2.5–3.5, a random-pages miner's −0.8, so 3 would shut
/// honest miners out for their first tens of windows; at 2 a null miner is paid in part
/// one time in fifty, and then only by its (honest-sized) random improvement.
pub const GATE_Z_OPEN: f64 = 2.0;

/// z from which the gate is fully open (3: no simulated null miner's z reached 3.5).
pub const GATE_Z_FULL: f64 = 3.0;

/// Least standard deviation of d, in loss units: f32 losses of order 1 resolve ~1e-7, so
/// a spread below 1e-9 is an artefact (an exactly constant d), not a measurement.
const STD_FLOOR_ABS: f64 = 1e-9;

/// Least standard deviation of d relative to |mean(d)|: no loss evaluation repeats to
/// better than 1%, and the floor keeps z finite (≤ 100·√n_eff) for a constant d.
const STD_FLOOR_REL: f64 = 1e-2;

/// A copier's window counts as `d = −max(rms(d), COPY_D_MIN)`: as far below zero as the
/// miner's windows usually are from zero (so a habitual copier's mean is negative and an
/// occasional one's z drops), and 0.05 when it has none (`d` is relative, in [−1, 1]: an
/// honest miner's is ~0.05 on the devnet).
const COPY_D_MIN: f64 = 0.05;

/// The most `indicator_alpha` the decay takes: at 0.5 the test already remembers only
/// 3 effective windows (`n_eff → (2 − α)/α`), above it too few for a deviation.
const ALPHA_MAX: f64 = 0.5;

/// Exponentially decayed moments of `d`, kept in the numerically stable form (weighted
/// mean and sum of squared deviations, West 1979) rather than as raw `Σw·d, Σw·d²` whose
/// difference cancels when the spread is small next to the mean. Equivalent sums:
/// `S0 = weight`, `S1 = weight·mean`, `S2 = m2 + weight·mean²`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Specificity {
    /// `Σ w`: the decayed count of windows.
    pub weight: f64,
    /// `Σ w²`: with `weight`, the effective sample size `(Σw)² / Σw²`.
    pub weight_sq: f64,
    /// `Σ w·d / Σ w`.
    pub mean: f64,
    /// `Σ w·(d − mean)²`.
    pub m2: f64,
}

impl Specificity {
    /// Decays the past by `1 − alpha` (alpha at most `ALPHA_MAX`) and adds `d` with
    /// weight 1. A non-finite `d` is not added (the caller maps it to a penalty first).
    pub fn add(&mut self, d: f64, alpha: f64) {
        if !d.is_finite() {
            return;
        }
        let decay = 1.0 - alpha.clamp(0.0, ALPHA_MAX);
        self.weight = decay * self.weight + 1.0;
        self.weight_sq = decay * decay * self.weight_sq + 1.0;
        self.m2 *= decay;
        let delta = d - self.mean;
        self.mean += delta / self.weight;
        self.m2 = (self.m2 + delta * (d - self.mean)).max(0.0);
    }

    /// The effective number of windows `(Σw)² / Σw²` (Kish): the `n` of the mean's
    /// standard error `std / √n` under exponential weights.
    pub fn n_eff(&self) -> f64 {
        if self.weight_sq > 0.0 { self.weight * self.weight / self.weight_sq } else { 0.0 }
    }

    /// Root mean square of d: the miner's usual distance of d from zero.
    pub fn rms(&self) -> f64 {
        if self.weight > 0.0 { (self.m2 / self.weight + self.mean * self.mean).sqrt() } else { 0.0 }
    }

    /// `mean / (std / √n_eff)`, std the unbiased weighted deviation floored at
    /// `STD_FLOOR_ABS` and `STD_FLOOR_REL``·|mean|`; 0 without two effective windows
    /// or when anything is non-finite.
    pub fn z(&self) -> f64 {
        let n = self.n_eff();
        let measurable = n > 1.0 + 1e-9 && self.weight > 0.0;
        if !measurable {
            return 0.0;
        }
        let var = self.m2 / self.weight * n / (n - 1.0);
        let std = var.max(0.0).sqrt().max(STD_FLOOR_ABS).max(STD_FLOOR_REL * self.mean.abs());
        let z = self.mean * n.sqrt() / std;
        if z.is_finite() { z } else { 0.0 }
    }

    /// The `d` a copier's window counts as: see `COPY_D_MIN`.
    pub fn copy_penalty(&self) -> f64 {
        -self.rms().max(COPY_D_MIN)
    }

    pub fn is_finite(&self) -> bool {
        [self.weight, self.weight_sq, self.mean, self.m2].iter().all(|v| v.is_finite())
    }
}

/// The weak-signal gate: shut before [`GATE_MIN_WINDOWS`] measured windows, then linear in
/// z from 0 (shut) to [`GATE_Z_OPEN`] (open): a miner whose own data fares no better than
/// random data gets nothing, one with any positive evidence is paid in proportion.
pub fn weak_gate(z: f64, windows: u64) -> f64 {
    if windows < GATE_MIN_WINDOWS || !z.is_finite() {
        return 0.0;
    }
    (z / GATE_Z_OPEN).clamp(0.0, 1.0)
}

/// The gate in [0, 1]: shut before [`GATE_MIN_WINDOWS`] measured windows, then linear in
/// `z` from [`GATE_Z_OPEN`] (shut) to [`GATE_Z_FULL`] (open).
pub fn gate(z: f64, windows: u64) -> f64 {
    if windows < GATE_MIN_WINDOWS || !z.is_finite() {
        return 0.0;
    }
    ((z - GATE_Z_OPEN) / (GATE_Z_FULL - GATE_Z_OPEN)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ds: &[f64], alpha: f64) -> Specificity {
        let mut s = Specificity::default();
        for &d in ds {
            s.add(d, alpha);
        }
        s
    }

    #[test]
    fn the_moments_equal_the_direct_weighted_sums() {
        let ds = [0.3, -0.1, 0.7, 0.2, 0.25, -0.4, 0.9];
        let alpha = 0.2;
        let s = of(&ds, alpha);
        let w: Vec<f64> = (0..ds.len()).map(|i| (1.0 - alpha).powi((ds.len() - 1 - i) as i32)).collect();
        let s0: f64 = w.iter().sum();
        let s1: f64 = w.iter().zip(&ds).map(|(w, d)| w * d).sum();
        let s2: f64 = w.iter().zip(&ds).map(|(w, d)| w * d * d).sum();
        let w2: f64 = w.iter().map(|w| w * w).sum();
        assert!((s.weight - s0).abs() < 1e-12 && (s.weight_sq - w2).abs() < 1e-12);
        assert!((s.mean - s1 / s0).abs() < 1e-12);
        assert!((s.m2 - (s2 - s1 * s1 / s0)).abs() < 1e-12);
    }

    #[test]
    fn a_constant_d_gives_a_large_finite_z_and_zero_gives_zero() {
        let s = of(&[0.004; 10], 0.1);
        assert!(s.z().is_finite() && s.z() > 100.0, "{}", s.z());
        assert_eq!(of(&[0.0; 10], 0.1).z(), 0.0);
        assert!(of(&[-0.004; 10], 0.1).z() < -100.0);
        assert_eq!(of(&[0.5], 0.1).z(), 0.0, "one window has no deviation");
    }

    #[test]
    fn the_effective_count_saturates_at_the_memory_of_the_decay() {
        let s = of(&[1.0; 800], 0.05);
        assert!((s.n_eff() - 39.0).abs() < 1e-6, "(2 − α)/α = 39: {}", s.n_eff());
        let s = of(&[1.0; 500], 1.0);
        assert!((s.n_eff() - 3.0).abs() < 1e-6, "alpha is capped at 0.5: {}", s.n_eff());
    }

    #[test]
    fn non_finite_samples_are_not_added() {
        let mut s = of(&[0.1, 0.2], 0.1);
        let before = s;
        s.add(f64::NAN, 0.1);
        s.add(f64::INFINITY, 0.1);
        assert_eq!(s, before);
    }

    #[test]
    fn the_gate_needs_windows_and_opens_linearly_in_z() {
        assert_eq!(gate(10.0, GATE_MIN_WINDOWS - 1), 0.0);
        assert_eq!(gate(GATE_Z_OPEN, GATE_MIN_WINDOWS), 0.0);
        assert!((gate(0.5 * (GATE_Z_OPEN + GATE_Z_FULL), 99) - 0.5).abs() < 1e-12);
        assert_eq!(gate(GATE_Z_FULL + 5.0, 99), 1.0);
        assert_eq!(gate(f64::NAN, 99), 0.0);
    }

    #[test]
    fn a_copy_penalty_is_as_negative_as_the_miner_usually_is_positive() {
        let s = of(&[0.06; 8], 0.1);
        assert!((s.copy_penalty() + 0.06).abs() < 1e-12);
        assert_eq!(Specificity::default().copy_penalty(), -COPY_D_MIN);
    }
}
