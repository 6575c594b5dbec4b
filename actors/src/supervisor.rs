//! Supervision. Each miner is a `ractor-supervisor` static supervisor (OTP one-for-one:
//! a failed child alone is restarted, after an exponential backoff; more than
//! `max_restarts` restarts within `restart_period` is a meltdown that stops the miner).
//! The HostSupervisor owns the miners of the process: a miner's meltdown is logged and
//! the others go on; when none is left the host stops with the reasons.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_supervisor::{
    ChildBackoffFn, ChildSpec, Restart, SpawnFn, Supervisor, SupervisorArguments, SupervisorOptions, SupervisorStrategy,
};
use tokio::sync::watch;
use tracing::{error, info};

use crate::chain_listener::ChainListener;
use crate::context::{ActorKind, MinerContext, actor_name};
use crate::slice_downloader::SliceDownloader;
use crate::slice_uploader::SliceUploader;
use crate::state_syncer::StateSyncer;
use crate::trainer::Trainer;
use crate::weight_setter::WeightSetter;
use crate::window_clock::WindowClock;

/// Registry name of a miner's supervisor.
pub fn supervisor_name(miner: &str) -> String {
    format!("{miner}/supervisor")
}

/// Restart delay: `first`, doubling with each restart in a row, capped at `max`.
pub fn backoff(first: Duration, max: Duration, restarts_in_a_row: usize) -> Duration {
    let exponent = restarts_in_a_row.saturating_sub(1).min(20) as u32;
    first.saturating_mul(1u32 << exponent).min(max)
}

fn child_spec(ctx: &Arc<MinerContext>, kind: ActorKind) -> ChildSpec {
    let spawn_ctx = ctx.clone();
    let spawn_fn = SpawnFn::new(move |supervisor: ActorCell, id: String| {
        let ctx = spawn_ctx.clone();
        async move {
            let cell = match kind {
                ActorKind::ChainListener => {
                    Supervisor::spawn_linked(id, ChainListener, ctx, supervisor).await?.0.get_cell()
                }
                ActorKind::WindowClock => {
                    Supervisor::spawn_linked(id, WindowClock, ctx, supervisor).await?.0.get_cell()
                }
                ActorKind::StateSyncer => {
                    Supervisor::spawn_linked(id, StateSyncer, ctx, supervisor).await?.0.get_cell()
                }
                ActorKind::SliceDownloader => {
                    Supervisor::spawn_linked(id, SliceDownloader, ctx, supervisor).await?.0.get_cell()
                }
                ActorKind::SliceUploader => {
                    Supervisor::spawn_linked(id, SliceUploader, ctx, supervisor).await?.0.get_cell()
                }
                ActorKind::Trainer | ActorKind::Evaluator => {
                    Supervisor::spawn_linked(id, Trainer, ctx, supervisor).await?.0.get_cell()
                }
                ActorKind::WeightSetter => {
                    Supervisor::spawn_linked(id, WeightSetter, ctx, supervisor).await?.0.get_cell()
                }
            };
            Ok(cell)
        }
    });
    let (first, max) = (ctx.settings.restart_backoff, ctx.settings.restart_backoff_max);
    let miner = ctx.id.name.clone();
    ChildSpec {
        id: actor_name(&ctx.id.name, kind),
        restart: Restart::Transient,
        spawn_fn,
        backoff_fn: Some(ChildBackoffFn::new(move |child, restarts, _, _| {
            let delay = backoff(first, max, restarts);
            info!(miner = %miner, child, restarts, delay_ms = delay.as_millis() as u64, "restarting a failed actor");
            Some(delay)
        })),
        reset_after: Some(ctx.settings.restart_period),
    }
}

/// The node's supervisor arguments: its six actors (a miner's or a validator's), one-for-one, with its restart limits.
pub fn miner_supervisor_args(ctx: &Arc<MinerContext>) -> SupervisorArguments {
    SupervisorArguments {
        child_specs: ActorKind::for_role(&ctx.id.role).iter().map(|&kind| child_spec(ctx, kind)).collect(),
        options: SupervisorOptions {
            strategy: SupervisorStrategy::OneForOne,
            max_restarts: ctx.settings.max_restarts as usize,
            max_window: ctx.settings.restart_period,
            reset_after: Some(ctx.settings.restart_period),
        },
    }
}

/// What the host reports to the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    pub running: Vec<String>,
    /// Miners that stopped after too many restarts, with the reason.
    pub failed: Vec<(String, String)>,
}

pub struct HostSupervisor;

pub struct HostArgs {
    pub miners: Vec<Arc<MinerContext>>,
    pub status: watch::Sender<HostStatus>,
}

pub struct HostState {
    status: watch::Sender<HostStatus>,
}

impl Actor for HostSupervisor {
    type Msg = ();
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(&self, myself: ActorRef<()>, args: HostArgs) -> Result<HostState, ActorProcessingErr> {
        let mut running = Vec::new();
        for ctx in &args.miners {
            let name = supervisor_name(&ctx.id.name);
            Actor::spawn_linked(Some(name), Supervisor, miner_supervisor_args(ctx), myself.get_cell()).await?;
            running.push(ctx.id.name.clone());
        }
        args.status.send_replace(HostStatus { running, failed: Vec::new() });
        Ok(HostState { status: args.status })
    }

    async fn handle(&self, _myself: ActorRef<()>, _msg: (), _state: &mut HostState) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<()>, state: &mut HostState) -> Result<(), ActorProcessingErr> {
        state.status.send_modify(|s| s.running.clear());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason, failed) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string(), true),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_default(), false),
            _ => return Ok(()),
        };
        let Some(miner) = cell.get_name().and_then(|n| n.strip_suffix("/supervisor").map(str::to_owned)) else {
            return Ok(());
        };
        if failed {
            error!(miner = %miner, %reason, "miner stopped: its actors failed more often than the restart limit allows");
        } else {
            info!(miner = %miner, "miner stopped");
        }
        let mut left = 0;
        state.status.send_modify(|s| {
            s.running.retain(|m| m != &miner);
            if failed {
                s.failed.push((miner.clone(), reason.clone()));
            }
            left = s.running.len();
        });
        if left == 0 {
            myself.stop(Some("every miner of this process has stopped".to_owned()));
        }
        Ok(())
    }
}
