//! Trainer: the window loop of the seed, and the only writer of the model. Its handler only
//! starts and finishes window tasks; each window task runs the seed's steps in order —
//! state average in, train on the window's pages until the window ends, delta out, delta
//! average in, state out, history pruned, checkpoint when due — with every computation on
//! the engine thread. A restarted Trainer takes the engine back (the model survives), or
//! rebuilds it from the last checkpoint and re-syncs the state slices published since.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::slice::SliceKind;
use tessera_core::window::Window;
use tessera_data::{PageSelection, WindowData, WindowSpec};
use tessera_model::train::SampleRate;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, warn};

use crate::context::{ActorKind, Fault, MinerContext, lock, lookup};
use crate::engine::{EngineError, EngineHandle, EngineSpec};
use crate::error::RuntimeError;
use crate::messages::{ShutdownReport, SliceUploaderMsg, StateSyncerMsg, TrainerMsg, WindowOutcome};
use crate::stats::{MinerStats, WindowSummary};

/// How often the Trainer checks that the engine is alive.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);

pub struct Trainer;

/// A running window task; dropping it (the Trainer stopped or crashed) cancels the
/// training between micro-batches and aborts the rest.
struct WindowTask {
    window: Window,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Drop for WindowTask {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Release);
        self.handle.abort();
    }
}

pub struct TrainerState {
    ctx: Arc<MinerContext>,
    engine: EngineHandle,
    task: Option<WindowTask>,
    rate: Arc<Mutex<SampleRate>>,
    /// State slices to replay before the next window: from this window on.
    resync_from: Option<Window>,
    started_at: Instant,
    restarted: bool,
    last_done: Option<Window>,
    shutdown: Option<RpcReplyPort<ShutdownReport>>,
}

impl Actor for Trainer {
    type Msg = TrainerMsg;
    type State = TrainerState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let started_at = Instant::now();
        ctx.stats.record_start(ActorKind::Trainer);
        let restarted = ctx.stats.restarts().get(&ActorKind::Trainer).copied().unwrap_or(0) > 0;
        let kept = lock(&ctx.engine).take().filter(EngineHandle::is_alive);
        let (engine, resync_from) = match kept {
            Some(engine) => {
                info!(miner = %ctx.name, "trainer started; the model survived in the engine");
                (engine, None)
            }
            None => {
                if restarted {
                    MinerStats::add(&ctx.stats.engine_rebuilds, 1);
                    warn!(miner = %ctx.name, "the model was lost; rebuilding it from the last checkpoint");
                }
                let engine = EngineHandle::start(engine_spec(&ctx)).await?;
                let history_start = ctx.clock_now().window.saturating_sub(ctx.max_history.load(Ordering::Relaxed));
                let resync_from = match &engine.start.resumed {
                    Some(meta) => Some((meta.window + 1).max(history_start)),
                    None if ctx.settings.sync_state && !ctx.settings.baseline => Some(history_start),
                    None => None,
                };
                info!(
                    miner = %ctx.name,
                    backend = %engine.start.backend,
                    resumed_window = engine.start.resumed.as_ref().map(|m| m.window),
                    "training engine ready"
                );
                (engine, resync_from)
            }
        };
        *lock(&ctx.engine) = Some(engine.clone());
        myself.send_interval(WATCHDOG_PERIOD, || TrainerMsg::Tick);
        let clock = ctx.clock_now();
        if clock.started {
            myself.cast(TrainerMsg::WindowStarted { window: clock.window, block: clock.block })?;
        }
        let rate = ctx.sample_rate.clone();
        Ok(TrainerState {
            ctx,
            engine,
            task: None,
            rate,
            resync_from,
            started_at,
            restarted,
            last_done: None,
            shutdown: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrainerMsg::WindowStarted { window, .. } => {
                if state.task.is_none() && !state.ctx.is_stopping() {
                    state.begin(&myself, window);
                }
            }
            TrainerMsg::WindowDone(result) => {
                let finished = state.task.take().map(|t| t.window);
                match result {
                    Ok(outcome) => {
                        state.last_done = Some(outcome.window);
                    }
                    Err(e) => {
                        warn!(miner = %state.ctx.name, window = finished, error = %e, "window failed");
                    }
                }
                if !state.engine.is_alive() {
                    return Err(EngineError::Died.into());
                }
                if let Some(reply) = state.shutdown.take() {
                    state.checkpoint_and_reply(reply);
                    return Ok(());
                }
                let clock = state.ctx.clock_now();
                if clock.started && Some(clock.window) != finished && !state.ctx.is_stopping() {
                    state.begin(&myself, clock.window);
                }
            }
            TrainerMsg::Tick => {
                state.ctx.faults.maybe_panic(ActorKind::Trainer);
                if !state.engine.is_alive() {
                    error!(miner = %state.ctx.name, "the training engine died");
                    return Err(EngineError::Died.into());
                }
            }
            TrainerMsg::Shutdown(reply) => {
                state.ctx.stopping.store(true, Ordering::Release);
                if state.task.is_some() {
                    // The window task sees `stopping` between micro-batches and ends.
                    state.shutdown = Some(reply);
                } else {
                    state.checkpoint_and_reply(reply);
                }
            }
        }
        Ok(())
    }
}

fn engine_spec(ctx: &MinerContext) -> EngineSpec {
    EngineSpec {
        miner: ctx.name.clone(),
        device: ctx.model.device,
        config: ctx.model.llama.clone(),
        settings: ctx.model.optim.clone(),
        checkpoints: ctx.model.checkpoints.clone(),
    }
}

impl TrainerState {
    fn begin(&mut self, myself: &ActorRef<TrainerMsg>, window: Window) {
        if self.last_done.is_some_and(|done| window <= done) {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let job = WindowJob {
            ctx: self.ctx.clone(),
            engine: self.engine.clone(),
            window,
            rate: self.rate.clone(),
            resync_from: self.resync_from.take(),
            cancel: cancel.clone(),
            ready_since: (self.restarted && self.task.is_none() && self.last_done.is_none()).then_some(self.started_at),
        };
        let me = myself.clone();
        let span = tracing::info_span!("window", miner = %self.ctx.name, window);
        let handle = tokio::spawn(
            async move {
                let result = job.run().await.map_err(|e| e.to_string());
                let _ = me.cast(TrainerMsg::WindowDone(result));
            }
            .instrument(span),
        );
        self.task = Some(WindowTask { window, cancel, handle });
    }

    fn checkpoint_and_reply(&mut self, reply: RpcReplyPort<ShutdownReport>) {
        let (ctx, engine) = (self.ctx.clone(), self.engine.clone());
        let window = self.last_done.unwrap_or_else(|| ctx.clock_now().window);
        tokio::spawn(async move {
            let result = engine.run(move |ops| ops.checkpoint(window)).await;
            let report = match result {
                Ok(Ok(meta)) => {
                    MinerStats::add(&ctx.stats.checkpoints_written, 1);
                    info!(miner = %ctx.name, window = meta.window, step = meta.step, "checkpoint written at shutdown");
                    ShutdownReport { checkpoint_window: Some(meta.window), error: None }
                }
                Ok(Err(e)) => ShutdownReport { checkpoint_window: None, error: Some(e.to_string()) },
                Err(e) => ShutdownReport { checkpoint_window: None, error: Some(e.to_string()) },
            };
            let _ = reply.send(report);
        });
    }
}

/// One window of the seed's loop.
struct WindowJob {
    ctx: Arc<MinerContext>,
    engine: EngineHandle,
    window: Window,
    rate: Arc<Mutex<SampleRate>>,
    resync_from: Option<Window>,
    cancel: Arc<AtomicBool>,
    /// Set for the first window after a restart: when the restarted Trainer started.
    ready_since: Option<Instant>,
}

impl WindowJob {
    async fn run(self) -> Result<WindowOutcome, RuntimeError> {
        let (ctx, window) = (&self.ctx, self.window);
        let baseline = ctx.settings.baseline;
        let mut state_slices = 0;
        if !baseline {
            if let Some(from) = self.resync_from {
                self.replay_state(from).await?;
            }
            state_slices = self.average_and_apply(SliceKind::State, window).await?;
        }

        let data = self.load_data().await?;
        let batches = Arc::new(data.batches);
        if let Some(since) = self.ready_since {
            let ms = since.elapsed().as_millis() as u64;
            ctx.stats.last_restart_ready_ms.store(ms.max(1), Ordering::Relaxed);
            info!(miner = %ctx.name, window, ready_ms = ms, "training again after a restart");
        }
        let rate = *lock(&self.rate);
        let clock = ctx.clock.subscribe();
        let (stop_ctx, cancel) = (ctx.clone(), self.cancel.clone());
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
                    clock.borrow().window != window || stop_ctx.is_stopping() || cancel.load(Ordering::Acquire)
                };
                let report = ops.train(&batches, &mut rate, &mut || rng.random::<f64>(), &window_ended);
                (report.map(|r| (r, ops.step_count(), ops.current_lr())), rate)
            })
            .await?;
        let (report, step, lr) = report?;
        *lock(&self.rate) = rate;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        if ctx.is_stopping() || self.cancel.load(Ordering::Acquire) {
            return Ok(WindowOutcome { window, trained: report.micro_batches > 0 });
        }

        // End of the window: delta out, peers' deltas of the previous window in, state out.
        // A baseline miner trains alone: nothing in, nothing out.
        let mut delta_slices = 0;
        if !baseline {
            let delta = self.gather(window).await?;
            self.upload(SliceKind::Delta, window, delta);
            if window > 0 {
                delta_slices = self.average_and_apply(SliceKind::Delta, window - 1).await?;
            }
            let state = self.gather(window + 1).await?;
            self.upload(SliceKind::State, window + 1, state);
            if let Some(uploader) = lookup::<SliceUploaderMsg>(&ctx.name, ActorKind::SliceUploader) {
                let max_history = ctx.max_history.load(Ordering::Relaxed);
                let _ = uploader.cast(SliceUploaderMsg::Prune { before: window.saturating_sub(max_history) });
            }
        }

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
        };
        info!(
            miner = %ctx.name,
            window,
            loss = report.mean_loss,
            tokens_per_sec = summary.tokens_per_sec.round(),
            micro_batches = report.micro_batches,
            sample_rate = report.sample_rate,
            lr,
            state_slices,
            delta_slices,
            "window done"
        );
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
        Ok(WindowOutcome { window, trained: report.micro_batches > 0 })
    }

    /// State slices published since the model was saved (or `max_history` windows with
    /// `--sync_state`), applied window by window.
    async fn replay_state(&self, from: Window) -> Result<(), RuntimeError> {
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
    async fn average_and_apply(&self, kind: SliceKind, window: Window) -> Result<u32, RuntimeError> {
        let ctx = &self.ctx;
        let Some(syncer) = lookup::<StateSyncerMsg>(&ctx.name, ActorKind::StateSyncer) else {
            warn!(miner = %ctx.name, %kind, window, "no state syncer running; skipping this average");
            return Ok(0);
        };
        let deadline = ctx.settings.peer_deadline * 6 + Duration::from_secs(10);
        let outcome = match syncer.call(|reply| StateSyncerMsg::Average { kind, window, reply }, Some(deadline)).await {
            Ok(CallResult::Success(outcome)) => outcome,
            Ok(_) | Err(_) => {
                warn!(miner = %ctx.name, %kind, window, "the state syncer did not answer; skipping this average");
                return Ok(0);
            }
        };
        if let Some(mean) = outcome.mean {
            let indices = ctx.indices(window).await?;
            self.engine.run(move |ops| ops.apply(&indices, &mean)).await??;
        }
        Ok(outcome.accepted)
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

    async fn gather(&self, window: Window) -> Result<Arc<Vec<f32>>, RuntimeError> {
        let indices = self.ctx.indices(window).await?;
        Ok(Arc::new(self.engine.run(move |ops| ops.gather(&indices)).await??))
    }

    fn upload(&self, kind: SliceKind, window: Window, values: Arc<Vec<f32>>) {
        match lookup::<SliceUploaderMsg>(&self.ctx.name, ActorKind::SliceUploader) {
            Some(uploader) => {
                let _ = uploader.cast(SliceUploaderMsg::Upload { kind, window, values });
            }
            None => warn!(miner = %self.ctx.name, %kind, window, "no slice uploader running; slice not published"),
        }
    }

    async fn load_data(&self) -> Result<WindowData, RuntimeError> {
        let ctx = &self.ctx;
        let spec = WindowSpec {
            selection: if ctx.settings.random { PageSelection::Random } else { PageSelection::Uid(ctx.uid) },
            window: self.window,
            n_pages: ctx.settings.pages_per_window.max(1),
            seq_len: ctx.hparams.sequence_length,
            batch_size: ctx.settings.batch_size.max(1),
            max_concurrent_fetches: 4,
        };
        Ok(WindowData::load(ctx.model.source.as_ref(), &ctx.model.tokenizer, &spec).await?)
    }
}
