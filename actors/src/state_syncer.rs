//! StateSyncer: the per-window averages. Asks the SliceDownloader for a window's slices,
//! then validates every byte of each (wire format, signature, hash, finiteness, the
//! expected window, kind, model and size) and folds the valid ones into a streaming mean,
//! one slice in memory at a time, on a blocking thread.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tessera_core::slice::{MeanAccumulator, SliceKind, decode};
use tessera_core::window::Window;
use tracing::{debug, warn};

use crate::context::{ActorKind, MinerContext, lookup};
use crate::messages::{AverageOutcome, FetchOutcome, SliceDownloaderMsg, StateSyncerMsg};
use crate::stats::MinerStats;

pub struct StateSyncer;

pub struct StateSyncerState {
    ctx: Arc<MinerContext>,
}

impl Actor for StateSyncer {
    type Msg = StateSyncerMsg;
    type State = StateSyncerState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ctx.telemetry.stats.record_start(ActorKind::StateSyncer);
        Ok(StateSyncerState { ctx })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StateSyncerMsg::Average { kind, window, reply } => {
                state.ctx.faults.maybe_panic(ActorKind::StateSyncer);
                let ctx = state.ctx.clone();
                tokio::spawn(average(ctx, kind, window, reply));
            }
        }
        Ok(())
    }
}

async fn average(ctx: Arc<MinerContext>, kind: SliceKind, window: Window, reply: RpcReplyPort<AverageOutcome>) {
    let Some(downloader) = lookup::<SliceDownloaderMsg>(&ctx.id.name, ActorKind::SliceDownloader) else {
        warn!(miner = %ctx.id.name, "no slice downloader running; no average this time");
        let _ = reply.send(AverageOutcome::default());
        return;
    };
    let fetched =
        downloader.call(|reply| SliceDownloaderMsg::Fetch { kind, window, reply }, Some(ctx.deadlines().fetch())).await;
    let fetched = match fetched {
        Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
        Ok(_) | Err(_) => {
            warn!(miner = %ctx.id.name, %kind, window, "the slice downloader did not answer; no average this time");
            FetchOutcome::default()
        }
    };
    let worker = ctx.clone();
    let outcome = tokio::task::spawn_blocking(move || fold(&worker, kind, window, &fetched)).await.unwrap_or_default();
    debug!(miner = %ctx.id.name, %kind, window, accepted = outcome.accepted, rejected = outcome.rejected, "average");
    let _ = reply.send(outcome);
}

fn fold(ctx: &MinerContext, kind: SliceKind, window: Window, fetched: &FetchOutcome) -> AverageOutcome {
    let value_count = ctx.slice_value_count();
    let view = ctx.peer_view();
    let registered = (view.refreshed_ms > 0).then_some(&view.registered);
    let mut acc = MeanAccumulator::new(value_count);
    let mut outcome = AverageOutcome::default();
    // In hotkey order, not arrival order: f32 sums depend on their order, and every node
    // that fetched the same slices must compute the same mean to the bit.
    let mut ordered: Vec<_> = fetched.slices.iter().collect();
    ordered.sort_by_key(|slice| (slice.key.hotkey.0, slice.key.to_string()));
    for slice in ordered {
        let bytes = match std::fs::read(&slice.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(miner = %ctx.id.name, path = %slice.path.display(), error = %e, "cannot read a cached slice");
                outcome.rejected += 1;
                continue;
            }
        };
        let expected = ctx.expected_slice(kind, window, Some(slice.key.hotkey), registered);
        let added = decode(&bytes, &expected)
            .map_err(|e| (e.reason(), e.to_string()))
            .and_then(|view| acc.add(&view).map_err(|e| ("aggregate", e.to_string())));
        match added {
            Ok(()) => outcome.accepted += 1,
            Err((reason, message)) => {
                warn!(miner = %ctx.id.name, bucket = %slice.bucket, key = %slice.key, reason, error = %message, "rejected a slice");
                ctx.telemetry.stats.reject(reason);
                outcome.rejected += 1;
            }
        }
    }
    MinerStats::add(&ctx.telemetry.stats.slices_averaged, u64::from(outcome.accepted));
    outcome.mean = match acc.finish_finite() {
        Ok(mean) => mean.map(Arc::new),
        Err(e) => {
            // Not applied: the model stays finite; the window goes on without this average.
            let peers: Vec<String> = fetched.slices.iter().map(|s| s.key.hotkey.to_ss58()).collect();
            warn!(miner = %ctx.id.name, %kind, window, error = %e, peers = peers.join(","), "refused a non-finite mean");
            ctx.telemetry.stats.reject("non_finite_mean");
            None
        }
    };
    outcome
}
