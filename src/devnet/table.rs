//! The live table: a line per miner and window as each completes (and the validator's
//! lines), until every exchanging miner has trained `--windows` or Ctrl-C.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tessera_actors::devnet::{Devnet, Role};
use tessera_actors::{MinerContext, MinerStats, WindowSummary};

use super::Nodes;
use super::memory::MemoryTrace;
use super::validator;
use super::window_log::WindowLog;

/// How often the table looks for completed windows.
const POLL: Duration = Duration::from_millis(200);

/// A miner's cumulative slice counters: the table prints what changed since its last line,
/// the summary the totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SliceCounts {
    pub up: u64,
    pub down: u64,
    pub cached: u64,
    pub rejected: u64,
}

impl SliceCounts {
    pub fn of(m: &MinerContext) -> Self {
        let s = &m.telemetry.stats;
        Self {
            up: MinerStats::get(&s.slices_uploaded),
            down: MinerStats::get(&s.slices_downloaded),
            cached: MinerStats::get(&s.cache_hits),
            rejected: s.rejected_total(),
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            up: self.up - earlier.up,
            down: self.down - earlier.down,
            cached: self.cached - earlier.cached,
            rejected: self.rejected - earlier.rejected,
        }
    }
}

/// What the live table saw, for the summary.
pub struct Watched {
    /// Stopped by Ctrl-C rather than after `--windows`.
    pub interrupted: bool,
    /// Lines of honest miners that trained nothing.
    pub idle_windows: usize,
    pub memory: MemoryTrace,
    /// Since the start, when the first window line came.
    pub first_window_at: Option<Duration>,
    /// Every window each miner completed, in the devnet's order of miners.
    pub windows: WindowLog,
}

/// The table's column names.
pub fn header() -> String {
    format!(
        "{:>6}  {:<10} {:>7} {:>8} {:>8} {:>4} {:>5} {:>6} {:>4}  {:>11}",
        "window", "miner", "loss", "heldout", "tok/s", "up", "down", "cached", "rej", "averaged"
    )
}

/// Prints windows as they complete until every exchanging miner has trained `windows`
/// (never with 0) — in lockstep, until the clock holds after them, so every node ends at
/// the same window and the validators' last weights are set — or Ctrl-C; records
/// resident memory as the slowest of them advances.
pub async fn watch(net: &Devnet, nodes: &Nodes, windows: u64, started: Instant, log_dir: &Path) -> Result<Watched> {
    let exchanging: Vec<&Arc<MinerContext>> =
        nodes.miners.iter().filter(|m| matches!(nodes.role(m), Role::Exchanging | Role::SeedExchange)).collect();
    let log = WindowLog::create(log_dir, nodes.miners.len())?;
    let mut table = LiveTable::new(nodes, started, log);
    let mut memory = MemoryTrace::with_state_dir(net.options.state_dir.clone());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let interrupted = loop {
        tokio::select! {
            _ = &mut ctrl_c => break true,
            _ = tokio::time::sleep(POLL) => {}
        }
        table.print_new_windows(&mut std::io::stdout().lock())?;
        let completed: Vec<u64> =
            exchanging.iter().map(|m| MinerStats::get(&m.telemetry.stats.windows_completed)).collect();
        memory.record(completed.iter().copied().min().unwrap_or(0));
        let settled = !net.options.lockstep || net.lockstep_held();
        if windows > 0 && completed.iter().all(|&c| c >= windows) && settled {
            break false;
        }
    };
    Ok(Watched {
        interrupted,
        idle_windows: table.idle_windows,
        memory,
        first_window_at: table.first_window_at,
        windows: table.log,
    })
}

/// What the table has printed so far.
struct LiveTable<'a> {
    nodes: &'a Nodes,
    started: Instant,
    /// Per miner: windows seen (numbered from its start) and its counters at the last one.
    miners: Vec<(u64, SliceCounts)>,
    /// Per validator: windows seen.
    validators: Vec<u64>,
    idle_windows: usize,
    first_window_at: Option<Duration>,
    log: WindowLog,
}

impl<'a> LiveTable<'a> {
    fn new(nodes: &'a Nodes, started: Instant, log: WindowLog) -> Self {
        Self {
            nodes,
            started,
            miners: nodes.miners.iter().map(|m| (0, SliceCounts::of(m))).collect(),
            validators: vec![0; nodes.validators.len()],
            idle_windows: 0,
            first_window_at: None,
            log,
        }
    }

    /// A line for each window completed since the last call: the miners', then the validators'.
    fn print_new_windows(&mut self, out: &mut impl Write) -> Result<()> {
        for (i, (m, (seen, counts))) in self.nodes.miners.iter().zip(self.miners.iter_mut()).enumerate() {
            let (new, next) = m.telemetry.stats.windows_since(*seen);
            *seen = next;
            for w in new {
                self.first_window_at.get_or_insert_with(|| self.started.elapsed());
                let now = SliceCounts::of(m);
                if w.idle_reason.is_some() && !self.nodes.role(m).is_adversary() {
                    self.idle_windows += 1;
                }
                writeln!(out, "{}", miner_line(&m.id.name, m.settings.baseline, &w, now.since(*counts)))?;
                self.log.append(i, &w)?;
                *counts = now;
            }
        }
        for (v, seen) in self.nodes.validators.iter().zip(self.validators.iter_mut()) {
            let Some(stats) = v.validator_stats() else { continue };
            let (new, next) = stats.windows_since(*seen);
            *seen = next;
            for w in new {
                validator::print_window(out, &v.id.name, &w, &self.nodes.names)?;
            }
        }
        Ok(())
    }
}

/// A miner's line for window `w`: its losses, speed, the slices moved since its last line
/// and what it averaged (`state+delta` slices; `alone` for a baseline).
fn miner_line(name: &str, baseline: bool, w: &WindowSummary, slices: SliceCounts) -> String {
    let averaged = if baseline { "alone".to_owned() } else { format!("{}+{}", w.state_slices, w.delta_slices) };
    let heldout = w.eval_loss.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into());
    let (loss, tokens, idle) = match &w.idle_reason {
        None => (format!("{:.3}", w.loss), format!("{:.0}", w.tokens_per_sec), String::new()),
        Some(reason) => ("-".into(), "-".into(), format!("  trained nothing: {reason}")),
    };
    format!(
        "{:>6}  {:<10} {:>7} {:>8} {:>8} {:>4} {:>5} {:>6} {:>4}  {:>11}{idle}",
        w.window, name, loss, heldout, tokens, slices.up, slices.down, slices.cached, slices.rejected, averaged,
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A trained window with the given losses and slices averaged.
    pub fn window(window: u64, loss: f32, eval_loss: Option<f32>, averaged: (u32, u32)) -> WindowSummary {
        WindowSummary {
            window,
            loss,
            tokens: 256,
            tokens_per_sec: 1234.4,
            micro_batches: 1,
            sample_rate: 1.0,
            utilization: 1.0,
            lr: 3e-3,
            step: window,
            state_slices: averaged.0,
            delta_slices: averaged.1,
            idle_reason: None,
            eval_loss,
            bytes_downloaded: 0,
            model_hash: None,
        }
    }

    #[test]
    fn a_line_per_window_lines_up_under_the_header() {
        let slices = SliceCounts { up: 2, down: 4, cached: 1, rejected: 0 };
        let line = miner_line("miner1", false, &window(7, 5.4321, Some(5.5), (3, 3)), slices);
        assert_eq!(line, "     7  miner1       5.432    5.500     1234    2     4      1    0          3+3");
        assert_eq!(line.len(), header().len());
        let mut idle = window(8, f32::NAN, None, (0, 0));
        idle.idle_reason = Some("late".into());
        let line = miner_line("baseline1", true, &idle, SliceCounts::default());
        assert!(line.ends_with("        alone  trained nothing: late"), "{line}");
        assert!(line.contains("       -        -        - "), "{line}");
    }
}
