//! A minimal Weights & Biases logger that can never stall training.
//!
//! The miner only needs what the Python original did with `wandb.init(project, name=f"M{uid}",
//! config=...)` and `wandb.log({...})`: create a run and append history rows. No usable Rust
//! W&B client exists, so this crate speaks the same HTTP API as the official client (shapes
//! taken from wandb's Go core): GraphQL `upsertBucket` to create the run, then
//! `file_stream` posts carrying `wandb-history.jsonl` lines with increasing offsets, a
//! `wandb-summary.json` snapshot, empty heartbeats, and finally `complete`/`exitcode`.
//!
//! Metrics are best effort: [`WandbLogger::log`] only takes a short lock and queues a row; a
//! background task sends, retrying with backoff. When the queue is full, the key is missing or
//! the server refuses us, rows are dropped and counted ([`WandbLogger::dropped`]).

mod api;
mod netrc;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use url::Url;

use crate::api::{Api, ApiError, ApiKey, RunInfo, RunSpec};
pub use crate::netrc::api_key_from_environment;

/// The public W&B cloud API, the official client's default `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.wandb.ai";

/// Longest history line the backend accepts (wandb core's `defaultMaxFileLineBytes`).
const MAX_LINE_BYTES: usize = (10 << 20) - (100 << 10);
/// Per-request caps, well under the backend's ~10 MiB request limit.
const MAX_BATCH_LINES: usize = 1000;
const MAX_BATCH_BYTES: usize = 4 << 20;
/// The official client posts an empty request when idle this long so the run is not marked crashed.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Where and what to log. `Debug` redacts the API key.
#[derive(Clone)]
pub struct WandbSettings {
    /// API server, `https://api.wandb.ai` for the cloud.
    pub base_url: Url,
    /// Without a key nothing is sent (one warning, rows counted as dropped).
    pub api_key: Option<String>,
    /// Team or user; `None` uses the key owner's default entity (GraphQL `viewer`).
    pub entity: Option<String>,
    pub project: String,
    /// The run's display name, e.g. `M{uid}` as the Python miner used.
    pub run_name: String,
    /// Run config; an object's keys become config entries.
    pub config: Value,
    /// Rows queued at most; further rows are dropped until the queue drains.
    pub buffer_rows: usize,
    /// How often queued rows are sent (sooner when the queue is half full).
    pub flush_interval: Duration,
    /// Per HTTP request.
    pub request_timeout: Duration,
}

impl WandbSettings {
    /// Settings resolved from the environment as the official client does: `$WANDB_BASE_URL`
    /// (default [`DEFAULT_BASE_URL`]), [`api_key_from_environment`], `$WANDB_ENTITY`; with
    /// `buffer_rows` 1024, `flush_interval` 5 s and `request_timeout` 30 s.
    pub fn new(project: impl Into<String>, run_name: impl Into<String>) -> Self {
        let base_url = std::env::var("WANDB_BASE_URL").ok().and_then(|u| Url::parse(u.trim()).ok());
        let base_url = base_url.unwrap_or_else(default_base_url);
        Self {
            api_key: api_key_from_environment(&base_url),
            entity: std::env::var("WANDB_ENTITY").ok().filter(|e| !e.trim().is_empty()),
            base_url,
            project: project.into(),
            run_name: run_name.into(),
            config: Value::Object(Map::new()),
            buffer_rows: 1024,
            flush_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

fn default_base_url() -> Url {
    Url::parse(DEFAULT_BASE_URL).expect("DEFAULT_BASE_URL is a valid URL")
}

impl fmt::Debug for WandbSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WandbSettings")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("entity", &self.entity)
            .field("project", &self.project)
            .field("run_name", &self.run_name)
            .field("config", &self.config)
            .field("buffer_rows", &self.buffer_rows)
            .field("flush_interval", &self.flush_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Rows waiting to be confirmed by the server, plus the run summary built from them.
struct Queue {
    /// Serialized history lines; removed only once the server accepted them.
    lines: VecDeque<String>,
    /// Latest value of every key logged so far (what `wandb.summary` shows).
    summary: Map<String, Value>,
    summary_version: u64,
    summary_sent_version: u64,
    /// False once finishing, disabled or failed: new rows are dropped.
    accepting: bool,
    /// Step of the newest queued row; W&B history steps may not go backwards.
    last_step: Option<u64>,
}

/// State shared by the handles and the background task.
struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Wakes the task early: queue half full, or stop requested.
    wake: Notify,
    stopping: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    run_url: OnceLock<String>,
    task: Mutex<Option<JoinHandle<()>>>,
    started: Instant,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queued(&self) -> usize {
        self.lock_queue().lines.len()
    }

    /// Refuses new rows and asks the task to send what is queued, then complete the run.
    fn request_stop(&self) {
        self.lock_queue().accepting = false;
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops accepting rows and counts everything still queued as dropped; returns that count.
    fn disable(&self) -> usize {
        let mut queue = self.lock_queue();
        queue.accepting = false;
        let lost = queue.lines.len();
        queue.lines.clear();
        drop(queue);
        self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        lost
    }

    /// A copy of the oldest queued lines (within the request caps) and the summary, if changed.
    fn peek(&self) -> Batch {
        let queue = self.lock_queue();
        let mut lines = Vec::new();
        let mut bytes = 0;
        for line in &queue.lines {
            if !lines.is_empty() && (lines.len() >= MAX_BATCH_LINES || bytes + line.len() > MAX_BATCH_BYTES) {
                break;
            }
            bytes += line.len();
            lines.push(line.clone());
        }
        let summary = (queue.summary_version != queue.summary_sent_version)
            .then(|| Value::Object(queue.summary.clone()).to_string());
        Batch { drains_queue: lines.len() == queue.lines.len(), lines, summary, summary_version: queue.summary_version }
    }

    /// Removes the lines of a batch the server accepted.
    fn commit(&self, batch: &Batch) {
        let mut queue = self.lock_queue();
        let n = batch.lines.len().min(queue.lines.len());
        queue.lines.drain(..n);
        if batch.summary.is_some() {
            queue.summary_sent_version = queue.summary_sent_version.max(batch.summary_version);
        }
        drop(queue);
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

struct Batch {
    lines: Vec<String>,
    summary: Option<String>,
    summary_version: u64,
    /// No rows remain queued beyond this batch.
    drains_queue: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.summary.is_none()
    }
}

/// Stops the background task (after a final flush) when the last handle is dropped without
/// [`WandbLogger::finish`], so a forgotten logger does not stream heartbeats forever.
struct LastHandle(Arc<Shared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.request_stop();
    }
}

/// A cheap, clone-able handle to one W&B run. All methods return without waiting on the network.
#[derive(Clone)]
pub struct WandbLogger {
    shared: Arc<Shared>,
    _last: Arc<LastHandle>,
}

impl fmt::Debug for WandbLogger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WandbLogger")
            .field("run_url", &self.run_url())
            .field("sent", &self.sent())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl WandbLogger {
    /// Never fails and never blocks: spawns a background task that creates the run (retrying
    /// with backoff) and streams rows. Without an API key, a Tokio runtime or a usable base URL
    /// it logs one warning and every row is dropped and counted.
    pub fn start(settings: WandbSettings) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                lines: VecDeque::new(),
                summary: Map::new(),
                summary_version: 0,
                summary_sent_version: 0,
                accepting: true,
                last_step: None,
            }),
            capacity: settings.buffer_rows,
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            run_url: OnceLock::new(),
            task: Mutex::new(None),
            started: Instant::now(),
        });
        let logger = Self { _last: Arc::new(LastHandle(shared.clone())), shared };
        match spawn_task(&logger.shared, settings) {
            Ok(handle) => *logger.shared.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle),
            Err(reason) => {
                warn!("W&B logging disabled: {reason}; metrics will be dropped");
                logger.shared.disable();
            }
        }
        logger
    }

    /// Queues one history row with `_step` = `step` (plus `_timestamp` and `_runtime` as the
    /// official client adds). If the queue is full, logging is off, or `step` is below the
    /// previous row's (which the official client refuses too), the row is dropped and counted.
    /// Never awaits.
    pub fn log(&self, step: u64, mut row: Map<String, Value>) {
        let shared = &self.shared;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        row.insert("_step".into(), Value::from(step));
        row.insert("_timestamp".into(), Value::from(timestamp));
        row.insert("_runtime".into(), Value::from(shared.started.elapsed().as_secs_f64()));
        let line = match serde_json::to_string(&row) {
            Ok(line) if line.len() <= MAX_LINE_BYTES => line,
            Ok(line) => {
                debug!(bytes = line.len(), "W&B row too large for the backend; dropped");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                debug!(%error, "W&B row not serializable; dropped");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut queue = shared.lock_queue();
        let backwards = queue.last_step.is_some_and(|last| step < last);
        if !queue.accepting || queue.lines.len() >= shared.capacity || backwards {
            drop(queue);
            if backwards {
                debug!(step, "W&B row with a step below the previous one; dropped");
            }
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.lines.push_back(line);
        queue.last_step = Some(step);
        let half_full = queue.lines.len() == (shared.capacity / 2).max(1);
        queue.summary.extend(row);
        queue.summary_version += 1;
        drop(queue);
        if half_full {
            shared.wake.notify_one();
        }
    }

    /// Rows dropped so far: queue full, logging off, or still unsent when [`finish`](Self::finish) gave up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Rows the server has acknowledged.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// The run's web page, once the run exists on the server.
    pub fn run_url(&self) -> Option<String> {
        self.shared.run_url.get().cloned()
    }

    /// Sends what is queued within `timeout`, marks the run finished (file_stream `complete`
    /// and `exitcode: 0`, as the official client does), then stops. Rows still unconfirmed at
    /// the deadline are counted as dropped. Later `log` calls on other clones drop their rows.
    pub async fn finish(self, timeout: Duration) {
        self.shared.request_stop();
        let handle = self.shared.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut handle) = handle
            && tokio::time::timeout(timeout, &mut handle).await.is_err()
        {
            handle.abort();
            // The task is cancelled at its next await point; its result carries nothing.
            let _cancelled = handle.await;
        }
        let lost = self.shared.disable();
        if lost > 0 {
            warn!(lost, "W&B: rows not delivered before the finish timeout were dropped");
        }
    }
}

/// Builds the client and spawns the task; `Err` says why logging is off.
fn spawn_task(shared: &Arc<Shared>, settings: WandbSettings) -> Result<JoinHandle<()>, String> {
    let key = settings
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| "no API key (set WANDB_API_KEY or run `wandb login`, which writes ~/.netrc)".to_owned())?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| "not called inside a Tokio runtime".to_owned())?;
    let api = Api::new(settings.base_url.clone(), ApiKey::new(key.to_owned()), settings.request_timeout)
        .map_err(|e| e.to_string())?;
    let spec = RunSpec {
        run_id: new_run_id(),
        project: settings.project.clone(),
        display_name: settings.run_name.clone(),
        config_json: api::backend_config(&settings.config),
        host: hostname(),
    };
    let task = Task {
        shared: shared.clone(),
        api,
        spec,
        entity: settings.entity.clone().filter(|e| !e.trim().is_empty()),
        app_url: api::app_url(&settings.base_url),
        flush_interval: settings.flush_interval.max(MIN_FLUSH_INTERVAL),
    };
    Ok(runtime.spawn(task.run()))
}

/// An 8-character id from `[a-z0-9]`, the shape of the official client's `generate_id()`.
fn new_run_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// The machine name shown on the run page (`host` in `upsertBucket`), best effort.
fn hostname() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel.or_else(|| std::env::var("HOSTNAME").ok()).map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}

/// Exponential backoff with jitter, so many miners do not retry in lockstep.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_INITIAL }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }

    async fn wait(&mut self) {
        let delay = self.next.mul_f64(rand::rng().random_range(0.75..1.25));
        self.next = (self.next * 2).min(BACKOFF_MAX);
        tokio::time::sleep(delay).await;
    }
}

/// The background task: create the run, then stream queued rows until stopped.
struct Task {
    shared: Arc<Shared>,
    api: Api,
    spec: RunSpec,
    entity: Option<String>,
    app_url: String,
    flush_interval: Duration,
}

impl Task {
    async fn run(mut self) {
        let Some(run) = self.create_run().await else { return };
        let url = format!("{}/{}/{}/runs/{}", self.app_url, run.entity, run.project, run.run_id);
        info!(run_url = %url, "W&B run created");
        let _ = self.shared.run_url.set(url);
        self.stream(run).await;
    }

    /// `upsertBucket` (after `viewer` when no entity is configured), retried until it works, the
    /// server refuses permanently, or a stop finds nothing queued.
    async fn create_run(&mut self) -> Option<RunInfo> {
        let mut backoff = Backoff::new();
        let mut failures = 0u32;
        loop {
            if self.shared.is_stopping() && self.shared.queued() == 0 {
                return None;
            }
            match self.try_create_run().await {
                Ok(run) => return Some(run),
                Err(error) if !error.is_retryable() => {
                    warn!(%error, "W&B run creation refused; metrics logging disabled");
                    self.shared.disable();
                    return None;
                }
                Err(error) => {
                    if failures == 0 {
                        warn!(%error, "W&B run creation failed; retrying in the background");
                    } else {
                        debug!(%error, failures, "W&B run creation failed again");
                    }
                    failures += 1;
                    backoff.wait().await;
                }
            }
        }
    }

    async fn try_create_run(&mut self) -> Result<RunInfo, ApiError> {
        let entity = match &self.entity {
            Some(entity) => entity.clone(),
            None => {
                let entity = self.api.viewer_entity().await?;
                self.entity = Some(entity.clone());
                entity
            }
        };
        self.api.upsert_run(&entity, &self.spec).await
    }

    /// Sends queued rows every `flush_interval` (or when woken), heartbeats when idle, and the
    /// final `complete` request once stopping with an empty queue.
    async fn stream(&self, run: RunInfo) {
        let mut offset = run.history_line_count;
        let mut last_send = Instant::now();
        let mut backoff = Backoff::new();
        let mut failing = false;
        loop {
            if !self.shared.is_stopping() {
                tokio::select! {
                    () = tokio::time::sleep(self.flush_interval) => {}
                    () = self.shared.wake.notified() => {}
                }
            }
            loop {
                let stopping = self.shared.is_stopping();
                let batch = self.shared.peek();
                let last = stopping && batch.drains_queue;
                if batch.is_empty() && !last && last_send.elapsed() < HEARTBEAT_INTERVAL {
                    break;
                }
                let body = api::file_stream_body(offset, &batch.lines, batch.summary.as_deref(), last);
                match self.api.file_stream(&run, &body).await {
                    Ok(()) => {
                        self.shared.commit(&batch);
                        offset += batch.lines.len() as u64;
                        last_send = Instant::now();
                        backoff.reset();
                        if failing {
                            info!("W&B streaming recovered");
                            failing = false;
                        }
                        if last {
                            debug!(sent = self.shared.sent.load(Ordering::Relaxed), "W&B run marked complete");
                            return;
                        }
                        if batch.drains_queue {
                            break;
                        }
                    }
                    Err(error) if !error.is_retryable() => {
                        warn!(%error, "W&B refused streamed metrics; logging disabled");
                        self.shared.disable();
                        return;
                    }
                    Err(error) => {
                        if failing {
                            debug!(%error, "W&B file_stream failed again");
                        } else {
                            warn!(%error, "W&B file_stream failed; retrying with backoff");
                            failing = true;
                        }
                        backoff.wait().await;
                    }
                }
            }
        }
    }
}
