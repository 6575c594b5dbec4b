//! The bound on an update's norm, as the validator scores it: each update clipped exactly
//! as the miners' aggregate will clip it, so a miner gains nothing in its score from an
//! update larger than the network lets through (and an oversized update is judged by
//! what it does once clipped, not by the damage it would do unclipped).

/// Per update, the scale `min(1, factor · m / ‖u‖)` with `m` the lower median of the
/// finite norms (the rule of the aggregate's clip: with two updates the smaller sets the
/// bound). A non-finite norm scales by 0 (its update counts as nothing), a zero norm by
/// 1; a non-finite or non-positive `factor` clips nothing (every finite norm gets 1).
pub fn norm_clip_factors(norms: &[f64], factor: f64) -> Vec<f64> {
    let mut finite: Vec<f64> = norms.iter().copied().filter(|n| n.is_finite()).map(f64::abs).collect();
    finite.sort_by(f64::total_cmp);
    let median = finite.get(finite.len().saturating_sub(1) / 2).copied().unwrap_or(0.0);
    let bound = if factor.is_finite() && factor > 0.0 { factor * median } else { f64::INFINITY };
    norms
        .iter()
        .map(|&n| match n.abs() {
            n if !n.is_finite() => 0.0,
            n if n <= bound => 1.0,
            n => bound / n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_beyond_factor_times_the_median_are_scaled_to_it() {
        let f = norm_clip_factors(&[1.0, 2.0, 3.0, 30.0], 2.0);
        // Lower median of [1, 2, 3, 30] is 2: the bound is 4.
        assert_eq!(f[..3], [1.0, 1.0, 1.0]);
        assert!((f[3] - 4.0 / 30.0).abs() < 1e-15);
        assert!((30.0 * f[3] - 4.0).abs() < 1e-12, "clipped exactly to the bound");
    }

    #[test]
    fn non_finite_norms_count_as_nothing_and_do_not_move_the_median() {
        let f = norm_clip_factors(&[1.0, f64::NAN, 1.0, f64::INFINITY, 10.0], 2.0);
        assert_eq!(f, vec![1.0, 0.0, 1.0, 0.0, 0.2]);
        assert_eq!(norm_clip_factors(&[0.0, 0.0, 5.0], 2.0), vec![1.0, 1.0, 0.0], "a zero median bounds at 0");
        assert!(norm_clip_factors(&[], 2.0).is_empty());
    }

    #[test]
    fn a_meaningless_factor_clips_nothing() {
        for factor in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(norm_clip_factors(&[1.0, 100.0, f64::NAN], factor), vec![1.0, 1.0, 0.0], "{factor}");
        }
    }
}
