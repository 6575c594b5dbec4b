//! Trainer: the window loop of the seed, and the only writer of the model. A validator
//! runs it as its Evaluator. Its handler only starts and finishes window tasks
//! ([`crate::window`]: the node's [`WindowPlan`] run phase by phase), every computation
//! on the engine thread. A restarted Trainer takes the engine back (the model survives), or
//! rebuilds it from the last checkpoint and re-syncs the state slices published since.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tessera_core::window::Window;
use tessera_model::train::SampleRate;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, warn};

use crate::context::{MinerContext, lock};
use crate::engine::{EngineError, EngineHandle, EngineSpec};
use crate::messages::{ShutdownReport, TrainerMsg};
use crate::stats::MinerStats;
use crate::window::{WindowPlan, WindowRun};

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
        let kind = ctx.window_actor();
        ctx.telemetry.stats.record_start(kind);
        let restarted = ctx.telemetry.stats.restarts().get(&kind).copied().unwrap_or(0) > 0;
        let kept = lock(&ctx.model.engine).take().filter(EngineHandle::is_alive);
        let (engine, resync_from) = match kept {
            Some(engine) => {
                info!(miner = %ctx.id.name, "trainer started; the model survived in the engine");
                (engine, None)
            }
            None => {
                if restarted {
                    MinerStats::add(&ctx.telemetry.stats.engine_rebuilds, 1);
                    warn!(miner = %ctx.id.name, "the model was lost; rebuilding it from the last checkpoint");
                }
                let engine = EngineHandle::start(engine_spec(&ctx)).await?;
                let history_start =
                    ctx.clock_now().window.saturating_sub(ctx.network.max_history.load(Ordering::Relaxed));
                if let Some(meta) = &engine.start.resumed {
                    ctx.telemetry.stats.resumed_from_checkpoint.store(true, Ordering::Relaxed);
                    // Up to three model-sized buffers: read off the async threads.
                    let (restorer, window) = (ctx.clone(), meta.window);
                    tokio::task::spawn_blocking(move || restorer.restore_sparse_state(window)).await?;
                }
                let resync_from = match &engine.start.resumed {
                    Some(meta) => Some((meta.window + 1).max(history_start)),
                    None if ctx.settings.sync_state && !ctx.settings.baseline => Some(history_start),
                    None => None,
                };
                info!(
                    miner = %ctx.id.name,
                    backend = %engine.start.backend,
                    resumed_window = engine.start.resumed.as_ref().map(|m| m.window),
                    "training engine ready"
                );
                (engine, resync_from)
            }
        };
        *lock(&ctx.model.engine) = Some(engine.clone());
        myself.send_interval(WATCHDOG_PERIOD, || TrainerMsg::Tick);
        let clock = ctx.clock_now();
        if clock.started {
            myself.cast(TrainerMsg::WindowStarted { window: clock.window, block: clock.block })?;
        }
        let rate = ctx.model.sample_rate.clone();
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
                        warn!(miner = %state.ctx.id.name, window = finished, error = %e, "window failed");
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
                state.ctx.faults.maybe_panic(state.ctx.window_actor());
                if !state.engine.is_alive() {
                    error!(miner = %state.ctx.id.name, "the training engine died");
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
        miner: ctx.id.name.clone(),
        device: ctx.model.spec.device,
        compute: ctx.model.spec.compute,
        config: ctx.model.spec.llama.clone(),
        settings: ctx.model.spec.optim.clone(),
        checkpoints: ctx.model.spec.checkpoints.clone(),
        init_seed: ctx.model.spec.init_seed,
    }
}

impl TrainerState {
    fn begin(&mut self, myself: &ActorRef<TrainerMsg>, window: Window) {
        if self.last_done.is_some_and(|done| window <= done) {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let job = WindowRun {
            ctx: self.ctx.clone(),
            engine: self.engine.clone(),
            plan: WindowPlan::for_node(&self.ctx),
            window,
            rate: self.rate.clone(),
            resync_from: self.resync_from.take(),
            cancel: cancel.clone(),
            ready_since: (self.restarted && self.task.is_none() && self.last_done.is_none()).then_some(self.started_at),
        };
        let me = myself.clone();
        let span = tracing::info_span!("window", miner = %self.ctx.id.name, window);
        let handle = tokio::spawn(
            async move {
                let result = job.run().await;
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
                    MinerStats::add(&ctx.telemetry.stats.checkpoints_written, 1);
                    info!(miner = %ctx.id.name, window = meta.window, step = meta.step, "checkpoint written at shutdown");
                    ShutdownReport { checkpoint_window: Some(meta.window), error: None }
                }
                Ok(Err(e)) => ShutdownReport { checkpoint_window: None, error: Some(e.to_string()) },
                Err(e) => ShutdownReport { checkpoint_window: None, error: Some(e.to_string()) },
            };
            let _ = reply.send(report);
        });
    }
}
