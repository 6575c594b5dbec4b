//! What a devnet run shows about collaboration: the held-out loss of each group of miners
//! per window, how many windows the exchanging miners needed to reach the baseline's final
//! held-out loss (and the ratio to the baseline's own), and the files of `--report DIR`:
//! `windows.csv` (one row per miner and window), `summary.json` and `heldout.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::json;
use tessera_actors::WindowSummary;
use tessera_actors::devnet::Role;

use super::bandwidth::{self, GroupBandwidth};
use super::memory::MemoryTrace;
use super::summary::GroupComparison;
use super::table::SliceCounts;
use super::validator::WeightRow;
use crate::cli::DevnetArgs;

/// One miner's run, as the devnet recorded it.
pub struct MinerRun {
    pub name: String,
    pub role: Role,
    /// Its exchange, `none` for a baseline.
    pub exchange: String,
    pub windows: Vec<WindowSummary>,
    /// Its slice counters at the end.
    pub slices: SliceCounts,
    /// Its actors' restarts over the run.
    pub restarts: u64,
    /// Resumed from a checkpoint in `--state-dir`.
    pub resumed: bool,
}

/// The first window any miner trained: the report's window indices count from it.
pub fn first_window(runs: &[MinerRun]) -> u64 {
    runs.iter().filter_map(|r| r.windows.first().map(|w| w.window)).min().unwrap_or(0)
}

/// The exchange of the miners of `role`, as they report it (empty when there are none).
pub fn exchange_of(runs: &[MinerRun], role: Role) -> String {
    runs.iter().find(|r| r.role == role).map(|r| r.exchange.clone()).unwrap_or_default()
}

/// The mean held-out loss of the miners of `role` per window index (windows since the
/// run's first window), over the members evaluated at that window.
pub fn group_curve(runs: &[MinerRun], role: Role, first_window: u64) -> BTreeMap<u64, f32> {
    let mut sums: BTreeMap<u64, (f64, u32)> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.role == role) {
        for w in &run.windows {
            if let Some(loss) = w.eval_loss.filter(|l| l.is_finite()) {
                let entry = sums.entry(w.window.saturating_sub(first_window)).or_default();
                entry.0 += f64::from(loss);
                entry.1 += 1;
            }
        }
    }
    sums.into_iter().map(|(i, (sum, n))| (i, (sum / f64::from(n)) as f32)).collect()
}

/// How a group of exchanging miners compares with the baseline on held-out loss.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The baseline's held-out loss at its last evaluated window: the target.
    pub target: f32,
    /// Windows the baseline trained until it first reached the target.
    pub baseline_windows: u64,
    /// Windows the group trained until its mean first reached the target, if it did.
    pub group_windows: Option<u64>,
    /// `group_windows / baseline_windows` (below 1: collaboration was faster).
    pub ratio: Option<f64>,
    pub group_final: f32,
    /// Evaluated windows after the first `WARMUP` at which the group was worse than the baseline.
    pub windows_worse: usize,
    /// With an ideal miner (`--ideal-miner`): the windows it needed to reach the target,
    /// and `group_windows / ideal_windows` (at most 1: as good as data parallelism).
    pub ideal_windows: Option<u64>,
    pub ratio_to_ideal: Option<f64>,
}

/// Windows at the start in which a group may trail the baseline (replicas still meeting).
pub const WARMUP: u64 = 5;

pub fn compare(group: &BTreeMap<u64, f32>, baseline: &BTreeMap<u64, f32>) -> Option<Comparison> {
    let (_, &target) = baseline.last_key_value()?;
    let (_, &group_final) = group.last_key_value()?;
    let baseline_windows = windows_to(baseline, target)?;
    let group_windows = windows_to(group, target);
    let ratio = group_windows.map(|g| g as f64 / baseline_windows as f64);
    let windows_worse =
        group.iter().filter(|(i, l)| **i >= WARMUP && baseline.get(i).is_some_and(|b| **l > *b)).count();
    Some(Comparison {
        target,
        baseline_windows,
        group_windows,
        ratio,
        group_final,
        windows_worse,
        ideal_windows: None,
        ratio_to_ideal: None,
    })
}

/// Windows trained until `curve` first reached `target` (held-out loss at or below it).
pub fn windows_to(curve: &BTreeMap<u64, f32>, target: f32) -> Option<u64> {
    curve.iter().find(|(_, l)| **l <= target).map(|(i, _)| i + 1)
}

impl Comparison {
    /// Adds how the group compares with the ideal miner's curve on the same target.
    pub fn against_ideal(mut self, ideal: &BTreeMap<u64, f32>) -> Self {
        self.ideal_windows = windows_to(ideal, self.target);
        self.ratio_to_ideal = match (self.group_windows, self.ideal_windows) {
            (Some(g), Some(i)) => Some(g as f64 / i as f64),
            _ => None,
        };
        self
    }
}

/// The summary line of a comparison, with the word `ratio` and its number.
pub fn comparison_line(group: &str, c: &Comparison) -> String {
    match (c.group_windows, c.ratio) {
        (Some(g), Some(ratio)) => format!(
            "{group}: reached the baseline's final held-out loss {:.3} in {g} windows, the baseline in {}: ratio {ratio:.2}{}{}",
            c.target,
            c.baseline_windows,
            match (c.ideal_windows, c.ratio_to_ideal) {
                (Some(i), Some(r)) => format!("; the ideal miner in {i}: {r:.2}x the ideal"),
                _ => String::new(),
            },
            if c.windows_worse > 0 {
                format!(" ({} evaluated windows after the first {WARMUP} worse than the baseline)", c.windows_worse)
            } else {
                String::new()
            }
        ),
        _ => format!(
            "{group}: did not reach the baseline's final held-out loss {:.3} (ended at {:.3}; the baseline needed {} windows): ratio none",
            c.target, c.group_final, c.baseline_windows
        ),
    }
}

/// What `summary.json` records beside the flags.
pub struct Outcome<'a> {
    /// Parameters of the model.
    pub params: usize,
    pub comparisons: &'a [GroupComparison],
    pub bandwidth: &'a [GroupBandwidth],
    pub memory: &'a MemoryTrace,
    /// The weights each validator set on the dev chain, by validator name.
    pub weights: &'a [(String, Vec<WeightRow>)],
    /// Windows the validators scored.
    pub validator_windows: usize,
    pub check_ok: bool,
    pub elapsed: std::time::Duration,
    /// The windows whose exchanging miners' models differed, and the windows compared.
    pub models: (Vec<u64>, usize),
}

/// `summary.json`: the run's flags and what came of it.
pub fn summary_json(args: &DevnetArgs, outcome: &Outcome) -> Result<serde_json::Value> {
    let mut comparisons = serde_json::Map::new();
    for g in outcome.comparisons {
        comparisons.insert(g.role.to_string(), serde_json::to_value(&g.comparison)?);
    }
    Ok(json!({
        "seed": args.seed,
        "fixed_compute_micro_batches": args.fixed_compute,
        "exchange": args.exchange.0.to_string(),
        "miners": args.miners,
        "seed_exchange_miners": args.seed_exchange_miners,
        "baseline": args.baseline_miner,
        "ideal": args.ideal_miner,
        "windows": args.windows,
        "parameters": outcome.params,
        "comparisons": comparisons,
        "bandwidth": bandwidth::to_json(outcome.bandwidth),
        "resident_bytes": outcome.memory.last(),
        "resident_slope_bytes_per_window": outcome.memory.slope_after_warmup(),
        "memory_trace": outcome.memory.points(),
        "process_trace": outcome.memory.to_json(),
        "weights": outcome.weights.iter().map(|(validator, rows)| weights_json(validator, rows)).collect::<Vec<_>>(),
        "validator_windows": outcome.validator_windows,
        "models": { "windows_compared": outcome.models.1, "windows_differing": outcome.models.0 },
        "check_ok": outcome.check_ok,
        "elapsed_secs": outcome.elapsed.as_secs_f64(),
    }))
}

/// One validator's weights on the dev chain, a UID each.
fn weights_json(validator: &str, rows: &[WeightRow]) -> serde_json::Value {
    let uids: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "uid": r.uid, "node": r.name, "role": r.role.to_string(), "weight": r.weight, "share": r.share,
            })
        })
        .collect();
    json!({ "validator": validator, "uids": uids })
}

/// Writes `windows.csv`, `summary.json`, `heldout.svg` and `memory.svg` into `dir`.
pub fn write(dir: &Path, runs: &[MinerRun], summary: &serde_json::Value) -> Result<()> {
    let first_window = first_window(runs);
    std::fs::create_dir_all(dir).with_context(|| format!("creating the report directory {}", dir.display()))?;
    let csv = dir.join("windows.csv");
    std::fs::write(&csv, windows_csv(runs, first_window)).with_context(|| format!("writing {}", csv.display()))?;
    let json = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).context("encoding the summary")?;
    std::fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    let svg = dir.join("heldout.svg");
    plot(&svg, runs, first_window).with_context(|| format!("drawing {}", svg.display()))?;
    let svg = dir.join("memory.svg");
    plot_memory(&svg, &summary["process_trace"]).with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
}

/// `memory.svg`: resident memory (MB) per window, from the summary's process trace.
fn plot_memory(path: &Path, trace: &serde_json::Value) -> Result<()> {
    let column = |name: &str| -> Vec<f64> {
        trace[name].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
    };
    let megabytes = |name: &str| -> Vec<(f64, f64)> {
        column("window").into_iter().zip(column(name).into_iter().map(|b| b / 1e6)).collect()
    };
    let points = megabytes("resident_bytes");
    let heap = megabytes("heap_active_bytes");
    let in_use: Vec<(f64, f64)> = megabytes("heap_allocated_bytes")
        .into_iter()
        .zip(column("heap_thread_cached_bytes"))
        .map(|((window, allocated), cached)| (window, allocated - cached / 1e6))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1f64, f64::max);
    let y_max = points.iter().map(|p| p.1).fold(1f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("resident memory and heap per window", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("window").y_desc("MB").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lines = vec![(points, BLUE, "resident")];
    if heap.iter().any(|p| p.1 > 0.0) {
        lines.push((heap, RED, "allocator's active pages"));
        lines.push((in_use, GREEN, "heap in use (allocated less threads' caches)"));
    }
    for (series, color, label) in lines {
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn windows_csv(runs: &[MinerRun], first_window: u64) -> String {
    let mut out = String::from(
        "miner,role,exchange,window,index,train_loss,eval_loss,micro_batches,tokens,tokens_per_sec,state_slices,delta_slices,bytes_downloaded,model_hash,idle_reason\n",
    );
    let float = |v: Option<f32>| v.filter(|l| l.is_finite()).map(|l| format!("{l:.5}")).unwrap_or_default();
    for run in runs {
        for w in &run.windows {
            let reason =
                w.idle_reason.as_deref().map(|r| format!("\"{}\"", r.replace('"', "\"\""))).unwrap_or_default();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{:.0},{},{},{},{},{}",
                run.name,
                run.role,
                run.exchange,
                w.window,
                w.window.saturating_sub(first_window),
                float(Some(w.loss)),
                float(w.eval_loss),
                w.micro_batches,
                w.tokens,
                w.tokens_per_sec,
                w.state_slices,
                w.delta_slices,
                w.bytes_downloaded,
                w.model_hash.map(|h| format!("{h:016x}")).unwrap_or_default(),
                reason
            );
        }
    }
    out
}

fn plot(path: &Path, runs: &[MinerRun], first_window: u64) -> Result<()> {
    let series: Vec<(&MinerRun, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let points = r
                .windows
                .iter()
                .filter_map(|w| {
                    let loss = w.eval_loss.filter(|l| l.is_finite())?;
                    Some((w.window.saturating_sub(first_window) as f64, f64::from(loss)))
                })
                .collect();
            (r, points)
        })
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("held-out loss per miner", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("window").y_desc("held-out loss").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut exchanging, mut seed) = (0usize, 0usize);
    for (run, points) in &series {
        let (color, width) = match run.role {
            Role::Baseline => (BLACK.to_rgba(), 3),
            Role::Ideal => (RGBColor(0, 150, 60).to_rgba(), 3),
            Role::Exchanging => {
                exchanging += 1;
                (BLUE.mix(0.35 + 0.65 / exchanging as f64), 2)
            }
            Role::SeedExchange => {
                seed += 1;
                (RGBColor(230, 120, 0).mix(0.35 + 0.65 / seed as f64), 2)
            }
            // Adversaries (and a validator, which trains nothing) in red.
            _ => (RED.mix(0.5), 1),
        };
        let style = ShapeStyle { color, filled: false, stroke_width: width };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("{} ({}, {})", run.name, run.role, run.exchange))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[(u64, f32)]) -> BTreeMap<u64, f32> {
        points.iter().copied().collect()
    }

    #[test]
    fn the_ratio_counts_windows_to_the_baselines_final_loss() {
        let baseline = curve(&[(0, 3.0), (1, 2.8), (2, 2.6), (3, 2.5), (4, 2.4), (5, 2.3), (6, 2.2), (7, 2.1)]);
        let group = curve(&[(0, 3.0), (1, 2.5), (2, 2.3), (3, 2.1), (4, 2.0), (5, 1.9), (6, 1.8), (7, 1.7)]);
        let c = compare(&group, &baseline).unwrap();
        assert_eq!(c.target, 2.1);
        assert_eq!(c.baseline_windows, 8);
        assert_eq!(c.group_windows, Some(4));
        assert_eq!(c.ratio, Some(0.5));
        assert_eq!(c.windows_worse, 0);
        let line = comparison_line("exchanging miners", &c);
        assert!(line.contains("ratio 0.50"), "{line}");
    }

    #[test]
    fn a_group_that_never_gets_there_has_no_ratio_and_counts_worse_windows() {
        let baseline = curve(&[(0, 3.0), (5, 2.0), (6, 1.9), (7, 1.8)]);
        let group = curve(&[(0, 3.0), (5, 2.5), (6, 2.4), (7, 2.3)]);
        let c = compare(&group, &baseline).unwrap();
        assert_eq!(c.group_windows, None);
        assert_eq!(c.ratio, None);
        assert_eq!(c.windows_worse, 3);
        assert!(comparison_line("g", &c).contains("ratio none"));
        assert!(compare(&group, &BTreeMap::new()).is_none(), "no baseline, no comparison");
    }
}
