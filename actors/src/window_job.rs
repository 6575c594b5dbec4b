//! One window of the miner's loop, run as a task the Trainer starts: the seed's steps in
//! order — averages in, train on the window's pages until the window ends (or a fixed
//! number of micro-batches), slices out, history pruned, held-out evaluation and checkpoint
//! when due — with every computation on the engine thread. Under the update exchange the
//! peers' mean update of the last window replaces the own one at the window's start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::slice::{Exchange, SliceKind};
use tessera_core::window::Window;
use tessera_data::{Batch, PageSelection, WindowData, WindowSpec};
use tessera_model::train::{SampleRate, TokenBatch, WindowReport};
use tracing::{debug, info, warn};

use crate::context::{ActorKind, Behaviour, Fault, MinerContext, lock, lookup};
use crate::engine::EngineHandle;
use crate::error::RuntimeError;
use crate::messages::{SliceUploaderMsg, StateSyncerMsg, WindowOutcome};
use crate::stats::{MinerStats, WindowSummary};

/// Purposes of this node's keyed draws (`LoadedHotkey::private_seed`): a `--random`
/// miner's pages, and the devnet noise adversary's noise.
const RANDOM_PAGES_PURPOSE: &str = "miner random pages";
const NOISE_PURPOSE: &str = "devnet noise";

/// One window of the seed's loop.
pub(crate) struct WindowJob {
    pub ctx: Arc<MinerContext>,
    pub engine: EngineHandle,
    pub window: Window,
    pub rate: Arc<Mutex<SampleRate>>,
    pub resync_from: Option<Window>,
    pub cancel: Arc<AtomicBool>,
    /// Set for the first window after a restart: when the restarted Trainer started.
    pub ready_since: Option<Instant>,
}

impl WindowJob {
    pub async fn run(self) -> Result<WindowOutcome, RuntimeError> {
        let (ctx, window) = (&self.ctx, self.window);
        let baseline = ctx.settings.baseline;
        let exchange = ctx.exchange();
        let bytes_before = MinerStats::get(&ctx.stats.bytes_downloaded);
        let prep_started = Instant::now();
        let late_secs = self.seconds_late();
        let (mut state_slices, mut delta_slices) = (0, 0);
        if !baseline {
            if let Some(from) = self.resync_from {
                self.replay_state(from).await?;
            }
            let mut applied_mean = None;
            if exchange == Exchange::Update && window > 0 {
                // The peers' mean update of the last window in place of the own one, then
                // the state average (values at the last window's end, so including every
                // peer's own update but not the outer scaling, which is added back where
                // the two windows' positions meet).
                (delta_slices, applied_mean) = self.apply_mean_update(window - 1).await?;
            }
            state_slices = self.average_and_apply(SliceKind::State, window).await?;
            if let Some(mean) = applied_mean
                && state_slices > 0
            {
                self.restore_outer_scaling(window, &mean).await?;
            }
        }

        let data = self.load_data().await?;
        let batches = Arc::new(data.batches);
        let update_start = match (baseline, exchange) {
            (false, Exchange::Update) => Some(self.gather(window).await?),
            _ => None,
        };
        let prep_secs = prep_started.elapsed().as_secs_f64();
        if let Some(since) = self.ready_since {
            let ms = since.elapsed().as_millis() as u64;
            ctx.stats.last_restart_ready_ms.store(ms.max(1), Ordering::Relaxed);
            info!(miner = %ctx.name, window, ready_ms = ms, "training again after a restart");
        }
        let rate = *lock(&self.rate);
        let clock = ctx.clock.subscribe();
        let (stop_ctx, cancel) = (ctx.clone(), self.cancel.clone());
        let fixed = ctx.settings.fixed_micro_batches;
        // The devnet's adversaries publish without training.
        let trains = ctx.behaviour == Behaviour::Honest;
        let train_batches = batches.clone();
        let started = Instant::now();
        let (report, rate) = self
            .engine
            .run(move |ops| {
                let mut rate = rate;
                let mut rng = StdRng::seed_from_u64(window ^ 0x07e5_5e7a);
                let window_ended = || {
                    if stop_ctx.faults.take(Fault::EnginePanic) {
                        panic!("injected fault: panic in the training engine");
                    }
                    // With fixed compute the clock waits for the miners, not the reverse.
                    (fixed == 0 && clock.borrow().window != window)
                        || stop_ctx.is_stopping()
                        || cancel.load(Ordering::Acquire)
                };
                let limit = if !trains {
                    0
                } else if fixed > 0 {
                    fixed
                } else {
                    train_batches.len()
                };
                let token_batches = token_batches(&train_batches[..limit.min(train_batches.len())]);
                let mut coin = || if fixed > 0 { 0.0 } else { rng.random::<f64>() };
                let report = ops.train(&token_batches, &mut rate, &mut coin, &window_ended);
                (report.map(|r| (r, ops.step_count(), ops.current_lr())), rate)
            })
            .await?;
        let (report, step, lr) = report?;
        *lock(&self.rate) = rate;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        if ctx.is_stopping() || self.cancel.load(Ordering::Acquire) {
            return Ok(WindowOutcome { window, trained: report.micro_batches > 0 });
        }

        // End of the window. Seed exchange: delta (values) out, the peers' deltas of the
        // previous window in, state out. Update exchange: the own update out (the peers'
        // mean comes in at the next window's start), state out. A baseline miner trains
        // alone: nothing in, nothing out.
        if !baseline {
            match update_start {
                Some(start) => {
                    let end = self.gather(window).await?;
                    let update: Vec<f32> = end.iter().zip(start.iter()).map(|(e, s)| e - s).collect();
                    let update = Arc::new(update);
                    ctx.remember_own_update(window, update.clone());
                    // A window that trained nothing has no update: publishing zeros would
                    // only pull the peers' mean towards zero. The own model still takes
                    // the peers' mean (its own update being zero) at the next window.
                    let honest = (report.micro_batches > 0).then_some(update);
                    if let Some(published) = self.misbehave(honest, Exchange::Update).await {
                        self.upload(SliceKind::Delta, window, published);
                    }
                }
                None => {
                    let delta = self.gather(window).await?;
                    if let Some(published) = self.misbehave(Some(delta), Exchange::Seed).await {
                        self.upload(SliceKind::Delta, window, published);
                    }
                    if window > 0 {
                        delta_slices = self.average_and_apply(SliceKind::Delta, window - 1).await?;
                    }
                }
            }
            let state = self.gather(window + 1).await?;
            self.upload(SliceKind::State, window + 1, state);
            if let Some(uploader) = lookup::<SliceUploaderMsg>(&ctx.name, ActorKind::SliceUploader) {
                let max_history = ctx.max_history.load(Ordering::Relaxed);
                let _ = uploader.cast(SliceUploaderMsg::Prune { before: window.saturating_sub(max_history) });
            }
        }
        let eval_every = ctx.settings.eval_every;
        let eval_loss = if eval_every > 0 && window.is_multiple_of(eval_every) {
            match self.evaluate().await {
                Ok(loss) => Some(loss),
                Err(e) => {
                    warn!(miner = %ctx.name, window, error = %e, "held-out evaluation failed");
                    None
                }
            }
        } else {
            None
        };

        let idle_reason = (report.micro_batches == 0).then(|| match ctx.behaviour {
            Behaviour::Honest => idle_reason(&report, batches.len(), late_secs, prep_secs),
            other => format!("a devnet adversary ({}) does not train", other.label()),
        });
        let summary = WindowSummary {
            window,
            loss: report.mean_loss,
            tokens: report.tokens,
            tokens_per_sec: report.tokens as f64 / elapsed,
            micro_batches: report.micro_batches,
            sample_rate: report.sample_rate,
            utilization: self.utilization(elapsed),
            lr,
            step,
            state_slices,
            delta_slices,
            idle_reason,
            eval_loss,
            bytes_downloaded: MinerStats::get(&ctx.stats.bytes_downloaded).saturating_sub(bytes_before),
        };
        match &summary.idle_reason {
            None => info!(
                miner = %ctx.name,
                window,
                loss = report.mean_loss,
                eval_loss,
                tokens_per_sec = summary.tokens_per_sec.round(),
                micro_batches = report.micro_batches,
                sample_rate = report.sample_rate,
                lr,
                state_slices,
                delta_slices,
                "window done"
            ),
            Some(reason) => info!(
                miner = %ctx.name,
                window,
                eval_loss,
                state_slices,
                delta_slices,
                reason = %reason,
                "window done without training"
            ),
        }
        self.finish(summary).await?;
        Ok(WindowOutcome { window, trained: report.micro_batches > 0 })
    }

    /// The window's end for every node: telemetry hook, the summary recorded, and a
    /// checkpoint when one is due.
    pub(crate) async fn finish(&self, summary: WindowSummary) -> Result<(), RuntimeError> {
        let (ctx, window) = (&self.ctx, self.window);
        let hook = lock(&ctx.window_hook).clone();
        if let Some(hook) = hook {
            hook(ctx, &summary);
        }
        ctx.stats.record_window(summary);
        let completed = MinerStats::get(&ctx.stats.windows_completed);
        if completed.is_multiple_of(ctx.settings.checkpoint_every.max(1)) {
            let meta = self.engine.run(move |ops| ops.checkpoint(window)).await??;
            MinerStats::add(&ctx.stats.checkpoints_written, 1);
            debug!(miner = %ctx.name, window, step = meta.step, "checkpoint written");
        }
        Ok(())
    }

    /// What this miner publishes as its delta: the honest one, or (devnet adversaries) a
    /// zero update / unchanged values, noise the size of an AdamW step, or a copy of
    /// another miner's delta of the window.
    async fn misbehave(&self, honest: Option<Arc<Vec<f32>>>, exchange: Exchange) -> Option<Arc<Vec<f32>>> {
        let ctx = &self.ctx;
        let len = ctx.slice_value_count();
        match ctx.behaviour {
            Behaviour::Honest => honest,
            Behaviour::Lazy => match exchange {
                Exchange::Update => Some(Arc::new(vec![0.0; len])),
                Exchange::Seed => honest,
            },
            Behaviour::Noise => {
                // Uniform noise with the standard deviation of one AdamW step (≈ lr).
                let half_width = (3f64.sqrt() * ctx.hparams.learning_rate) as f32;
                // Drawn from this node's key and the window: the same noise every run.
                let mut rng = StdRng::from_seed(ctx.hotkey.private_seed(NOISE_PURPOSE, &self.window.to_le_bytes()));
                let noise = (0..len).map(|_| rng.random_range(-half_width..=half_width));
                match (exchange, honest) {
                    (Exchange::Seed, Some(values)) => {
                        Some(Arc::new(values.iter().zip(noise).map(|(v, n)| v + n).collect()))
                    }
                    _ => Some(Arc::new(noise.collect())),
                }
            }
            Behaviour::Copier { victim } => self.copy_of(victim).await.map(Arc::new),
        }
    }

    /// `victim`'s delta of this window, read from its bucket once it is there.
    async fn copy_of(&self, victim: tessera_core::hotkey::Hotkey) -> Option<Vec<f32>> {
        let ctx = &self.ctx;
        let downloader = lookup::<crate::messages::SliceDownloaderMsg>(&ctx.name, ActorKind::SliceDownloader)?;
        let deadline = Instant::now() + ctx.settings.peer_deadline * 4;
        let window = self.window;
        while Instant::now() < deadline && !ctx.is_stopping() {
            let fetched = downloader
                .call(
                    |reply| crate::messages::SliceDownloaderMsg::Fetch { kind: SliceKind::Delta, window, reply },
                    Some(ctx.settings.peer_deadline * 2),
                )
                .await;
            if let Ok(CallResult::Success(outcome)) = fetched
                && let Some(slice) = outcome.slices.iter().find(|s| s.key.hotkey == victim)
                && let Ok(bytes) = std::fs::read(&slice.path)
            {
                let expected = ctx.expected_slice(SliceKind::Delta, window, Some(victim), None);
                if let Ok(view) = tessera_core::slice::decode(&bytes, &expected) {
                    return Some(view.values().into_owned());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warn!(miner = %ctx.name, window, "copier: the victim's delta never appeared");
        None
    }

    /// Update exchange: adds `outer_lr · mean(updates of window) − own update` at the
    /// window's positions, so the peers' mean update replaces the own one. Returns how many
    /// updates were averaged and their mean (nothing when there was nothing to replace).
    async fn apply_mean_update(&self, window: Window) -> Result<(u32, Option<Arc<Vec<f32>>>), RuntimeError> {
        let ctx = &self.ctx;
        let Some(own) = ctx.own_update(window) else {
            // Not trained here (joined or restarted since): the model holds no own update
            // of that window to replace, and the state averages bring it in step.
            debug!(miner = %ctx.name, window, "no own update of this window; nothing to replace");
            return Ok((0, None));
        };
        let (mean, accepted) = self.fetch_mean(SliceKind::Delta, window).await;
        let Some(mean) = mean else { return Ok((0, None)) };
        if mean.len() != own.len() {
            warn!(miner = %ctx.name, window, "the mean update does not match the own update's length; skipped");
            return Ok((0, None));
        }
        let outer_lr = self.outer_lr();
        let correction: Vec<f32> = mean.iter().zip(own.iter()).map(|(m, o)| outer_lr * m - o).collect();
        let indices = ctx.indices(window).await?;
        self.engine.run(move |ops| ops.add(&indices, &correction)).await??;
        Ok((accepted, Some(mean)))
    }

    /// After the state average of `window` overwrote positions that the mean update of
    /// `window - 1` had just moved, adds back what the state values lack there:
    /// `(outer_lr − 1) · mean update` (they already hold the plain mean update).
    pub(crate) async fn restore_outer_scaling(&self, window: Window, mean: &[f32]) -> Result<(), RuntimeError> {
        let outer_lr = self.outer_lr();
        if outer_lr == 1.0 || window == 0 {
            return Ok(());
        }
        let (state, delta) = (self.ctx.indices(window).await?, self.ctx.indices(window - 1).await?);
        let mut extra = vec![0f32; state.total_len()];
        for (at_state, at_delta) in state.overlap(&delta) {
            extra[at_state] = (outer_lr - 1.0) * mean[at_delta];
        }
        self.engine.run(move |ops| ops.add(&state, &extra)).await??;
        Ok(())
    }

    pub(crate) fn outer_lr(&self) -> f32 {
        self.ctx.hparams.exchange_outer_lr.unwrap_or(1.0) as f32
    }

    /// Mean loss on the held-out pages (loaded once), on the engine thread.
    pub(crate) async fn evaluate(&self) -> Result<f32, RuntimeError> {
        let ctx = &self.ctx;
        let batches = ctx
            .held_out
            .get_or_try_init(|| async {
                let pages = ctx.model.source.held_out_pages(ctx.settings.eval_pages.max(1)).await?;
                let spec = WindowSpec {
                    selection: PageSelection::Random,
                    window: 0,
                    n_pages: pages.len(),
                    seq_len: ctx.hparams.sequence_length,
                    batch_size: ctx.settings.batch_size.max(1),
                    max_concurrent_fetches: 4,
                };
                let mut data =
                    WindowData::load_pages(ctx.model.source.as_ref(), &ctx.model.tokenizer, &spec, pages).await?;
                data.batches.truncate(ctx.settings.eval_batches.max(1));
                Ok::<_, RuntimeError>(Arc::new(data.batches))
            })
            .await?
            .clone();
        let loss = self.engine.run(move |ops| ops.eval(&token_batches(&batches))).await??;
        MinerStats::add(&ctx.stats.evaluations, 1);
        Ok(loss)
    }

    /// State slices published since the model was saved (or `max_history` windows with
    /// `--sync_state`), applied window by window.
    pub(crate) async fn replay_state(&self, from: Window) -> Result<(), RuntimeError> {
        let ctx = &self.ctx;
        let total = self.window.saturating_sub(from);
        if total == 0 {
            return Ok(());
        }
        info!(miner = %ctx.name, from, to = self.window - 1, "syncing state from history");
        let bar = crate::progress::bar(total, format!("{}: state sync", ctx.name), false);
        for (i, w) in (from..self.window).enumerate() {
            let applied = self.average_and_apply(SliceKind::State, w).await?;
            bar.inc(1);
            info!(miner = %ctx.name, window = w, progress = format!("{}/{}", i + 1, total), slices = applied, "state sync");
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Averages the peers' `kind` slices of `window` into the model; returns how many.
    pub(crate) async fn average_and_apply(&self, kind: SliceKind, window: Window) -> Result<u32, RuntimeError> {
        let (mean, accepted) = self.fetch_mean(kind, window).await;
        if let Some(mean) = mean {
            let indices = self.ctx.indices(window).await?;
            self.engine.run(move |ops| ops.apply(&indices, &mean)).await??;
        }
        Ok(accepted)
    }

    /// The mean of the valid `kind` slices of `window` (the own one included) and how
    /// many there were; nothing when the StateSyncer is away.
    pub(crate) async fn fetch_mean(&self, kind: SliceKind, window: Window) -> (Option<Arc<Vec<f32>>>, u32) {
        let ctx = &self.ctx;
        let Some(syncer) = lookup::<StateSyncerMsg>(&ctx.name, ActorKind::StateSyncer) else {
            warn!(miner = %ctx.name, %kind, window, "no state syncer running; skipping this average");
            return (None, 0);
        };
        let deadline = ctx.settings.peer_deadline * 6 + Duration::from_secs(10);
        match syncer.call(|reply| StateSyncerMsg::Average { kind, window, reply }, Some(deadline)).await {
            Ok(CallResult::Success(outcome)) => (outcome.mean, outcome.accepted),
            Ok(_) | Err(_) => {
                warn!(miner = %ctx.name, %kind, window, "the state syncer did not answer; skipping this average");
                (None, 0)
            }
        }
    }

    /// How long after the window's first block this window's task started.
    fn seconds_late(&self) -> f64 {
        let ctx = &self.ctx;
        let block_ms = ctx.settings.block_time.as_millis() as u64;
        let bounds = lock(&ctx.block_times).window_bounds(&ctx.schedule, self.window, block_ms);
        bounds.map_or(0.0, |(start, _)| ((crate::context::unix_ms() - start).max(0) as f64) / 1000.0)
    }

    /// Training time over the window's duration (observed block times, else nominal).
    fn utilization(&self, train_secs: f64) -> f64 {
        let ctx = &self.ctx;
        let block_ms = ctx.settings.block_time.as_millis() as u64;
        let span = lock(&ctx.block_times).window_bounds(&ctx.schedule, self.window, block_ms);
        let window_secs = match span {
            Some((start, end)) if end > start => (end - start) as f64 / 1000.0,
            _ => (ctx.schedule.window_length() * block_ms) as f64 / 1000.0,
        };
        (train_secs / window_secs.max(1e-3)).clamp(0.0, 1.0)
    }

    pub(crate) async fn gather(&self, window: Window) -> Result<Arc<Vec<f32>>, RuntimeError> {
        let indices = self.ctx.indices(window).await?;
        Ok(Arc::new(self.engine.run(move |ops| ops.gather(&indices)).await??))
    }

    fn upload(&self, kind: SliceKind, window: Window, values: Arc<Vec<f32>>) {
        match lookup::<SliceUploaderMsg>(&self.ctx.name, ActorKind::SliceUploader) {
            Some(uploader) => {
                if uploader.cast(SliceUploaderMsg::Upload { kind, window, values }).is_ok() {
                    MinerStats::add(&self.ctx.stats.uploads_requested, 1);
                }
            }
            None => warn!(miner = %self.ctx.name, %kind, window, "no slice uploader running; slice not published"),
        }
    }

    async fn load_data(&self) -> Result<WindowData, RuntimeError> {
        let ctx = &self.ctx;
        let spec = WindowSpec {
            // `--random`: pages from this miner's own key, which no validator can predict
            // (as the seed's random pages) and a restart draws again.
            selection: if ctx.settings.random {
                PageSelection::Keyed(ctx.hotkey.private_seed(RANDOM_PAGES_PURPOSE, &[]))
            } else {
                PageSelection::Uid(ctx.uid)
            },
            window: self.window,
            n_pages: ctx.settings.pages_per_window.max(1),
            seq_len: ctx.hparams.sequence_length,
            batch_size: ctx.settings.batch_size.max(1),
            max_concurrent_fetches: 4,
        };
        Ok(WindowData::load(ctx.model.source.as_ref(), &ctx.model.tokenizer, &spec).await?)
    }
}

/// Why a window trained nothing, in words an operator can act on.
/// The engine's view of the data's micro-batches (borrowed, no copy).
pub(crate) fn token_batches(batches: &[Batch]) -> Vec<TokenBatch<'_>> {
    batches
        .iter()
        .map(|b| TokenBatch {
            tokens: &b.tokens,
            loss_mask: &b.loss_mask,
            batch_size: b.batch_size,
            seq_len: b.seq_len,
        })
        .collect()
}

fn idle_reason(report: &WindowReport, batches: usize, late_secs: f64, prep_secs: f64) -> String {
    if batches == 0 {
        "no training data for this window".to_owned()
    } else if report.exhausted {
        format!(
            "the window ended before training began: it started {late_secs:.1}s late (the last window's \
             uploads, averages and evaluation ran into it) and its averages and data took {prep_secs:.1}s"
        )
    } else if report.skipped > 0 {
        format!("the sample rate ({:.3}) skipped all {} micro-batches", report.sample_rate, report.skipped)
    } else {
        "nothing to train".to_owned()
    }
}
