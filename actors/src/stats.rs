//! Counters of one miner, updated by its actors and read by tests, the CLI and (later)
//! the metrics endpoint. Plain atomics and small locks: telemetry never blocks training.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bounds::{History, Retained, SCORED_WINDOWS_KEPT, WINDOW_SUMMARIES_KEPT};
use crate::context::{ActorKind, lock};

/// What one window of training did, as the Trainer reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowSummary {
    pub window: u64,
    pub loss: f32,
    pub tokens: usize,
    pub tokens_per_sec: f64,
    pub micro_batches: usize,
    pub sample_rate: f64,
    /// Share of the window's wall time spent training.
    pub utilization: f64,
    pub lr: f64,
    pub step: u64,
    /// Slices averaged into the model (state at the start, delta at the end).
    pub state_slices: u32,
    pub delta_slices: u32,
    /// Why nothing was trained this window (`micro_batches == 0`), for the operator.
    pub idle_reason: Option<String>,
    /// Mean loss on the held-out pages after this window, when evaluated.
    pub eval_loss: Option<f32>,
    /// Bytes of peers' slices downloaded during this window (cache misses).
    pub bytes_downloaded: u64,
    /// SparseLoCo: the model's fingerprint after the window's outer step (before training),
    /// equal on every honest miner that read the same payloads.
    pub model_hash: Option<u64>,
}

impl WindowSummary {
    /// A window in which the node trained nothing, for `reason`.
    pub fn untrained(window: u64, state_slices: u32, delta_slices: u32, reason: String) -> Self {
        Self {
            window,
            loss: f32::NAN,
            tokens: 0,
            tokens_per_sec: 0.0,
            micro_batches: 0,
            sample_rate: 0.0,
            utilization: 0.0,
            lr: 0.0,
            step: 0,
            state_slices,
            delta_slices,
            idle_reason: Some(reason),
            eval_loss: None,
            bytes_downloaded: 0,
            model_hash: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct MinerStats {
    pub windows_completed: AtomicU64,
    pub slices_uploaded: AtomicU64,
    pub upload_failures: AtomicU64,
    pub uploads_abandoned: AtomicU64,
    pub slices_downloaded: AtomicU64,
    /// Bytes of peers' slices downloaded (cache misses).
    pub bytes_downloaded: AtomicU64,
    /// Uploads handed to the SliceUploader, and those that left its queue (uploaded or
    /// dropped): equal when nothing is pending (the devnet's lockstep clock waits on it).
    pub uploads_requested: AtomicU64,
    pub uploads_settled: AtomicU64,
    /// Held-out evaluations run.
    pub evaluations: AtomicU64,
    /// The model was resumed from a checkpoint (not built from the initial weights).
    pub resumed_from_checkpoint: std::sync::atomic::AtomicBool,
    pub cache_hits: AtomicU64,
    pub download_failures: AtomicU64,
    pub peers_skipped: AtomicU64,
    pub slices_averaged: AtomicU64,
    /// Slices pulled back to the clip radius before averaging (a peer far from the others).
    pub slices_clipped: AtomicU64,
    pub checkpoints_written: AtomicU64,
    pub block_stream_losses: AtomicU64,
    pub reconnects: AtomicU64,
    /// Milliseconds from a restarted Trainer's start to its first micro-batch (0 = none yet).
    pub last_restart_ready_ms: AtomicU64,
    /// Compressed exchanges: the whole model taken from a peer's snapshot (a join, or a
    /// resynchronisation after this node's model left the others').
    pub model_resyncs: AtomicU64,
    pub engine_rebuilds: AtomicU64,
    /// Telemetry rows (W&B) dropped rather than delay training.
    pub telemetry_dropped: AtomicU64,
    /// The fill of the bounds kept in actors' own state (`tessera_retained`).
    pub retained: Retained,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    restarts: Mutex<BTreeMap<ActorKind, u64>>,
    windows: Mutex<History<WindowSummary, WINDOW_SUMMARIES_KEPT>>,
    last_eval: Mutex<Option<(u64, f32)>>,
}

impl MinerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn reject(&self, reason: &'static str) {
        *lock(&self.rejected).entry(reason).or_default() += 1;
    }

    /// Rejected slices by reason label.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.rejected).clone()
    }

    pub fn rejected_total(&self) -> u64 {
        lock(&self.rejected).values().sum()
    }

    pub fn record_start(&self, kind: ActorKind) {
        *lock(&self.restarts).entry(kind).or_default() += 1;
    }

    /// Restarts per actor kind (starts after the first).
    pub fn restarts(&self) -> BTreeMap<ActorKind, u64> {
        lock(&self.restarts).iter().map(|(k, v)| (*k, v.saturating_sub(1))).collect()
    }

    pub fn record_window(&self, summary: WindowSummary) {
        Self::add(&self.windows_completed, 1);
        if let Some(loss) = summary.eval_loss {
            *lock(&self.last_eval) = Some((summary.window, loss));
        }
        lock(&self.windows).push(summary);
    }

    /// The window summaries kept (the last [`WINDOW_SUMMARIES_KEPT`]): a copy, for tests.
    pub fn windows(&self) -> Vec<WindowSummary> {
        lock(&self.windows).kept()
    }

    /// Window summaries kept now (`tessera_retained`).
    pub fn windows_kept(&self) -> usize {
        lock(&self.windows).len()
    }

    /// The last window trained, without copying the history (scrapes, readiness).
    pub fn last_window(&self) -> Option<WindowSummary> {
        lock(&self.windows).last().cloned()
    }

    /// Whether the model was resumed from a checkpoint at some start.
    pub fn resumed(&self) -> bool {
        self.resumed_from_checkpoint.load(Ordering::Relaxed)
    }

    /// The window and loss of the last held-out evaluation.
    pub fn last_eval(&self) -> Option<(u64, f32)> {
        *lock(&self.last_eval)
    }

    /// The summaries numbered `seen` and later (counted from the start), and the number to
    /// ask from next time: a display that prints each once.
    pub fn windows_since(&self, seen: u64) -> (Vec<WindowSummary>, u64) {
        lock(&self.windows).since(seen)
    }
}

/// What became of one UID's delta in a validator's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UidOutcome {
    Scored,
    /// No valid delta in time (or it could not be evaluated).
    Missing,
    /// A copy of another miner's delta.
    Copier,
    /// No time left this window: neither rewarded nor penalised.
    Skipped,
    /// Scored, but its state slice was refused or far beyond the others': the
    /// window pays nothing.
    StateFault,
}

impl std::fmt::Display for UidOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UidOutcome::Scored => "scored",
            UidOutcome::Missing => "missing",
            UidOutcome::Copier => "copier",
            UidOutcome::Skipped => "skipped",
            UidOutcome::StateFault => "state-fault",
        })
    }
}

/// One UID in a validator's window report.
#[derive(Debug, Clone, PartialEq)]
pub struct UidReport {
    pub uid: u16,
    pub outcome: UidOutcome,
    /// The window score (loss improvement on own data), when scored.
    pub score: Option<f64>,
    /// Loss improvements on the miner's own data and on random data, when evaluated.
    pub own_improvement: Option<f64>,
    pub random_improvement: Option<f64>,
    /// The gate's `d` of this window ([`tessera_core::validator::Evaluation::specificity`]).
    pub specificity: Option<f64>,
    pub moving: f64,
    pub indicator: f64,
    /// The normalised weight after this window.
    pub weight: f64,
}

/// What a validator did for one evaluated window.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredWindow {
    /// The window whose deltas were scored.
    pub window: u64,
    pub scored: u32,
    pub skipped: u32,
    pub missing: u32,
    pub copiers: u32,
    /// Mean seconds to evaluate one miner (losses before and after, own and random data).
    pub eval_secs_per_miner: f64,
    pub uids: Vec<UidReport>,
}

/// A validator's counters, beside the [`MinerStats`] its shared actors keep.
#[derive(Debug, Default)]
pub struct ValidatorStats {
    pub miners_scored: AtomicU64,
    pub miners_skipped: AtomicU64,
    /// Weight submissions: accepted and confirmed, refused by the chain, held back by the
    /// subnet's rate limit (a wait, not a failure), hash commits and their reveals.
    pub weights_set: AtomicU64,
    pub weights_refused: AtomicU64,
    pub weights_rate_limited: AtomicU64,
    pub weights_committed: AtomicU64,
    pub weights_revealed: AtomicU64,
    windows: Mutex<History<ScoredWindow, SCORED_WINDOWS_KEPT>>,
    last_weights: Mutex<Option<ChainWeights>>,
    /// The score book's last window when the confirmed weights were read from it.
    weights_from_window: Mutex<Option<u64>>,
}

/// Weights confirmed on chain: the block, then `(uid, weight)` pairs.
pub type ChainWeights = (u64, Vec<(u16, u16)>);

impl ValidatorStats {
    pub fn record_window(&self, report: ScoredWindow) {
        lock(&self.windows).push(report);
    }

    /// The evaluated windows kept (the last [`SCORED_WINDOWS_KEPT`]).
    pub fn windows(&self) -> Vec<ScoredWindow> {
        lock(&self.windows).kept()
    }

    /// Windows evaluated since the start (kept or not).
    pub fn windows_evaluated(&self) -> u64 {
        lock(&self.windows).total()
    }

    /// Scored windows kept now (`tessera_retained`).
    pub fn windows_kept(&self) -> usize {
        lock(&self.windows).len()
    }

    pub fn last_window(&self) -> Option<ScoredWindow> {
        lock(&self.windows).last().cloned()
    }

    /// The reports numbered `seen` and later, and the number to ask from next time.
    pub fn windows_since(&self, seen: u64) -> (Vec<ScoredWindow>, u64) {
        lock(&self.windows).since(seen)
    }

    /// Weights the chain confirmed: at which block, `(uid, weight)`.
    pub fn record_weights(&self, block: u64, weights: Vec<(u16, u16)>) {
        *lock(&self.last_weights) = Some((block, weights));
    }

    /// The scores' window that the weights last confirmed on chain were computed after.
    pub fn record_weights_from_window(&self, window: u64) {
        *lock(&self.weights_from_window) = Some(window);
    }

    pub fn weights_from_window(&self) -> Option<u64> {
        *lock(&self.weights_from_window)
    }

    pub fn last_weights(&self) -> Option<ChainWeights> {
        lock(&self.last_weights).clone()
    }
}
