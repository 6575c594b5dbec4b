//! The devnet's check: each honest miner's loss fell (or, resumed, did not rise), it read
//! its peers' slices, and the exchanging miners ended below the baseline. Each failure is a
//! reason; the check passes with none.

use tessera_actors::devnet::Role;

use super::report::MinerRun;
use super::summary::{GroupComparison, LossFigures, mean};

/// A miner resumed from `--state-dir` (perhaps converged) fails only when its loss ends
/// above `start * RESUMED_RISE_FACTOR + RESUMED_RISE_SLACK`.
const RESUMED_RISE_FACTOR: f32 = 1.05;
const RESUMED_RISE_SLACK: f32 = 0.02;
/// Losses averaged for the end of a miner's curve (its start is the first alone).
const END_WINDOWS: usize = 2;
/// Slices a window averages once it read a peer's (the own slice is one).
const WITH_A_PEER: u32 = 2;

/// The reasons the exchanging miners fail the check, in the order of `runs`; the baseline
/// and the adversaries are not judged here.
pub fn judge_miners(runs: &[MinerRun]) -> Vec<String> {
    let judged = runs.iter().filter(|r| !matches!(r.role, Role::Baseline | Role::Ideal) && !r.role.is_adversary());
    judged
        .flat_map(|run| {
            // Only miners of one exchange read each other: a group of one has no peer to average.
            let group = runs.iter().filter(|r| r.role == run.role).count();
            judge_loss(run).into_iter().chain(judge_averaging(run, group))
        })
        .collect()
}

/// Whether the miner's loss fell: on held-out loss when evaluated twice or more, else on the
/// training loss; resumed, that it did not rise.
fn judge_loss(run: &MinerRun) -> Option<String> {
    let LossFigures { losses, evals, .. } = LossFigures::of(&run.windows);
    let (label, curve) = if evals.len() >= 2 { ("held-out loss", &evals) } else { ("loss", &losses) };
    let start = mean(curve.iter().take(1));
    let end = mean(curve.iter().rev().take(END_WINDOWS));
    let name = &run.name;
    if curve.len() < 2 {
        Some(format!("{name}: too few windows to judge"))
    } else if run.resumed {
        (end > start * RESUMED_RISE_FACTOR + RESUMED_RISE_SLACK)
            .then(|| format!("{name}: the {label} rose after resuming ({start:.3} -> {end:.3})"))
    } else {
        (end >= start).then(|| format!("{name}: the {label} did not fall ({start:.3} -> {end:.3})"))
    }
}

/// Under a compressed exchange every exchanging miner must hold the same model after each
/// window's outer step: the windows whose fingerprints differ among them, and how many
/// windows were compared (all of them reported one).
pub fn fingerprints(runs: &[MinerRun]) -> (Vec<u64>, usize) {
    let group: Vec<&MinerRun> = runs.iter().filter(|r| r.role == Role::Exchanging).collect();
    let mut by_window: std::collections::BTreeMap<u64, Vec<Option<u64>>> = Default::default();
    for run in &group {
        for w in &run.windows {
            by_window.entry(w.window).or_default().push(w.model_hash);
        }
    }
    let complete: Vec<(u64, Vec<u64>)> = by_window
        .into_iter()
        .filter_map(|(w, hashes)| {
            let hashes: Option<Vec<u64>> = hashes.into_iter().collect();
            hashes.filter(|h| h.len() == group.len() && h.len() > 1).map(|h| (w, h))
        })
        .collect();
    let differing = complete.iter().filter(|(_, h)| h.iter().any(|x| *x != h[0])).map(|(w, _)| *w).collect();
    (differing, complete.len())
}

/// The check's reason when the exchanging miners' models differed in some window.
pub fn judge_fingerprints(runs: &[MinerRun]) -> Option<String> {
    let (differing, compared) = fingerprints(runs);
    (!differing.is_empty()).then(|| {
        format!(
            "the exchanging miners' models differed after the outer step in {} of {compared} windows (first: window {})",
            differing.len(),
            differing[0]
        )
    })
}

/// Whether a miner with peers (`group` miners of its exchange) ever averaged a peer's slice.
fn judge_averaging(run: &MinerRun, group: usize) -> Option<String> {
    let averaged = run.windows.iter().any(|w| w.state_slices >= WITH_A_PEER || w.delta_slices >= WITH_A_PEER);
    (group > 1 && !averaged).then(|| format!("{}: never averaged a peer's slice", run.name))
}

/// Whether the exchanging miners ended below the baseline's held-out loss. A resumed run
/// (`fresh` false) judges only the windows since the restart: no verdict on them.
pub fn judge_against_baseline(comparisons: &[GroupComparison], fresh: bool) -> Option<String> {
    let exchanging = comparisons.iter().find(|g| g.role == Role::Exchanging)?;
    let c = &exchanging.comparison;
    (fresh && c.group_final >= c.target).then(|| {
        format!(
            "the exchanging miners ended at a held-out loss of {:.3}, not below the baseline's {:.3}",
            c.group_final, c.target
        )
    })
}

/// How far above the ideal miner's final held-out loss the exchanging miners may end (a
/// fraction of it) for `--check`: a short run's check of direction, not the target. Set by
/// measurement (docs/DESIGN.md §12): SparseLoCo's miners end 21–33% above the ideal after
/// 40 windows of 8 inner steps on seeds 0–4; the target (at most 5%) is not met.
pub const IDEAL_LOSS_MARGIN: f32 = 0.35;

/// Whether the exchanging miners ended within [`IDEAL_LOSS_MARGIN`] of the ideal miner's
/// held-out loss (fresh runs with an ideal miner only).
pub fn judge_against_ideal(comparisons: &[GroupComparison], fresh: bool) -> Option<String> {
    let find = |role| comparisons.iter().find(|g| g.role == role).map(|g| g.comparison.group_final);
    let (exchanging, ideal) = (find(Role::Exchanging)?, find(Role::Ideal)?);
    let limit = ideal * (1.0 + IDEAL_LOSS_MARGIN);
    // A NaN loss fails too.
    let within = exchanging.partial_cmp(&limit).is_some_and(|o| o.is_le());
    (fresh && !within).then(|| {
        format!(
            "the exchanging miners ended at a held-out loss of {exchanging:.3}, more than {:.0}% above the ideal miner's {ideal:.3}",
            IDEAL_LOSS_MARGIN * 100.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::report::Comparison;
    use super::super::table::SliceCounts;
    use super::super::table::tests::window;
    use super::*;
    use tessera_actors::devnet::Adversary;

    fn run(name: &str, role: Role, heldout: &[f32], averaged: (u32, u32)) -> MinerRun {
        let windows = heldout.iter().enumerate().map(|(i, &l)| window(i as u64, l + 0.5, Some(l), averaged)).collect();
        MinerRun {
            name: name.into(),
            role,
            exchange: "update".into(),
            windows,
            slices: SliceCounts::default(),
            restarts: 0,
            resumed: false,
        }
    }

    #[test]
    fn honest_miners_must_learn_and_read_their_peers() {
        let good = [
            run("miner1", Role::Exchanging, &[3.0, 2.5, 2.0], (3, 3)),
            run("miner2", Role::Exchanging, &[3.0, 2.4, 2.1], (2, 1)),
        ];
        assert!(judge_miners(&good).is_empty(), "{:?}", judge_miners(&good));
        let stuck = [
            run("miner1", Role::Exchanging, &[3.0, 3.1, 3.2], (1, 1)),
            run("miner2", Role::Exchanging, &[3.0], (1, 1)),
            // Not judged: they are there to be compared or caught.
            run("baseline1", Role::Baseline, &[3.0, 3.5], (1, 1)),
            run("lazy1", Role::Adversary(Adversary::Lazy), &[3.0, 3.5], (1, 1)),
            // Alone on its exchange: nobody to average with.
            run("seedx1", Role::SeedExchange, &[3.0, 2.0], (1, 1)),
        ];
        assert_eq!(
            judge_miners(&stuck),
            [
                "miner1: the held-out loss did not fall (3.000 -> 3.150)",
                "miner1: never averaged a peer's slice",
                "miner2: too few windows to judge",
                "miner2: never averaged a peer's slice",
            ]
        );
    }

    #[test]
    fn a_resumed_miner_may_stay_flat_but_not_rise() {
        let mut flat = run("miner1", Role::Exchanging, &[2.0, 2.05, 2.1], (2, 2));
        flat.resumed = true;
        assert_eq!(judge_loss(&flat), None, "within 5% + 0.02");
        let mut rising = run("miner1", Role::Exchanging, &[2.0, 2.3, 2.4], (2, 2));
        rising.resumed = true;
        assert_eq!(judge_loss(&rising).unwrap(), "miner1: the held-out loss rose after resuming (2.000 -> 2.350)");
    }

    /// A group that ended at `group_final` against a baseline target of 2.0.
    fn group(role: Role, group_final: f32) -> GroupComparison {
        GroupComparison {
            role,
            exchange: "update".into(),
            comparison: Comparison {
                target: 2.0,
                baseline_windows: 8,
                group_windows: None,
                ratio: None,
                group_final,
                windows_worse: 0,
                ideal_windows: None,
                ratio_to_ideal: None,
            },
        }
    }

    #[test]
    fn the_exchanging_miners_must_end_below_the_baseline_on_a_fresh_run() {
        let comparison = |group_final| group(Role::Exchanging, group_final);
        assert_eq!(judge_against_baseline(&[comparison(1.9)], true), None);
        let behind = [comparison(2.1)];
        assert_eq!(
            judge_against_baseline(&behind, true).unwrap(),
            "the exchanging miners ended at a held-out loss of 2.100, not below the baseline's 2.000"
        );
        assert_eq!(judge_against_baseline(&behind, false), None, "resumed: not judged");
        assert_eq!(judge_against_baseline(&[], true), None, "no baseline: nothing to judge");
    }

    #[test]
    fn the_exchanging_miners_must_end_near_the_ideal_on_a_fresh_run() {
        let near = [group(Role::Exchanging, 2.6), group(Role::Ideal, 2.0)];
        assert_eq!(judge_against_ideal(&near, true), None);
        let far = [group(Role::Exchanging, 2.8), group(Role::Ideal, 2.0)];
        assert_eq!(
            judge_against_ideal(&far, true).unwrap(),
            "the exchanging miners ended at a held-out loss of 2.800, more than 35% above the ideal miner's 2.000"
        );
        assert_eq!(judge_against_ideal(&far, false), None, "resumed: not judged");
        assert_eq!(judge_against_ideal(&far[..1], true), None, "no ideal miner: nothing to judge");
    }

    #[test]
    fn exchanging_miners_must_hold_one_model_each_window() {
        let with_hashes = |name: &str, hashes: &[Option<u64>]| {
            let mut r = run(name, Role::Exchanging, &[3.0, 2.5, 2.0], (2, 2));
            r.windows.iter_mut().zip(hashes).for_each(|(w, h)| w.model_hash = *h);
            r
        };
        let same =
            [with_hashes("miner1", &[Some(1), Some(2), Some(3)]), with_hashes("miner2", &[Some(1), Some(2), Some(3)])];
        assert_eq!(fingerprints(&same), (vec![], 3));
        assert_eq!(judge_fingerprints(&same), None);
        let apart =
            [with_hashes("miner1", &[Some(1), Some(2), Some(3)]), with_hashes("miner2", &[Some(1), Some(9), None])];
        assert_eq!(fingerprints(&apart), (vec![1], 2), "window 2 has no fingerprint from miner2: not compared");
        assert_eq!(
            judge_fingerprints(&apart).unwrap(),
            "the exchanging miners' models differed after the outer step in 1 of 2 windows (first: window 1)"
        );
        let none = [
            run("miner1", Role::Exchanging, &[3.0, 2.5], (2, 2)),
            run("miner2", Role::Exchanging, &[3.0, 2.5], (2, 2)),
        ];
        assert_eq!(fingerprints(&none), (vec![], 0), "exchanges without fingerprints are not judged");
    }
}
