//! SliceDownloader: lists the buckets this miner reads, refuses objects that cannot be
//! used (name, version, signer not registered or not the bucket's, uploaded outside the
//! window's time, too large), and fetches the rest into the host's slice cache with
//! bounded concurrency, a deadline per object, and peers that keep failing skipped for a
//! while. Byte-level validation belongs to the reader (StateSyncer).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{Exchange, ObjectKey, SliceKind, max_encoded_len};
use tessera_core::storage::{BucketClient, BucketLocation, CacheEntry, ObjectInfo, StorageError};
use tessera_core::window::Window;
use tracing::{debug, warn};

use crate::context::{ActorKind, MinerContext, PeerView, lock};
use crate::messages::{FetchOutcome, FetchedSlice, SliceDownloaderMsg};
use crate::stats::MinerStats;

pub struct SliceDownloader;

pub struct SliceDownloaderState {
    ctx: Arc<MinerContext>,
    health: Arc<Mutex<PeerHealth>>,
}

impl Actor for SliceDownloader {
    type Msg = SliceDownloaderMsg;
    type State = SliceDownloaderState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ctx.telemetry.stats.record_start(ActorKind::SliceDownloader);
        let health = PeerHealth::new(ctx.settings.peer_failures_before_skip, ctx.settings.peer_skip);
        Ok(SliceDownloaderState { ctx, health: Arc::new(Mutex::new(health)) })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SliceDownloaderMsg::Fetch { kind, window, reply } => {
                state.ctx.faults.maybe_panic(ActorKind::SliceDownloader);
                let (ctx, health) = (state.ctx.clone(), state.health.clone());
                // Off the handler: a slow peer never delays the next request.
                tokio::spawn(async move {
                    let outcome = fetch_window(&ctx, &health, kind, window).await;
                    let _ = reply.send(outcome);
                });
            }
        }
        Ok(())
    }
}

/// Consecutive failures per bucket; a bucket at the threshold is skipped until its time is up.
#[derive(Debug)]
pub struct PeerHealth {
    threshold: u32,
    skip_for: Duration,
    peers: HashMap<String, (u32, Option<Instant>)>,
}

impl PeerHealth {
    pub fn new(threshold: u32, skip_for: Duration) -> Self {
        Self { threshold: threshold.max(1), skip_for, peers: HashMap::new() }
    }

    pub fn is_skipped(&self, bucket: &str, now: Instant) -> bool {
        matches!(self.peers.get(bucket), Some((_, Some(until))) if now < *until)
    }

    /// Returns true when this failure starts a skip period.
    pub fn failed(&mut self, bucket: &str, now: Instant) -> bool {
        let entry = self.peers.entry(bucket.to_owned()).or_insert((0, None));
        entry.0 += 1;
        if entry.0 >= self.threshold {
            entry.0 = 0;
            entry.1 = Some(now + self.skip_for);
            return true;
        }
        false
    }

    pub fn succeeded(&mut self, bucket: &str) {
        self.peers.remove(bucket);
    }
}

struct Candidate {
    bucket: BucketLocation,
    client: BucketClient,
    key: ObjectKey,
    info: ObjectInfo,
}

/// Every usable `kind` object of `window`: the buckets listed, each object admitted or
/// refused by name, signer, size and time, then fetched into the cache.
async fn fetch_window(ctx: &MinerContext, health: &Mutex<PeerHealth>, kind: SliceKind, window: Window) -> FetchOutcome {
    let mut outcome = FetchOutcome::default();
    let listings = list_buckets(ctx, health, &ObjectKey::prefix(kind, window)).await;
    let mut candidates = admit_listed(ctx, health, kind, window, listings, &mut outcome);
    if let Some(k) = peer_bound(ctx.exchange(), ctx.network.hparams.exchange_max_peers, ctx.is_validator()) {
        let before = candidates.len();
        candidates = bounded_subset(candidates, |c| c.key.hotkey, ctx.own_hotkey(), kind, window, k as usize);
        debug!(miner = %ctx.id.name, %kind, window, kept = candidates.len(), listed = before, "read a bounded set of peers");
    }
    fetch_candidates(ctx, health, kind, window, candidates, &mut outcome).await;
    // Same order for everyone: the mean does not depend on arrival order.
    outcome.slices.sort_by(|a, b| (a.key.hotkey.0, &a.bucket).cmp(&(b.key.hotkey.0, &b.bucket)));
    outcome
}

type Listing =
    (BucketLocation, BucketClient, Result<Result<Vec<ObjectInfo>, StorageError>, tokio::time::error::Elapsed>);

/// Lists `prefix` in every bucket this node reads, but peers skipped for failing.
async fn list_buckets(ctx: &MinerContext, health: &Mutex<PeerHealth>, prefix: &str) -> Vec<Listing> {
    let buckets: Vec<BucketLocation> = ctx
        .buckets_to_read()
        .into_iter()
        .filter(|b| {
            let skipped = lock(health).is_skipped(&b.to_string(), Instant::now());
            if skipped {
                debug!(miner = %ctx.id.name, bucket = %b, "skipping a failing peer for now");
            }
            !skipped
        })
        .collect();
    let own = ctx.own_location().clone();
    futures::stream::iter(buckets.into_iter().map(|bucket| {
        let client =
            if bucket == own { ctx.storage.own_bucket.clone() } else { ctx.storage.peer_clients.client(&bucket) };
        let prefix = prefix.to_owned();
        let deadline = ctx.deadlines().transfer();
        async move {
            let listed = tokio::time::timeout(deadline, client.list(&prefix)).await;
            (bucket, client, listed)
        }
    }))
    .buffer_unordered((ctx.settings.download_concurrency as usize).max(1))
    .collect::<Vec<_>>()
    .await
}

/// The listed objects worth fetching; failed listings and refused objects are counted.
fn admit_listed(
    ctx: &MinerContext,
    health: &Mutex<PeerHealth>,
    kind: SliceKind,
    window: Window,
    listings: Vec<Listing>,
    outcome: &mut FetchOutcome,
) -> Vec<Candidate> {
    let rules = Admission {
        kind,
        window,
        version: ctx.exchange().protocol_version(),
        max_bytes: max_encoded_len(ctx.slice_value_count()) as u64,
        bounds: ctx.upload_bounds(kind, window),
        view: ctx.peer_view(),
        committers: ctx.settings.remote.then(|| ctx.committers_by_bucket()),
    };
    let mut candidates = Vec::new();
    for (bucket, client, listed) in listings {
        let name = bucket.to_string();
        let objects = match listed {
            Ok(Ok(objects)) => objects,
            Ok(Err(e)) => {
                peer_failed(ctx, health, &name, &e.to_string());
                outcome.failed += 1;
                continue;
            }
            Err(_) => {
                peer_failed(ctx, health, &name, "listing passed its deadline");
                outcome.failed += 1;
                continue;
            }
        };
        for info in objects {
            match rules.admit(&name, &info) {
                Ok(key) => candidates.push(Candidate { bucket: bucket.clone(), client: client.clone(), key, info }),
                Err(reason) => {
                    debug!(miner = %ctx.id.name, bucket = %name, key = %info.key, reason, "refusing a listed object");
                    ctx.telemetry.stats.reject(reason);
                    outcome.refused += 1;
                }
            }
        }
    }
    candidates
}

/// What a listed object must be to be fetched.
struct Admission {
    kind: SliceKind,
    window: Window,
    version: u16,
    max_bytes: u64,
    bounds: Option<(i64, i64)>,
    view: Arc<PeerView>,
    committers: Option<HashMap<String, HashSet<Hotkey>>>,
}

impl Admission {
    /// The object's key, or why it is refused (a rejection reason of the stats).
    fn admit(&self, bucket: &str, info: &ObjectInfo) -> Result<ObjectKey, &'static str> {
        let key = ObjectKey::from_str(&info.key).map_err(|_| "bad_key")?;
        if key.version != self.version {
            return Err("other_version");
        }
        if key.kind != self.kind || key.window != self.window {
            return Err("bad_key");
        }
        if self.view.refreshed_ms > 0 && !self.view.registered.contains(&key.hotkey) {
            return Err("unregistered_hotkey");
        }
        if let Some(committers) = &self.committers
            && !committers.get(bucket).is_some_and(|set| set.contains(&key.hotkey))
        {
            return Err("foreign_bucket");
        }
        if info.size > self.max_bytes {
            return Err("too_large");
        }
        match (self.bounds, info.last_modified_ms) {
            (Some((lo, hi)), Some(t)) if t < lo || t > hi => Err("outside_window_time"),
            (Some(_), None) => Err("outside_window_time"),
            _ => Ok(key),
        }
    }
}

/// Fetches the admitted objects into the cache (bounded concurrency, each within its
/// transfer deadline); a failing peer is recorded.
async fn fetch_candidates(
    ctx: &MinerContext,
    health: &Mutex<PeerHealth>,
    kind: SliceKind,
    window: Window,
    candidates: Vec<Candidate>,
    outcome: &mut FetchOutcome,
) {
    let max_bytes = max_encoded_len(ctx.slice_value_count()) as u64;
    let total_bytes: u64 = candidates.iter().map(|c| c.info.size).sum();
    let bar = if total_bytes >= crate::progress::LARGE_DOWNLOAD_BYTES {
        crate::progress::bar(total_bytes, format!("{}: {kind}-{window} slices", ctx.id.name), true)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let bar = &bar;
    let fetched = futures::stream::iter(candidates.into_iter().map(|c| async move {
        let entry = CacheEntry { location: &c.bucket, key: &c.info.key, etag: None, size: c.info.size };
        let client = c.client.clone();
        let key = c.info.key.clone();
        let fetch = ctx
            .storage
            .cache
            .get_or_fetch(&entry, move |dest| async move { client.get_to_file(&key, &dest, max_bytes).await });
        let result = tokio::time::timeout(ctx.deadlines().transfer(), fetch).await;
        bar.inc(c.info.size);
        (c, result)
    }))
    .buffer_unordered((ctx.settings.download_concurrency as usize).max(1))
    .collect::<Vec<_>>()
    .await;
    bar.finish_and_clear();
    for (c, result) in fetched {
        let name = c.bucket.to_string();
        match result {
            Ok(Ok(cached)) => {
                lock(health).succeeded(&name);
                if cached.hit {
                    MinerStats::add(&ctx.telemetry.stats.cache_hits, 1);
                } else {
                    MinerStats::add(&ctx.telemetry.stats.slices_downloaded, 1);
                    MinerStats::add(&ctx.telemetry.stats.bytes_downloaded, c.info.size);
                }
                outcome.slices.push(FetchedSlice {
                    key: c.key,
                    path: cached.path,
                    bucket: name,
                    last_modified_ms: c.info.last_modified_ms,
                });
            }
            Ok(Err(e)) => {
                peer_failed(ctx, health, &name, &e.to_string());
                outcome.failed += 1;
            }
            Err(_) => {
                peer_failed(ctx, health, &name, "download passed its deadline");
                outcome.failed += 1;
            }
        }
    }
}

/// How many peers' slices a node reads: `exchange_max_peers` bounds a miner under the
/// update exchange; a validator reads every miner, since one it did not read would be
/// scored missing.
fn peer_bound(exchange: Exchange, max_peers: Option<u32>, validator: bool) -> Option<u32> {
    max_peers.filter(|&k| k > 0 && exchange == Exchange::Update && !validator)
}

/// At most `k` of `items`: the own one, then the others in an order drawn per miner and
/// window (BLAKE3 of both hotkeys, kind and window), so every miner reads its own bounded,
/// changing subset of the network and no peer can make itself always read.
fn bounded_subset<T>(
    mut items: Vec<T>,
    hotkey_of: impl Fn(&T) -> Hotkey,
    own: Hotkey,
    kind: SliceKind,
    window: Window,
    k: usize,
) -> Vec<T> {
    let rank = |hotkey: Hotkey| {
        if hotkey == own {
            return [0u8; 32];
        }
        let mut h = blake3::Hasher::new_derive_key("tessera bounded peer subset v1");
        h.update(&own.0).update(&hotkey.0).update(kind.as_str().as_bytes()).update(&window.to_le_bytes());
        let mut out = *h.finalize().as_bytes();
        out[0] |= 1; // never ties with the own hotkey's rank
        out
    };
    items.sort_by_cached_key(|item| rank(hotkey_of(item)));
    items.truncate(k);
    items
}

fn peer_failed(ctx: &MinerContext, health: &Mutex<PeerHealth>, bucket: &str, error: &str) {
    MinerStats::add(&ctx.telemetry.stats.download_failures, 1);
    if lock(health).failed(bucket, Instant::now()) {
        MinerStats::add(&ctx.telemetry.stats.peers_skipped, 1);
        warn!(miner = %ctx.id.name, bucket, error, skip_secs = ctx.settings.peer_skip.as_secs(), "peer keeps failing; skipping it for a while");
    } else {
        warn!(miner = %ctx.id.name, bucket, error, "peer download failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_miner_under_the_update_exchange_reads_a_bounded_set_of_peers() {
        assert_eq!(peer_bound(Exchange::Update, Some(3), false), Some(3));
        assert_eq!(peer_bound(Exchange::Update, Some(3), true), None, "a validator reads every miner");
        assert_eq!(peer_bound(Exchange::Seed, Some(3), false), None);
        assert_eq!(peer_bound(Exchange::Update, Some(0), false), None);
        assert_eq!(peer_bound(Exchange::Update, None, false), None);
    }

    #[test]
    fn a_bounded_subset_keeps_the_own_slice_and_varies_by_window() {
        let key = |i: u8| Hotkey([i; 32]);
        let all: Vec<Hotkey> = (1..=20).map(key).collect();
        let own = key(7);
        let a = bounded_subset(all.clone(), |h| *h, own, SliceKind::Delta, 5, 4);
        assert_eq!(a.len(), 4);
        assert_eq!(a[0], own);
        assert_eq!(a, bounded_subset(all.clone(), |h| *h, own, SliceKind::Delta, 5, 4), "deterministic");
        let windows: std::collections::HashSet<Vec<Hotkey>> =
            (0..10).map(|w| bounded_subset(all.clone(), |h| *h, own, SliceKind::Delta, w, 4)).collect();
        assert!(windows.len() > 5, "the subset changes with the window");
        assert_eq!(bounded_subset(all.clone(), |h| *h, own, SliceKind::Delta, 5, 50).len(), 20);
    }

    #[test]
    fn a_peer_failing_repeatedly_is_skipped_until_its_time_is_up() {
        let mut health = PeerHealth::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!health.failed("b", t0));
        assert!(!health.failed("b", t0));
        assert!(!health.is_skipped("b", t0));
        assert!(health.failed("b", t0));
        assert!(health.is_skipped("b", t0 + Duration::from_secs(59)));
        assert!(!health.is_skipped("b", t0 + Duration::from_secs(61)));
        health.succeeded("b");
        assert!(!health.is_skipped("b", t0));
    }
}
