//! The process side: start the host with its miners, watch it, shut it down gracefully.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, SpawnErr};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::context::{ActorKind, MinerContext, lookup};
use crate::messages::{SliceUploaderMsg, TrainerMsg};
use crate::supervisor::{HostArgs, HostStatus, HostSupervisor};

/// How one miner shut down.
#[derive(Debug, Clone)]
pub struct MinerShutdown {
    pub miner: String,
    pub checkpoint_window: Option<u64>,
    /// Uploads finished in time (false: abandoned at the deadline).
    pub uploads_drained: bool,
    pub error: Option<String>,
}

/// A running host: its miners under the HostSupervisor.
pub struct Host {
    actor: ActorRef<()>,
    join: JoinHandle<()>,
    miners: Vec<Arc<MinerContext>>,
    status: watch::Receiver<HostStatus>,
}

impl Host {
    /// Starts every miner's supervised tree.
    pub async fn start(miners: Vec<Arc<MinerContext>>) -> Result<Self, SpawnErr> {
        let (tx, status) = watch::channel(HostStatus::default());
        let args = HostArgs { miners: miners.clone(), status: tx };
        static HOSTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!("host-{}", HOSTS.fetch_add(1, Ordering::Relaxed));
        let (actor, join) = Actor::spawn(Some(name), HostSupervisor, args).await?;
        info!(miners = miners.len(), "host started");
        Ok(Self { actor, join, miners, status })
    }

    pub fn miners(&self) -> &[Arc<MinerContext>] {
        &self.miners
    }

    /// A receiver of the host's status, for the health endpoints.
    pub fn status_receiver(&self) -> watch::Receiver<HostStatus> {
        self.status.clone()
    }

    pub fn status(&self) -> HostStatus {
        self.status.borrow().clone()
    }

    /// Resolves when the host stops by itself: every miner failed.
    pub async fn stopped(&mut self) -> HostStatus {
        let _ = self.status.wait_for(|s| s.running.is_empty() && !s.failed.is_empty()).await;
        self.status.borrow().clone()
    }

    /// Graceful stop within `timeout`: no new work; each Trainer stops between
    /// micro-batches and writes a checkpoint; uploads in flight finish or are abandoned at
    /// the deadline (an abandoned PUT leaves no object); then the actors stop.
    pub async fn shutdown(self, timeout: Duration) -> Vec<MinerShutdown> {
        let deadline = Instant::now() + timeout;
        for ctx in &self.miners {
            ctx.stopping.store(true, Ordering::Release);
        }
        let reports = futures::future::join_all(self.miners.iter().map(|ctx| shutdown_miner(ctx, deadline))).await;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
        if self.actor.stop_and_wait(Some("shutdown".to_owned()), Some(left)).await.is_err() {
            warn!("actors did not stop in time; leaving them");
        }
        self.join.abort();
        reports
    }
}

async fn shutdown_miner(ctx: &Arc<MinerContext>, deadline: Instant) -> MinerShutdown {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let mut report =
        MinerShutdown { miner: ctx.id.name.clone(), checkpoint_window: None, uploads_drained: false, error: None };
    match lookup::<TrainerMsg>(&ctx.id.name, ctx.window_actor()) {
        Some(trainer) => match trainer.call(TrainerMsg::Shutdown, Some(remaining())).await {
            Ok(CallResult::Success(r)) => {
                report.checkpoint_window = r.checkpoint_window;
                report.error = r.error;
            }
            _ => report.error = Some("the trainer did not checkpoint before the deadline".to_owned()),
        },
        None => report.error = Some("no trainer running".to_owned()),
    }
    if let Some(uploader) = lookup::<SliceUploaderMsg>(&ctx.id.name, ActorKind::SliceUploader) {
        report.uploads_drained =
            matches!(uploader.call(SliceUploaderMsg::Drain, Some(remaining())).await, Ok(CallResult::Success(_)));
    }
    info!(
        miner = %ctx.id.name,
        checkpoint_window = report.checkpoint_window,
        uploads_drained = report.uploads_drained,
        error = report.error.as_deref().unwrap_or("none"),
        "miner shut down"
    );
    report
}
