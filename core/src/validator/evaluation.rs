//! What the validator measures of one miner's update in one window, and the specificity
//! `d` the significance gate ([`super::gate`]) tests: did the update serve the miner's
//! own micro-batches better than data it was not given?

/// A window score is a loss difference; one update cannot honestly move the loss by more
/// than this, so larger values (or non-finite ones, which count as −this) are clamped
/// rather than allowed to dominate the moving average.
pub const SCORE_LIMIT: f64 = 1.0;

/// The most the control's scale `s` (the miner's random improvement over the consensus
/// update's) may be for the control to be used: beyond it the consensus barely moved the
/// random loss, `s` is a ratio of noise, and `d` falls back to own against random.
const CONTROL_SCALE_MAX: f64 = 10.0;

/// `x` clamped to ±[`SCORE_LIMIT`]; a non-finite `x` is −[`SCORE_LIMIT`] (an update whose
/// loss cannot be measured is treated as the worst one).
pub(crate) fn clamp_score(x: f64) -> f64 {
    if x.is_finite() { x.clamp(-SCORE_LIMIT, SCORE_LIMIT) } else { -SCORE_LIMIT }
}

/// The losses measured for one miner's update of one window, before and after applying
/// it to the validator's model, on the miner's own data and on random data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub own_before: f64,
    pub own_after: f64,
    pub random_before: f64,
    pub random_after: f64,
    /// The same batches under the consensus of the other miners' updates, where there was
    /// one: see [`Evaluation::specificity`].
    pub control: Option<Control>,
}

/// Losses after the *consensus* update instead of the miner's: the miner's own batches and
/// the random ones under the mean of the other scored miners' updates (none of which
/// trained on either). Both start from `own_before` and `random_before`. The same mean on
/// both sides: measuring the random batches under the mean of all instead biased every
/// miner's `d` upwards (a random-pages miner reached z 12 at fixed compute 8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Control {
    pub own_after: f64,
    pub random_after: f64,
}

impl Evaluation {
    pub fn own_improvement(&self) -> f64 {
        self.own_before - self.own_after
    }

    pub fn random_improvement(&self) -> f64 {
        self.random_before - self.random_after
    }

    /// The evaluation of an update `norm_ratio` times the window's median update norm:
    /// both improvements divided by `max(1, norm_ratio)²`. An update inflated k times
    /// beyond the typical one (an overfitter's, a scaled copy's) pulls the network's mean
    /// by more than its share; its first-order gain grows at most k-fold, so it is paid at
    /// most 1/k of it, and inflating never pays (measured on the devnet: an overfitter
    /// publishing 4× its update kept 8.5% of the weight when paid per norm, k¹). A
    /// typical or smaller update is unchanged. The control is the consensus's, unscaled.
    pub fn per_norm(self, norm_ratio: f64) -> Self {
        let k = if norm_ratio.is_finite() { norm_ratio.max(1.0).powi(2) } else { f64::INFINITY };
        Self {
            own_after: self.own_before - self.own_improvement() / k,
            random_after: self.random_before - self.random_improvement() / k,
            ..self
        }
    }

    /// The gate's `d` in [−1, 1]; −1 when the update's losses cannot be measured.
    ///
    /// With a control: the miner's own improvement against what an update with its random
    /// improvement but no knowledge of its batches would have done there, `s·own_ref` with
    /// `s = random / random_ref`. Most of a batch's improvement is the part every update
    /// shares (how well the batch aligns with the common descent direction); it is the
    /// same under the consensus, so it cancels here, where own against random leaves it as
    /// noise. An update that is `s` times the consensus scores exactly 0. Measured on the
    /// devnet at 8 micro-batches per window (one optimiser step over 8 batches, each
    /// batch's own share of it an eighth): honest z 3.1–3.9 after 18 windows with the
    /// control, 0.5–1.3 without (design §10).
    ///
    /// Without one (no other update, or a consensus that did not move the random loss):
    /// [`relative_specificity`] of own against random.
    pub fn specificity(&self) -> f64 {
        let (own, random) = (self.own_improvement(), self.random_improvement());
        if !(own.is_finite() && random.is_finite()) {
            return -1.0;
        }
        let (own, random) = (clamp_score(own), clamp_score(random));
        let controlled = self.control.and_then(|c| {
            let own_ref = self.own_before - c.own_after;
            let random_ref = self.random_before - c.random_after;
            let usable = own_ref.is_finite() && random_ref.is_finite() && random_ref > 0.0;
            let scale = if usable { random / random_ref } else { f64::NAN };
            (scale.abs() <= CONTROL_SCALE_MAX).then(|| relative_specificity(own, scale * clamp_score(own_ref)))
        });
        controlled.unwrap_or_else(|| relative_specificity(own, random))
    }
}

/// How much more an update improved the miner's own batches than random ones, relative to
/// both, in [−1, 1]: a scale-free `d` for the gate. Raw differences shrink tenfold as the
/// loss flattens over training, so early windows' large ones would dominate the variance
/// and hold an honest miner's z down (measured on the devnet, seed 3: honest z 2.0 and a
/// random-pages miner 1.6 after 18 windows on raw differences).
pub fn relative_specificity(own: f64, random: f64) -> f64 {
    let scale = own.abs() + random.abs();
    if scale > f64::EPSILON { ((own - random) / scale).clamp(-1.0, 1.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::{Control, Evaluation};

    fn eval(own_after: f64, random_after: f64, control: Option<(f64, f64)>) -> Evaluation {
        Evaluation {
            own_before: 5.0,
            own_after,
            random_before: 5.0,
            random_after,
            control: control.map(|(own_after, random_after)| Control { own_after, random_after }),
        }
    }

    #[test]
    fn an_update_beyond_the_median_norm_is_paid_per_norm_and_a_typical_one_in_full() {
        let eval = eval(4.0, 4.6, None);
        assert_eq!(eval.per_norm(0.7), eval, "at or under the median: unchanged");
        let big = eval.per_norm(2.0);
        assert!((big.own_improvement() - 0.25).abs() < 1e-12 && (big.random_improvement() - 0.1).abs() < 1e-12);
        assert_eq!(eval.per_norm(f64::NAN).random_improvement(), 0.0, "an unmeasurable norm earns nothing");
    }

    #[test]
    fn the_control_cancels_what_every_update_shares_and_keeps_what_only_own_training_adds() {
        // The miner's own batches happen to align well with the common direction: they
        // improve by 0.3 under the consensus, which improves random batches by 0.1.
        // A miner whose update is twice the consensus (random 0.2, own 0.6) has d = 0;
        // own against random would have called it specific (0.6 against 0.2).
        let generic = eval(4.4, 4.8, Some((4.7, 4.9)));
        assert!(generic.specificity().abs() < 1e-12, "{}", generic.specificity());
        assert!((generic.per_norm(3.0).specificity()).abs() < 1e-12, "scale free");
        let uncontrolled = eval(4.4, 4.8, None);
        assert!(uncontrolled.specificity() > 0.4);
        // One that did train on them: 0.2 more on its own batches than its scale explains.
        let honest = eval(4.2, 4.8, Some((4.7, 4.9)));
        assert!((honest.specificity() - 0.2 / 1.4).abs() < 1e-12, "{}", honest.specificity());
    }

    #[test]
    fn a_control_that_cannot_scale_falls_back_to_own_against_random() {
        for control in [(4.7, 5.0), (4.7, 5.1), (4.7, 4.999), (f64::NAN, 4.9)] {
            let e = eval(4.2, 4.8, Some(control));
            assert_eq!(e.specificity(), eval(4.2, 4.8, None).specificity(), "{control:?}");
        }
        assert_eq!(eval(f64::NAN, 4.8, Some((4.7, 4.9))).specificity(), -1.0, "unmeasurable");
    }
}
