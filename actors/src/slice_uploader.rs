//! SliceUploader: publishes the own slices — encoded and signed off the async threads,
//! uploaded one at a time in order, retried with backoff while the bucket is unreachable,
//! dropped once too old to matter — and deletes history beyond `max_history`. Senders
//! only cast: an upload never blocks training.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tessera_core::slice::{ObjectKey, SliceKind};
use tessera_core::storage::CacheEntry;
use tessera_core::window::Window;
use tracing::{debug, info, warn};

use crate::bounds::Retained;
use crate::context::{ActorKind, MinerContext};
use crate::error::RuntimeError;
use crate::messages::SliceUploaderMsg;
use crate::sparse::ObjectBody;
use crate::stats::MinerStats;
use crate::task::AbortOnDrop;

/// First retry delay of a failed upload; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(15);
/// An upload whose window is this many windows behind the clock is no use to peers.
const STALE_AFTER_WINDOWS: u64 = 2;

pub struct SliceUploader;

struct Job {
    kind: SliceKind,
    window: Window,
    body: ObjectBody,
    attempts: u32,
}

impl Job {
    fn key(&self, ctx: &MinerContext) -> String {
        ObjectKey::for_exchange(self.kind, self.window, ctx.own_hotkey(), ctx.exchange()).to_string()
    }
}

pub struct SliceUploaderState {
    ctx: Arc<MinerContext>,
    queue: VecDeque<Job>,
    in_flight: Option<AbortOnDrop>,
    retry_pending: bool,
    drains: Vec<RpcReplyPort<usize>>,
    pruning: Option<AbortOnDrop>,
}

impl Actor for SliceUploader {
    type Msg = SliceUploaderMsg;
    type State = SliceUploaderState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ctx.telemetry.stats.record_start(ActorKind::SliceUploader);
        Ok(SliceUploaderState {
            ctx,
            queue: VecDeque::new(),
            in_flight: None,
            retry_pending: false,
            drains: Vec::new(),
            pruning: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SliceUploaderMsg::Upload { kind, window, body } => {
                state.ctx.faults.maybe_panic(ActorKind::SliceUploader);
                state.queue.push_back(Job { kind, window, body, attempts: 0 });
                state.drop_stale();
                state.start_next(&myself);
            }
            SliceUploaderMsg::Kick => {
                state.retry_pending = false;
                state.drop_stale();
                state.start_next(&myself);
            }
            SliceUploaderMsg::Finished { key, result } => {
                state.in_flight = None;
                match result {
                    Ok(()) => {
                        state.queue.pop_front();
                        MinerStats::add(&state.ctx.telemetry.stats.slices_uploaded, 1);
                        MinerStats::add(&state.ctx.telemetry.stats.uploads_settled, 1);
                        debug!(miner = %state.ctx.id.name, %key, "uploaded");
                        state.start_next(&myself);
                    }
                    Err(error) => {
                        MinerStats::add(&state.ctx.telemetry.stats.upload_failures, 1);
                        let attempts = state.queue.front_mut().map(|j| {
                            j.attempts += 1;
                            j.attempts
                        });
                        let delay = retry_delay(attempts.unwrap_or(1));
                        warn!(miner = %state.ctx.id.name, %key, %error, retry_in_ms = delay.as_millis() as u64, "upload failed");
                        state.retry_pending = true;
                        myself.send_after(delay, || SliceUploaderMsg::Kick);
                    }
                }
            }
            SliceUploaderMsg::Prune { before, kinds } => {
                if state.pruning.as_ref().is_none_or(|t| t.0.is_finished()) {
                    let ctx = state.ctx.clone();
                    state.pruning = Some(AbortOnDrop(tokio::spawn(async move { prune(&ctx, before, kinds).await })));
                }
            }
            SliceUploaderMsg::Drain(reply) => {
                state.drains.push(reply);
            }
        }
        state.answer_drains();
        Retained::set(&state.ctx.telemetry.stats.retained.upload_queue, state.queue.len() as u64);
        Ok(())
    }
}

fn retry_delay(attempts: u32) -> Duration {
    FIRST_RETRY_DELAY.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY)
}

impl SliceUploaderState {
    /// Drops queued uploads the network no longer needs (the bucket was down for long).
    fn drop_stale(&mut self) {
        let now = self.ctx.clock_now().window;
        let busy = self.in_flight.is_some();
        let before = self.queue.len();
        let mut index = 0;
        self.queue.retain(|job| {
            let keep = (busy && index == 0) || job.window + STALE_AFTER_WINDOWS >= now;
            index += 1;
            keep
        });
        let dropped = before - self.queue.len();
        if dropped > 0 {
            MinerStats::add(&self.ctx.telemetry.stats.uploads_abandoned, dropped as u64);
            MinerStats::add(&self.ctx.telemetry.stats.uploads_settled, dropped as u64);
            warn!(miner = %self.ctx.id.name, dropped, window = now, "dropped uploads too old to matter");
        }
    }

    fn start_next(&mut self, myself: &ActorRef<SliceUploaderMsg>) {
        if self.in_flight.is_some() || self.retry_pending {
            return;
        }
        let Some(job) = self.queue.front() else { return };
        let ctx = self.ctx.clone();
        let (kind, window, body) = (job.kind, job.window, job.body.clone());
        let key = job.key(&ctx);
        let me = myself.clone();
        self.in_flight = Some(AbortOnDrop(tokio::spawn(async move {
            let result = upload(&ctx, kind, window, body, &key).await.map_err(|e| e.to_string());
            let _ = me.cast(SliceUploaderMsg::Finished { key, result });
        })));
    }

    fn answer_drains(&mut self) {
        if self.queue.is_empty() && self.in_flight.is_none() {
            for reply in self.drains.drain(..) {
                let _ = reply.send(0);
            }
        }
    }
}

async fn upload(
    ctx: &Arc<MinerContext>,
    kind: SliceKind,
    window: Window,
    body: ObjectBody,
    key: &str,
) -> Result<(), RuntimeError> {
    let encoder = ctx.clone();
    let bytes = tokio::task::spawn_blocking(move || encoder.encode_object(kind, window, &body)).await??;
    let bytes = Bytes::from(bytes);
    ctx.storage.own_bucket.put(key, bytes.clone()).await?;
    // The own slice counts in the mean without being downloaded back.
    let (cache, location, owned_key) = (ctx.storage.cache.clone(), ctx.own_location().clone(), key.to_owned());
    let kept = tokio::task::spawn_blocking(move || {
        let entry = CacheEntry { location: &location, key: &owned_key, etag: None, size: bytes.len() as u64 };
        cache.insert(&entry, &bytes).map(|_| ())
    })
    .await;
    match kept {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(miner = %ctx.id.name, %key, error = %e, "could not keep the own slice in the cache"),
        Err(e) => warn!(miner = %ctx.id.name, %key, error = %e, "could not keep the own slice in the cache"),
    }
    Ok(())
}

/// Deletes own objects of `kinds` and cached slices older than `before` (the seed's
/// history cleanup).
async fn prune(ctx: &MinerContext, before: Window, kinds: &[SliceKind]) {
    match ctx.storage.own_bucket.delete_kinds_before(kinds, before).await {
        Ok(0) => {}
        Ok(n) => info!(miner = %ctx.id.name, deleted = n, before, "deleted old slices from the own bucket"),
        Err(e) => warn!(miner = %ctx.id.name, error = %e, before, "could not delete old slices from the own bucket"),
    }
    let cache = ctx.storage.cache.clone();
    match tokio::task::spawn_blocking(move || cache.gc(before)).await {
        Ok(Ok(report)) => {
            debug!(miner = %ctx.id.name, ?report, before, "slice cache collected");
            let retained = &ctx.telemetry.stats.retained;
            Retained::set(&retained.slice_cache_files, report.entries_kept);
            Retained::set(&retained.slice_cache_bytes, report.bytes_kept);
        }
        Ok(Err(e)) => warn!(miner = %ctx.id.name, error = %e, "slice cache collection failed"),
        Err(e) => warn!(miner = %ctx.id.name, error = %e, "slice cache collection task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(250));
        assert_eq!(retry_delay(2), Duration::from_millis(500));
        assert_eq!(retry_delay(3), Duration::from_secs(1));
        assert_eq!(retry_delay(40), MAX_RETRY_DELAY);
    }
}
