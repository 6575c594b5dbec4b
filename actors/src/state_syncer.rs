//! StateSyncer: the per-window averages. Asks the SliceDownloader for a window's slices,
//! then validates every byte of each (wire format, signature, hash, finite and plausible
//! values, the expected window, kind, model and size) and folds the valid ones into a
//! streaming mean, one slice in memory at a time, on a blocking thread: a first pass
//! measures each slice's distance from the centre, a second adds each clipped to the
//! radius those distances set (`tessera_core::slice::aggregate`), naming every peer pulled back.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tessera_core::slice::{
    CLIP_FACTOR, MeanAccumulator, SliceKind, Zeros, centred_radius, clip_radius, decode, deviation_norm, scales_within,
};
use tessera_core::sparseloco;
use tessera_core::window::Window;
use tracing::{debug, warn};

use crate::context::{ActorKind, MinerContext, lookup};
use crate::messages::{AverageOutcome, FetchOutcome, FetchedSlice, SliceDownloaderMsg, SliceVerdict, StateSyncerMsg};
use crate::sparse::delta_payload;
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
            StateSyncerMsg::Average { kind, window, center, reply } => {
                state.ctx.faults.maybe_panic(ActorKind::StateSyncer);
                let ctx = state.ctx.clone();
                tokio::spawn(average(ctx, Request { kind, window, center }, reply));
            }
        }
        Ok(())
    }
}

/// One average: which slices, and the centre they are clipped around.
struct Request {
    kind: SliceKind,
    window: Window,
    center: Option<Arc<Vec<f32>>>,
}

async fn average(ctx: Arc<MinerContext>, request: Request, reply: RpcReplyPort<AverageOutcome>) {
    let (kind, window) = (request.kind, request.window);
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
    let outcome = tokio::task::spawn_blocking(move || fold(&worker, &request, &fetched)).await.unwrap_or_default();
    debug!(miner = %ctx.id.name, %kind, window, accepted = outcome.accepted, rejected = outcome.rejected, clipped = outcome.clipped, "average");
    let _ = reply.send(outcome);
}

fn fold(ctx: &MinerContext, request: &Request, fetched: &FetchOutcome) -> AverageOutcome {
    let (kind, window) = (request.kind, request.window);
    if kind == SliceKind::Delta && ctx.exchange().is_compressed() {
        return fold_payloads(ctx, window, fetched);
    }
    let center = request.center.as_deref().map(Vec::as_slice);
    let mut outcome = AverageOutcome::default();
    // In hotkey order, not arrival order: f32 sums depend on their order, and every node
    // that fetched the same slices must compute the same mean to the bit.
    let mut ordered: Vec<_> = fetched.slices.iter().collect();
    ordered.sort_by_key(|slice| (slice.key.hotkey.0, slice.key.to_string()));
    // Pass 1: the valid slices and their distances from the centre.
    let mut valid = Vec::new();
    for slice in ordered {
        match read_valid(ctx, kind, window, slice, |values| deviation_norm(values, center)) {
            Ok(distance) => valid.push((slice, distance)),
            Err((reason, message)) => {
                outcome.verdicts.push((slice.key.hotkey, SliceVerdict::Rejected));
                warn!(miner = %ctx.id.name, bucket = %slice.bucket, key = %slice.key, reason, error = %message, "rejected a slice");
                ctx.telemetry.stats.reject(reason);
                outcome.rejected += 1;
            }
        }
    }
    let distances: Vec<f64> = valid.iter().map(|(_, d)| *d).collect();
    // Around the own model the own slice sits at ~0: only the peers' distances set the radius.
    let own = ctx.own_hotkey();
    let peers: Vec<f64> =
        valid.iter().filter(|(s, _)| center.is_none() || s.key.hotkey != own).map(|(_, d)| *d).collect();
    let radius = match center {
        Some(center) => centred_radius(&peers, center),
        None => clip_radius(&peers, CLIP_FACTOR, Zeros::Skip),
    };
    let scales = scales_within(&distances, radius);
    // Pass 2: each valid slice added, pulled back to the radius where it lies beyond.
    let mut acc = MeanAccumulator::new(ctx.slice_value_count());
    for ((slice, distance), scale) in valid.iter().zip(scales) {
        let added = read_valid(ctx, kind, window, slice, |values| acc.add_clipped(values, center, scale))
            .and_then(|added| added.map_err(|e| ("aggregate", e.to_string())));
        match added {
            Ok(()) => outcome.accepted += 1,
            Err((reason, message)) => {
                warn!(miner = %ctx.id.name, key = %slice.key, reason, error = %message, "a slice failed on its second read");
                outcome.rejected += 1;
                continue;
            }
        }
        outcome.verdicts.push((slice.key.hotkey, SliceVerdict::Counted { distance: *distance }));
        if scale < 1.0 {
            outcome.clipped += 1;
            MinerStats::add(&ctx.telemetry.stats.slices_clipped, 1);
            warn!(miner = %ctx.id.name, %kind, window, peer = %slice.key.hotkey.to_ss58(), bucket = %slice.bucket, distance, radius, "pulled a peer's slice back to the clip radius");
        }
    }
    MinerStats::add(&ctx.telemetry.stats.slices_averaged, u64::from(outcome.accepted));
    outcome.mean = match acc.finish_finite() {
        Ok(mean) => mean.map(Arc::new),
        Err(e) => {
            // Not applied: the model stays finite; the window goes on without this average.
            let peers: Vec<String> = valid.iter().map(|(s, _)| s.key.hotkey.to_ss58()).collect();
            warn!(miner = %ctx.id.name, %kind, window, error = %e, peers = peers.join(","), "refused a non-finite mean");
            ctx.telemetry.stats.reject("non_finite_mean");
            None
        }
    };
    outcome
}

/// SparseLoCo's average of the payloads of `window`: each checked, then every peer's
/// contribution pulled back to the median norm and each position averaged over the peers
/// that sent it ([`tessera_core::sparseloco::aggregate`]), in hotkey order (every reader
/// of the same payloads gets the same bits).
fn fold_payloads(ctx: &MinerContext, window: Window, fetched: &FetchOutcome) -> AverageOutcome {
    let mut outcome = AverageOutcome::default();
    let mut ordered: Vec<_> = fetched.slices.iter().collect();
    ordered.sort_by_key(|slice| (slice.key.hotkey.0, slice.key.to_string()));
    let view = ctx.peer_view();
    let registered = (view.refreshed_ms > 0).then_some(&view.registered);
    let (mut senders, mut payloads) = (Vec::new(), Vec::new());
    for slice in ordered {
        let read = std::fs::read(&slice.path).map_err(|e| ("cache_read", e.to_string())).and_then(|bytes| {
            delta_payload(ctx, &bytes, window, Some(slice.key.hotkey), registered)
                .map_err(|e| (e.reason(), e.to_string()))
        });
        match read {
            Ok(payload) => {
                senders.push(slice);
                payloads.push(payload);
            }
            Err((reason, message)) => {
                outcome.verdicts.push((slice.key.hotkey, SliceVerdict::Rejected));
                warn!(miner = %ctx.id.name, bucket = %slice.bucket, key = %slice.key, reason, error = %message, "rejected a payload");
                ctx.telemetry.stats.reject(reason);
                outcome.rejected += 1;
            }
        }
    }
    let clip = sparseloco::clip(&payloads);
    for ((slice, norm), scale) in senders.iter().zip(&clip.norms).zip(&clip.scales) {
        outcome.verdicts.push((slice.key.hotkey, SliceVerdict::Counted { distance: *norm }));
        match scale {
            Some(scale) if *scale < 1.0 => {
                outcome.clipped += 1;
                MinerStats::add(&ctx.telemetry.stats.slices_clipped, 1);
                debug!(miner = %ctx.id.name, window, peer = %slice.key.hotkey.to_ss58(), norm, median = ?clip.median, "pulled a peer's payload back to the median norm");
            }
            Some(_) => {}
            None => {
                debug!(miner = %ctx.id.name, window, peer = %slice.key.hotkey.to_ss58(), norm, "a payload of zero or non-finite norm: left out")
            }
        }
    }
    outcome.accepted = clip.scales.iter().filter(|s| s.is_some()).count() as u32;
    MinerStats::add(&ctx.telemetry.stats.slices_averaged, u64::from(outcome.accepted));
    if outcome.accepted == 0 {
        return outcome;
    }
    match sparseloco::aggregate(&payloads, ctx.model.spec.layout.params(), &ctx.sparse_settings()) {
        Ok(mean) if mean.iter().all(|v| v.is_finite()) => outcome.mean = Some(Arc::new(mean)),
        Ok(_) => {
            warn!(miner = %ctx.id.name, window, "refused a non-finite aggregate");
            ctx.telemetry.stats.reject("non_finite_mean");
        }
        Err(e) => warn!(miner = %ctx.id.name, window, error = %e, "the payloads could not be aggregated"),
    }
    outcome
}

/// Reads and validates one cached slice, then hands its values to `with`; or why it is
/// not valid (a rejection reason and the error).
fn read_valid<T>(
    ctx: &MinerContext,
    kind: SliceKind,
    window: Window,
    slice: &FetchedSlice,
    with: impl FnOnce(&[f32]) -> T,
) -> Result<T, (&'static str, String)> {
    let bytes = std::fs::read(&slice.path).map_err(|e| ("cache_read", e.to_string()))?;
    let view = ctx.peer_view();
    let registered = (view.refreshed_ms > 0).then_some(&view.registered);
    let expected = ctx.expected_slice(kind, window, Some(slice.key.hotkey), registered);
    let decoded = decode(&bytes, &expected).map_err(|e| (e.reason(), e.to_string()))?;
    Ok(with(&decoded.values()))
}
