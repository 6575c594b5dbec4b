//! After the run: a row per miner (windows, losses, speed, slices, restarts), how each
//! exchanging group compares with the baseline on held-out loss, and the closing lines.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use tessera_actors::WindowSummary;
use tessera_actors::devnet::Role;

use super::report::{Comparison, MinerRun, compare, comparison_line, exchange_of, first_window, group_curve};

/// Training windows averaged for a miner's first loss in its row.
const FIRST_LOSS_WINDOWS: usize = 2;
/// Training windows averaged for a miner's last loss in its row.
const LAST_LOSS_WINDOWS: usize = 3;

/// The groups compared with the baseline.
const COMPARED: [Role; 3] = [Role::Exchanging, Role::SeedExchange, Role::Ideal];

/// One miner's losses and speed over its run.
pub struct LossFigures {
    /// The finite training losses, a window each.
    pub losses: Vec<f32>,
    /// The finite held-out losses, a window each where evaluated.
    pub evals: Vec<f32>,
    /// Mean training loss of the first windows and of the last.
    pub first: f32,
    pub last: f32,
    /// `last` against `first`, in percent.
    pub change: f32,
    /// Mean tokens per second over the windows that trained.
    pub tokens_per_sec: f64,
}

impl LossFigures {
    pub fn of(windows: &[WindowSummary]) -> Self {
        let losses: Vec<f32> = windows.iter().map(|w| w.loss).filter(|l| l.is_finite()).collect();
        let first = mean(losses.iter().take(FIRST_LOSS_WINDOWS));
        let last = mean(losses.iter().rev().take(LAST_LOSS_WINDOWS));
        let change = if first > 0.0 { (last / first - 1.0) * 100.0 } else { 0.0 };
        let evals = windows.iter().filter_map(|w| w.eval_loss).filter(|l| l.is_finite()).collect();
        let trained: Vec<&WindowSummary> = windows.iter().filter(|w| w.idle_reason.is_none()).collect();
        let tokens_per_sec = trained.iter().map(|w| w.tokens_per_sec).sum::<f64>() / trained.len().max(1) as f64;
        Self { losses, evals, first, last, change, tokens_per_sec }
    }
}

/// The mean of `values`; NaN when there are none.
pub fn mean<'a>(values: impl Iterator<Item = &'a f32>) -> f32 {
    let (sum, n) = values.fold((0f32, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f32::NAN } else { sum / n as f32 }
}

/// The summary table, after a blank line.
pub fn print_table(out: &mut impl Write, runs: &[MinerRun]) -> Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:>7} {:>10} {:>9} {:>7} {:>9} {:>8} {:>5} {:>5} {:>6} {:>8} {:>8}",
        "miner",
        "windows",
        "first loss",
        "last loss",
        "change",
        "heldout",
        "tok/s",
        "up",
        "down",
        "cached",
        "rejected",
        "restarts"
    )?;
    for run in runs {
        writeln!(out, "{}", summary_row(run))?;
    }
    Ok(())
}

fn summary_row(run: &MinerRun) -> String {
    let f = LossFigures::of(&run.windows);
    let c = run.slices;
    format!(
        "{:<10} {:>7} {:>10.3} {:>9.3} {:>6.1}% {:>9} {:>8.0} {:>5} {:>5} {:>6} {:>8} {:>8}",
        run.name,
        run.windows.len(),
        f.first,
        f.last,
        f.change,
        f.evals.last().map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into()),
        f.tokens_per_sec,
        c.up,
        c.down,
        c.cached,
        c.rejected,
        run.restarts
    )
}

/// A group of miners compared with the baseline on held-out loss.
pub struct GroupComparison {
    pub role: Role,
    /// The group's exchange, as its miners report it.
    pub exchange: String,
    pub comparison: Comparison,
}

/// Each exchanging group against the baseline, where both have held-out losses.
pub fn comparisons(runs: &[MinerRun]) -> Vec<GroupComparison> {
    let first = first_window(runs);
    let baseline = group_curve(runs, Role::Baseline, first);
    let ideal = group_curve(runs, Role::Ideal, first);
    COMPARED
        .into_iter()
        .filter_map(|role| {
            let mut comparison = compare(&group_curve(runs, role, first), &baseline)?;
            if role != Role::Ideal && !ideal.is_empty() {
                comparison = comparison.against_ideal(&ideal);
            }
            Some(GroupComparison { role, exchange: exchange_of(runs, role), comparison })
        })
        .collect()
}

/// A blank line, then a line per comparison.
pub fn print_comparisons(out: &mut impl Write, comparisons: &[GroupComparison]) -> Result<()> {
    writeln!(out)?;
    for g in comparisons {
        writeln!(out, "{}", comparison_line(&format!("{} miners ({})", g.role, g.exchange), &g.comparison))?;
    }
    Ok(())
}

/// How the run ended and, when it did, why the check failed.
pub fn print_ending(
    out: &mut impl Write,
    interrupted: bool,
    elapsed: Duration,
    first_window_at: Option<Duration>,
    reasons: &[String],
) -> Result<()> {
    writeln!(
        out,
        "\n{} in {:.0?}; first window trained {:.1?} after start",
        if interrupted { "interrupted" } else { "done" },
        elapsed,
        first_window_at.unwrap_or_default()
    )?;
    if reasons.is_empty() {
        writeln!(out, "the loss fell on every exchanging miner, and slices flowed between them")?;
    } else {
        writeln!(out, "CHECK FAILED: {}", reasons.join("; "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::window;
    use super::*;

    #[test]
    fn first_and_last_loss_average_the_ends_of_the_run() {
        let windows: Vec<WindowSummary> = [4.0, 3.0, 2.5, 2.0, 1.5, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &l)| window(i as u64, l, None, (1, 1)))
            .collect();
        let f = LossFigures::of(&windows);
        assert_eq!((f.first, f.last), (3.5, 1.5));
        assert!((f.change - (1.5 / 3.5 - 1.0) * 100.0).abs() < 1e-4);
        assert!(mean([].iter()).is_nan());
    }
}
