//! SliceDownloader: lists the buckets this miner reads, refuses objects that cannot be
//! used (name, version, signer not registered or not the bucket's, uploaded outside the
//! window's time, first seen too late, too large), and fetches the rest into the host's
//! slice cache with bounded concurrency. Time is the reader's, never a peer's: one fetch
//! budget per window bounds every listing and download together (what overruns it is
//! late for this window), a peer that answers slowly counts as failing, and a delta's
//! time is when this node first listed it ([`crate::first_seen`]); a validator watches
//! each window's deltas while it is open. Byte-level validation belongs to the reader
//! (StateSyncer).

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

use crate::bounds::Retained;
use crate::context::{ActorKind, MinerContext, PeerView, lock};
use crate::deadlines::Deadlines;
use crate::first_seen::FirstSeen;
use crate::messages::{FetchOutcome, FetchedSlice, SliceDownloaderMsg};
use crate::stats::MinerStats;

pub struct SliceDownloader;

pub struct SliceDownloaderState {
    ctx: Arc<MinerContext>,
    shared: Arc<Shared>,
}

/// What every fetch and watch of this node shares.
struct Shared {
    health: Mutex<PeerHealth>,
    first_seen: Mutex<FirstSeen>,
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
        let shared = Shared { health: Mutex::new(health), first_seen: Mutex::new(FirstSeen::default()) };
        Ok(SliceDownloaderState { ctx, shared: Arc::new(shared) })
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
                let (ctx, shared) = (state.ctx.clone(), state.shared.clone());
                // Off the handler: a slow peer never delays the next request.
                tokio::spawn(async move {
                    let outcome = fetch_window(&ctx, &shared, kind, window).await;
                    let _ = reply.send(outcome);
                });
            }
            SliceDownloaderMsg::Watch { window } => {
                let (ctx, shared) = (state.ctx.clone(), state.shared.clone());
                tokio::spawn(async move { watch(&ctx, &shared, window).await });
            }
        }
        Ok(())
    }
}

/// Consecutive failures (or slow answers) per bucket. A bucket at the threshold is skipped
/// for `skip_for`; once its skip is over it is on probation: one more failure skips it
/// again, for twice as long each time (up to [`MAX_SKIP_DOUBLINGS`]), and only a prompt
/// success clears its record. A peer that keeps answering just before the deadline thus
/// costs the others a few fetches in all, not a few per skip period.
#[derive(Debug)]
pub struct PeerHealth {
    threshold: u32,
    skip_for: Duration,
    peers: HashMap<String, Record>,
}

/// One bucket's record: failures since the last skip, its skip, skips in a row, and its
/// last failure.
#[derive(Debug, Default)]
struct Record {
    failures: u32,
    until: Option<Instant>,
    skips: u32,
    last_failure: Option<Instant>,
}

/// A skip period doubles at most this many times (×64).
const MAX_SKIP_DOUBLINGS: u32 = 6;

impl PeerHealth {
    pub fn new(threshold: u32, skip_for: Duration) -> Self {
        Self { threshold: threshold.max(1), skip_for, peers: HashMap::new() }
    }

    pub fn is_skipped(&self, bucket: &str, now: Instant) -> bool {
        self.peers.get(bucket).and_then(|r| r.until).is_some_and(|until| now < until)
    }

    /// Returns true when this failure starts a skip period. Records that have not failed
    /// for twice the longest skip are forgotten first: a peer that left the subnet while
    /// failing is never heard of again, and a long run would keep its record for good.
    pub fn failed(&mut self, bucket: &str, now: Instant) -> bool {
        let forget_after = self.skip_for * 2u32.pow(MAX_SKIP_DOUBLINGS + 1);
        self.peers.retain(|_, r| r.last_failure.is_none_or(|t| now.saturating_duration_since(t) < forget_after));
        let record = self.peers.entry(bucket.to_owned()).or_default();
        record.last_failure = Some(now);
        record.failures += 1;
        let threshold = if record.skips > 0 { 1 } else { self.threshold };
        if record.failures >= threshold {
            record.failures = 0;
            record.until = Some(now + self.skip_for * 2u32.pow(record.skips.min(MAX_SKIP_DOUBLINGS)));
            record.skips += 1;
            return true;
        }
        false
    }

    /// Whether `bucket` failed or was slow and has not answered promptly since.
    pub fn is_suspect(&self, bucket: &str) -> bool {
        self.peers.contains_key(bucket)
    }

    pub fn succeeded(&mut self, bucket: &str) {
        self.peers.remove(bucket);
    }

    /// Buckets with a record (`tessera_retained{what="peer_records"}`).
    pub fn records(&self) -> usize {
        self.peers.len()
    }
}

struct Candidate {
    bucket: BucketLocation,
    client: BucketClient,
    key: ObjectKey,
    info: ObjectInfo,
    first_seen_ms: Option<i64>,
}

/// Every usable `kind` object of `window`: the buckets listed, each object admitted or
/// refused by name, signer, size and time, then fetched into the cache — all within one
/// fetch budget.
async fn fetch_window(ctx: &MinerContext, shared: &Shared, kind: SliceKind, window: Window) -> FetchOutcome {
    let mut outcome = FetchOutcome::default();
    let now = Instant::now();
    outcome.not_tried = ctx
        .buckets_to_read()
        .iter()
        .map(ToString::to_string)
        .filter(|b| lock(&shared.health).is_skipped(b, now))
        .collect();
    let budget = ctx.deadlines().fetch_budget(ctx.nominal_window());
    let deadline = tokio::time::Instant::now() + budget;
    let listings = list_buckets(ctx, &shared.health, &ObjectKey::prefix(kind, window), deadline).await;
    let mut candidates = admit_listed(ctx, shared, kind, window, listings, &mut outcome);
    if let Some(k) = peer_bound(ctx.exchange(), kind, ctx.network.hparams.exchange_max_peers, ctx.is_validator()) {
        let before = candidates.len();
        candidates = bounded_subset(candidates, |c| c.key.hotkey, ctx.own_hotkey(), kind, window, k as usize);
        debug!(miner = %ctx.id.name, %kind, window, kept = candidates.len(), listed = before, "read a bounded set of peers");
    }
    fetch_candidates(ctx, &shared.health, kind, window, candidates, deadline, &mut outcome).await;
    // Same order for everyone: the mean does not depend on arrival order.
    outcome.slices.sort_by(|a, b| (a.key.hotkey.0, &a.bucket).cmp(&(b.key.hotkey.0, &b.bucket)));
    publish_retained(ctx, shared);
    outcome
}

/// The fill of the downloader's own bounded state, for `/metrics`.
fn publish_retained(ctx: &MinerContext, shared: &Shared) {
    let retained = &ctx.telemetry.stats.retained;
    Retained::set(&retained.peer_records, lock(&shared.health).records() as u64);
    Retained::set(&retained.first_seen_windows, lock(&shared.first_seen).windows() as u64);
}

/// Lists the deltas of `window` again and again while it is open (and its grace), so the
/// first-seen time of each is this node's own observation, to a poll's precision. Each
/// bucket is polled on its own: a slow bucket delays only its own sightings. A sighting
/// is stamped with the start of its poll slot, so two updates seen within one slot tie
/// (`tessera_core::validator::sightings` orders them further where it can).
async fn watch(ctx: &MinerContext, shared: &Shared, window: Window) {
    let poll = Deadlines::watch_poll(ctx.settings.block_time * ctx.network.schedule.window_length() as u32);
    let prefix = ObjectKey::prefix(SliceKind::Delta, window);
    let own = ctx.own_location().clone();
    let pollers = ctx.buckets_to_read().into_iter().map(|bucket| {
        let client =
            if bucket == own { ctx.storage.own_bucket.clone() } else { ctx.storage.peer_clients.client(&bucket) };
        let (name, prefix) = (bucket.to_string(), prefix.clone());
        async move {
            loop {
                if !lock(&shared.health).is_skipped(&name, Instant::now()) {
                    let listed = tokio::time::timeout(ctx.deadlines().transfer(), client.list(&prefix)).await;
                    let slot = slot_start(crate::context::unix_ms(), poll);
                    if let Ok(Ok(objects)) = listed {
                        let mut book = lock(&shared.first_seen);
                        objects.iter().for_each(|o| {
                            book.record(SliceKind::Delta, window, &name, &o.key, slot);
                        });
                    }
                }
                if delta_deadline_ms(ctx, window).is_some_and(|by| crate::context::unix_ms() > by) || ctx.is_stopping()
                {
                    return;
                }
                tokio::time::sleep(poll).await;
            }
        }
    });
    lock(&shared.first_seen).mark_watched(window);
    futures::future::join_all(pollers).await;
}

/// The start of the poll slot `now_ms` falls in.
fn slot_start(now_ms: i64, poll: Duration) -> i64 {
    let width = (poll.as_millis() as i64).max(1);
    now_ms.div_euclid(width) * width
}

/// When one transfer from `bucket` must end: within one transfer deadline and the fetch's
/// `deadline`, and for a bucket with a bad record (it failed or was slow, and has not
/// answered promptly since) within a fifth of the budget: a peer that answers just before
/// the deadline costs the others one full budget, then a fifth of one per fetch until it is
/// skipped (measured, real time with a slow bucket: honest throughput −23% with the full
/// budget each time).
fn transfer_deadline(
    ctx: &MinerContext,
    health: &Mutex<PeerHealth>,
    bucket: &str,
    deadline: tokio::time::Instant,
    budget: Duration,
) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let own =
        if lock(health).is_suspect(bucket) { budget / SUSPECT_BUDGET_FRACTION } else { ctx.deadlines().transfer() };
    deadline.min(now + own)
}

/// A suspect bucket's transfers get this fraction of the fetch budget.
const SUSPECT_BUDGET_FRACTION: u32 = 5;

/// The latest first sighting of an on-time delta of `window` (unix ms): its end plus the
/// grace, once the window has ended on this node's clock; `None` while it is open (its
/// end not yet observed: under fixed compute the clock waits, so no extrapolated end
/// means anything, and whatever is seen while it is open is on time).
fn delta_deadline_ms(ctx: &MinerContext, window: Window) -> Option<i64> {
    if ctx.clock_now().window <= window {
        return None;
    }
    ctx.window_bounds(window).map(|(start, end)| end + Deadlines::delta_grace_ms(start, end))
}

type Listing = (BucketLocation, BucketClient, Result<Result<Vec<ObjectInfo>, StorageError>, Late>, i64);

/// A transfer that overran its deadline or the fetch budget.
#[derive(Debug)]
struct Late;

/// Lists `prefix` in every bucket this node reads, but peers skipped for failing, each
/// within one transfer deadline and the fetch's `deadline`; a slow answer counts against
/// its peer.
async fn list_buckets(
    ctx: &MinerContext,
    health: &Mutex<PeerHealth>,
    prefix: &str,
    deadline: tokio::time::Instant,
) -> Vec<Listing> {
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
    let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
    futures::stream::iter(buckets.into_iter().map(|bucket| {
        let client =
            if bucket == own { ctx.storage.own_bucket.clone() } else { ctx.storage.peer_clients.client(&bucket) };
        let prefix = prefix.to_owned();
        let until = transfer_deadline(ctx, health, &bucket.to_string(), deadline, budget);
        async move {
            let started = Instant::now();
            let listed = tokio::time::timeout_at(until, client.list(&prefix)).await.map_err(|_| Late);
            if listed.is_ok() && Deadlines::is_slow(started.elapsed(), budget) {
                peer_failed(ctx, health, &bucket.to_string(), "listing was slow");
            }
            (bucket, client, listed, crate::context::unix_ms())
        }
    }))
    .buffer_unordered((ctx.settings.download_concurrency as usize).max(1))
    .collect::<Vec<_>>()
    .await
}

/// Records when each listed delta was first seen; a listing of a window while it is open
/// (by its end plus the grace) makes it watched.
fn record_listed(ctx: &MinerContext, shared: &Shared, kind: SliceKind, window: Window, listings: &[Listing]) {
    if kind != SliceKind::Delta {
        return;
    }
    let mut book = lock(&shared.first_seen);
    // Watched when listed while open (or in its grace): by the earliest answer of this round.
    let earliest = listings.iter().map(|l| l.3).min().unwrap_or_else(crate::context::unix_ms);
    if delta_deadline_ms(ctx, window).is_none_or(|by| earliest <= by) {
        book.mark_watched(window);
    }
    for (bucket, _, listed, answered_ms) in listings {
        if let Ok(Ok(objects)) = listed {
            for info in objects {
                book.record(kind, window, &bucket.to_string(), &info.key, *answered_ms);
            }
        }
    }
}

/// The listed objects worth fetching; failed listings and refused objects are counted.
fn admit_listed(
    ctx: &MinerContext,
    shared: &Shared,
    kind: SliceKind,
    window: Window,
    listings: Vec<Listing>,
    outcome: &mut FetchOutcome,
) -> Vec<Candidate> {
    record_listed(ctx, shared, kind, window, &listings);
    let health = &shared.health;
    let first_seen = lock(&shared.first_seen);
    let rules = Admission {
        kind,
        window,
        version: ctx.exchange().protocol_version(),
        max_bytes: max_encoded_len(ctx.envelope_count(kind)) as u64,
        bounds: ctx.upload_bounds(kind, window),
        view: ctx.peer_view(),
        committers: ctx.settings.remote.then(|| ctx.committers_by_bucket()),
        // Deltas of a window this node watched: on time by its own first sighting.
        first_seen_by: (kind == SliceKind::Delta && first_seen.is_watched(window))
            .then(|| delta_deadline_ms(ctx, window))
            .flatten(),
    };
    let mut candidates = Vec::new();
    for (bucket, client, listed, _) in listings {
        let name = bucket.to_string();
        let objects = match listed {
            Ok(Ok(objects)) => objects,
            Ok(Err(e)) => {
                peer_failed(ctx, health, &name, &e.to_string());
                outcome.failed += 1;
                continue;
            }
            Err(Late) => {
                peer_failed(ctx, health, &name, "listing overran the fetch budget");
                outcome.failed += 1;
                outcome.late += 1;
                continue;
            }
        };
        for info in objects {
            let seen = first_seen.get(window, &name, &info.key);
            match rules.admit(&name, &info, seen) {
                Ok(key) => candidates.push(Candidate {
                    bucket: bucket.clone(),
                    client: client.clone(),
                    key,
                    info,
                    first_seen_ms: seen,
                }),
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
    /// The latest first-seen time of an on-time delta (unix ms), for a watched window.
    first_seen_by: Option<i64>,
}

impl Admission {
    /// The object's key, or why it is refused (a rejection reason of the stats).
    fn admit(&self, bucket: &str, info: &ObjectInfo, first_seen_ms: Option<i64>) -> Result<ObjectKey, &'static str> {
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
        if let (Some(by), Some(seen)) = (self.first_seen_by, first_seen_ms)
            && !crate::first_seen::on_time(seen, by, 0)
        {
            return Err("first_seen_late");
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
    deadline: tokio::time::Instant,
    outcome: &mut FetchOutcome,
) {
    let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
    let max_bytes = max_encoded_len(ctx.envelope_count(kind)) as u64;
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
        let until = transfer_deadline(ctx, health, &c.bucket.to_string(), deadline, budget);
        let started = Instant::now();
        let result = tokio::time::timeout_at(until, fetch).await;
        bar.inc(c.info.size);
        (c, result, started.elapsed())
    }))
    .buffer_unordered((ctx.settings.download_concurrency as usize).max(1))
    .collect::<Vec<_>>()
    .await;
    bar.finish_and_clear();
    for (c, result, took) in fetched {
        let name = c.bucket.to_string();
        match result {
            Ok(Ok(cached)) => {
                if cached.hit || !Deadlines::is_slow(took, budget) {
                    lock(health).succeeded(&name);
                } else {
                    peer_failed(ctx, health, &name, "download was slow");
                }
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
                    first_seen_ms: c.first_seen_ms,
                });
            }
            Ok(Err(e)) => {
                peer_failed(ctx, health, &name, &e.to_string());
                outcome.failed += 1;
            }
            Err(_) => {
                peer_failed(ctx, health, &name, "download overran the fetch budget");
                outcome.failed += 1;
                outcome.late += 1;
            }
        }
    }
}

/// How many peers' slices a node reads: `exchange_max_peers` bounds a miner under the
/// update exchange; a validator reads every miner, since one it did not read would be
/// scored missing.
fn peer_bound(exchange: Exchange, kind: SliceKind, max_peers: Option<u32>, validator: bool) -> Option<u32> {
    if validator {
        return None;
    }
    if exchange.is_compressed() && kind == SliceKind::State {
        // States only tell whether this node is in step: a sample does (and the own one).
        return Some(crate::window::IN_STEP_SAMPLE + 1);
    }
    max_peers.filter(|&k| k > 0 && exchange == Exchange::Update)
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
        let delta = SliceKind::Delta;
        assert_eq!(peer_bound(Exchange::Update, delta, Some(3), false), Some(3));
        assert_eq!(peer_bound(Exchange::Update, delta, Some(3), true), None, "a validator reads every miner");
        assert_eq!(peer_bound(Exchange::Seed, delta, Some(3), false), None);
        assert_eq!(peer_bound(Exchange::Update, delta, Some(0), false), None);
        assert_eq!(peer_bound(Exchange::Update, delta, None, false), None);
        // SparseLoCo reads every delta, but only a sample of states (whether it is in step).
        assert_eq!(peer_bound(Exchange::SparseLoco, delta, Some(3), false), None);
        assert_eq!(peer_bound(Exchange::SparseLoco, SliceKind::State, None, false), Some(5));
        assert_eq!(peer_bound(Exchange::SparseLoco, SliceKind::Snapshot, None, false), None);
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

    #[test]
    fn records_of_peers_that_stopped_failing_long_ago_are_forgotten() {
        let mut health = PeerHealth::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        health.failed("departed", t0);
        health.failed("recent", t0 + Duration::from_secs(1000));
        assert!(health.is_suspect("departed"), "kept within twice the longest skip (1,280 s)");
        health.failed("other", t0 + Duration::from_secs(1281));
        assert!(!health.is_suspect("departed") && health.is_suspect("recent") && health.is_suspect("other"));
        assert_eq!(health.peers.len(), 2);
    }

    #[test]
    fn a_peer_on_probation_is_skipped_again_at_once_for_twice_as_long() {
        let mut health = PeerHealth::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        (0..3).for_each(|_| {
            health.failed("slow", t0);
        });
        let t1 = t0 + Duration::from_secs(11);
        assert!(!health.is_skipped("slow", t1));
        assert!(health.failed("slow", t1), "one failure after a skip skips again");
        assert!(health.is_skipped("slow", t1 + Duration::from_secs(19)));
        assert!(!health.is_skipped("slow", t1 + Duration::from_secs(21)));
        let t2 = t1 + Duration::from_secs(21);
        assert!(health.failed("slow", t2));
        assert!(health.is_skipped("slow", t2 + Duration::from_secs(39)), "40 s the third time");
        for _ in 0..20 {
            health.failed("slow", t2);
        }
        assert!(!health.is_skipped("slow", t2 + Duration::from_secs(10 * 64 + 1)), "doubling stops at ×64");
        assert!(health.is_suspect("slow"));
        health.succeeded("slow");
        assert!(!health.is_suspect("slow"));
        assert!(!health.failed("slow", t2), "a prompt success clears the record");
    }
}
