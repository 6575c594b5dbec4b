//! One window of a node, as named phases. The plan is chosen once per node
//! ([`WindowPlan::for_node`]); [`WindowRun::run`] matches on it and calls the phases in
//! order, each in its own file:
//!
//! ```text
//! miner      sync_in ─ train ─ publish ─ finish     (a baseline: train ─ finish)
//! validator  resync ─ score ─ advance ─ finish
//! ```
//! - [`sync_in`]: the peers' averages into the model at the window's start (and the state
//!   replayed after a restart);
//! - [`train`]: the window's pages until the window ends or the fixed micro-batches are done;
//! - [`publish`]: the own delta (or update) and next state out, the peers' deltas in (seed
//!   exchange), old history pruned;
//! - [`score`]: the validator's scoring of window `W − offset`;
//! - [`advance`]: one window forward from the peers' slices — shared by the miner's
//!   `sync_in` and the validator;
//! - [`finish`]: held-out evaluation when due, the summary, a checkpoint when due.
//!
//! Every computation runs on the engine thread; phases only wait for it.

mod advance;
mod consensus;
mod finish;
mod join;
mod publish;
pub(crate) mod score;
mod sync_in;
mod train;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tessera_core::slice::{Exchange, SliceKind, is_snapshot_window, snapshot_every};
use tessera_core::window::Window;
use tessera_model::train::SampleRate;
use tracing::{info, warn};

pub(crate) use self::join::IN_STEP_SAMPLE;
pub use self::publish::Misbehaviour;
pub use self::train::token_batches;
use crate::context::{ActorKind, MinerContext, lock, lookup};
use crate::engine::EngineHandle;
use crate::error::RuntimeError;
use crate::messages::{SliceDownloaderMsg, SliceUploaderMsg, StateSyncerMsg, WindowResult};
use crate::sparse::ObjectBody;
use crate::stats::MinerStats;

/// What a node does with each window, decided once from its role and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPlan {
    /// Trains alone: nothing in, nothing out (a reference for the exchange).
    Baseline,
    /// Trains, publishes and takes in its peers' slices under `exchange`.
    Miner { exchange: Exchange },
    /// Scores window `W − offset` and steps its model forward without training.
    Validator { exchange: Exchange, offset: u64 },
}

impl WindowPlan {
    pub fn for_node(ctx: &MinerContext) -> Self {
        let exchange = ctx.exchange();
        if ctx.is_validator() {
            let offset = tessera_core::validator::ScoringParams::from_hparams(&ctx.network.hparams).eval_offset;
            WindowPlan::Validator { exchange, offset }
        } else if ctx.settings.baseline {
            WindowPlan::Baseline
        } else {
            WindowPlan::Miner { exchange }
        }
    }
}

/// One window of one node: what every phase reads.
pub(crate) struct WindowRun {
    pub ctx: Arc<MinerContext>,
    pub engine: EngineHandle,
    pub plan: WindowPlan,
    pub window: Window,
    pub rate: Arc<Mutex<SampleRate>>,
    /// State slices to replay first (after a restart, or `--sync_state`): from this window.
    pub resync_from: Option<Window>,
    pub cancel: Arc<AtomicBool>,
    /// Set for the first window after a restart: when the restarted Trainer started.
    pub ready_since: Option<Instant>,
}

impl WindowRun {
    pub async fn run(self) -> Result<WindowResult, RuntimeError> {
        match self.plan {
            WindowPlan::Baseline => self.run_miner(None).await,
            WindowPlan::Miner { exchange } => self.run_miner(Some(exchange)).await,
            WindowPlan::Validator { exchange, offset } => self.run_validator(exchange, offset).await,
        }
    }

    /// A miner's window; `exchange` is `None` for a baseline, which trains alone.
    async fn run_miner(&self, exchange: Option<Exchange>) -> Result<WindowResult, RuntimeError> {
        let started = train::Started::now(self);
        let synced = match exchange {
            Some(exchange) => sync_in::run(self, exchange).await?,
            None => advance::Advanced::default(),
        };
        let trained = train::run(self, exchange, started).await?;
        let result = WindowResult { window: self.window, trained: trained.report.micro_batches > 0 };
        if self.stopped() {
            return Ok(result);
        }
        let delta_slices = match exchange {
            Some(exchange) => publish::run(self, exchange, &trained).await?,
            None => 0,
        };
        let counts = advance::Advanced { delta_slices: synced.delta_slices + delta_slices, ..synced };
        finish::run(self, finish::Finished::trained(&trained, counts, self)).await?;
        Ok(result)
    }

    /// A validator's window: score `W − offset`, then the model one window forward.
    async fn run_validator(&self, exchange: Exchange, offset: u64) -> Result<WindowResult, RuntimeError> {
        if let Some(from) = self.resync_from {
            self.replay_state(from).await?;
        }
        // The deltas of this window, watched while it is open: their first-seen times
        // decide what is on time and which of two copies came first, when it is scored.
        if let Some(downloader) = lookup::<SliceDownloaderMsg>(&self.ctx.id.name, ActorKind::SliceDownloader) {
            let _ = downloader.cast(SliceDownloaderMsg::Watch { window: self.window });
        }
        let evaluated = self.window.checked_sub(offset);
        let mut advanced = advance::Advanced::default();
        let mut snapshot = None;
        if let Some(e) = evaluated {
            score::run(self, e).await;
            advanced = advance::one_window(self, e, exchange, advance::OwnStep::None).await?;
            if exchange == Exchange::SparseLoco {
                snapshot = self.publish_snapshot(e + 1).await?;
            }
        }
        self.prune_history(snapshot);
        finish::run(self, finish::Finished::validated(self, advanced)).await?;
        Ok(WindowResult { window: self.window, trained: false })
    }

    /// The model as of the start of `window` (the validator's, stepped through `window −
    /// 1`), published whole when it is a snapshot window, for nodes joining the network.
    /// Returns the window published, if any.
    async fn publish_snapshot(&self, window: Window) -> Result<Option<Window>, RuntimeError> {
        let history = self.ctx.network.max_history.load(Ordering::Relaxed);
        if !is_snapshot_window(window, history) {
            return Ok(None);
        }
        let all = self.ctx.all_positions();
        let values = self.engine.run(move |ops| ops.gather(&all)).await??;
        self.upload(SliceKind::Snapshot, window, ObjectBody::Values(Arc::new(values)));
        Ok(Some(window))
    }

    /// What a validator keeps over a long run: its slice cache holds the last
    /// `max_history` windows (every peer's state and delta slices pass through it, ~100
    /// MB per 300 windows of 8 devnet miners when it was never collected), and after a
    /// snapshot its older snapshots but the last are deleted — its own objects only: a
    /// bucket may be shared with miners, whose objects are theirs to delete.
    fn prune_history(&self, snapshot: Option<Window>) {
        let Some(uploader) = lookup::<SliceUploaderMsg>(&self.ctx.id.name, ActorKind::SliceUploader) else {
            return;
        };
        let history = self.ctx.network.max_history.load(Ordering::Relaxed);
        let prune = match snapshot {
            Some(window) => SliceUploaderMsg::Prune {
                before: window.saturating_sub(snapshot_every(history)),
                kinds: &[SliceKind::Snapshot],
            },
            None => SliceUploaderMsg::Prune { before: self.window.saturating_sub(history), kinds: &[] },
        };
        let _ = uploader.cast(prune);
    }

    fn stopped(&self) -> bool {
        self.ctx.is_stopping() || self.cancel.load(Ordering::Acquire)
    }

    /// State slices published since the model was saved (or `max_history` windows with
    /// `--sync_state`), applied window by window.
    pub(crate) async fn replay_state(&self, from: Window) -> Result<(), RuntimeError> {
        let ctx = &self.ctx;
        let total = self.window.saturating_sub(from);
        if total == 0 {
            return Ok(());
        }
        info!(miner = %ctx.id.name, from, to = self.window - 1, "syncing state from history");
        let bar = crate::progress::bar(total, format!("{}: state sync", ctx.id.name), false);
        for (i, w) in (from..self.window).enumerate() {
            let applied = self.average_and_apply(SliceKind::State, w).await?;
            bar.inc(1);
            info!(miner = %ctx.id.name, window = w, progress = format!("{}/{}", i + 1, total), slices = applied, "state sync");
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Averages the peers' `kind` slices of `window` into the model; returns how many.
    pub(crate) async fn average_and_apply(&self, kind: SliceKind, window: Window) -> Result<u32, RuntimeError> {
        let (mean, accepted) = self.fetch_mean(kind, window).await;
        if let Some(mean) = mean {
            let indices = self.ctx.positions(kind, window).await?;
            self.engine.run(move |ops| ops.apply(&indices, &mean)).await??;
        }
        Ok(accepted)
    }

    /// The mean of the valid `kind` slices of `window` (the own one included) and how
    /// many there were; nothing when the StateSyncer is away.
    pub(crate) async fn fetch_mean(&self, kind: SliceKind, window: Window) -> (Option<Arc<Vec<f32>>>, u32) {
        let ctx = &self.ctx;
        let Some(syncer) = lookup::<StateSyncerMsg>(&ctx.id.name, ActorKind::StateSyncer) else {
            warn!(miner = %ctx.id.name, %kind, window, "no state syncer running; skipping this average");
            return (None, 0);
        };
        let center = match self.clip_center(kind, window).await {
            Ok(center) => center,
            Err(e) => {
                warn!(miner = %ctx.id.name, %kind, window, error = %e, "cannot read the model's values; skipping this average");
                return (None, 0);
            }
        };
        let deadline = ctx.deadlines().average();
        match syncer.call(|reply| StateSyncerMsg::Average { kind, window, center, reply }, Some(deadline)).await {
            Ok(ractor::rpc::CallResult::Success(outcome)) => {
                if let (SliceKind::State, Some(validator)) = (kind, &ctx.validator) {
                    score::note_state_verdicts(validator, window, outcome.verdicts);
                }
                (outcome.mean, outcome.accepted)
            }
            Ok(_) | Err(_) => {
                warn!(miner = %ctx.id.name, %kind, window, "the state syncer did not answer; skipping this average");
                (None, 0)
            }
        }
    }

    /// What the peers' `kind` slices of `window` are clipped around: the own values at
    /// their positions for values (state, and deltas of the seed exchange), zero for the
    /// update exchange's updates.
    async fn clip_center(&self, kind: SliceKind, window: Window) -> Result<Option<Arc<Vec<f32>>>, RuntimeError> {
        match (kind, self.ctx.exchange()) {
            (SliceKind::Delta, exchange) if exchange.exchanges_updates() => Ok(None),
            _ => Ok(Some(self.gather(window).await?)),
        }
    }

    /// The model's values at the slice positions of `window`.
    pub(crate) async fn gather(&self, window: Window) -> Result<Arc<Vec<f32>>, RuntimeError> {
        let indices = self.ctx.indices(window).await?;
        Ok(Arc::new(self.engine.run(move |ops| ops.gather(&indices)).await??))
    }

    /// A fingerprint of every parameter's bits: the first 8 bytes of their BLAKE3, LE.
    pub(crate) async fn model_hash(&self) -> Result<u64, RuntimeError> {
        let all = self.ctx.all_positions();
        let values = self.engine.run(move |ops| ops.gather(&all)).await??;
        let mut hasher = blake3::Hasher::new();
        for chunk in values.chunks(1 << 16) {
            hasher.update(&chunk.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        Ok(u64::from_le_bytes(first))
    }

    /// The model's values at the delta positions of `window` (every position under SparseLoCo).
    pub(crate) async fn gather_delta(&self, window: Window) -> Result<Arc<Vec<f32>>, RuntimeError> {
        let indices = self.ctx.positions(SliceKind::Delta, window).await?;
        Ok(Arc::new(self.engine.run(move |ops| ops.gather(&indices)).await??))
    }

    pub(crate) fn outer_lr(&self) -> f32 {
        self.ctx.network.hparams.exchange_outer_lr.unwrap_or(1.0) as f32
    }

    fn upload(&self, kind: SliceKind, window: Window, body: ObjectBody) {
        match lookup::<SliceUploaderMsg>(&self.ctx.id.name, ActorKind::SliceUploader) {
            Some(uploader) => {
                if uploader.cast(SliceUploaderMsg::Upload { kind, window, body }).is_ok() {
                    MinerStats::add(&self.ctx.telemetry.stats.uploads_requested, 1);
                }
            }
            None => warn!(miner = %self.ctx.id.name, %kind, window, "no slice uploader running; slice not published"),
        }
    }

    /// The window's span in unix ms (observed block times, extrapolated where not seen).
    fn bounds(&self) -> Option<(i64, i64)> {
        let ctx = &self.ctx;
        let block_ms = ctx.settings.block_time.as_millis() as u64;
        lock(&ctx.network.block_times).window_bounds(&ctx.network.schedule, self.window, block_ms)
    }
}
