//! Every message the actors exchange, in one place: the protocol of the runtime.

use std::path::PathBuf;
use std::sync::Arc;

use ractor::RpcReplyPort;
use tessera_core::chain::{BlockEvent, BlockInfo};
use tessera_core::hotkey::Hotkey;
use tessera_core::hparams::Hparams;
use tessera_core::slice::{ObjectKey, SliceKind};
use tessera_core::window::{Block, Window};

use crate::context::PeerView;
use crate::error::RuntimeError;

/// To the ChainListener.
pub enum ChainListenerMsg {
    /// From its block-stream task.
    Event(BlockEvent),
    /// Time to re-read the metagraph and commitments.
    Refresh,
    /// A refresh finished (read off the handler).
    Refreshed(Result<PeerView, String>),
    /// The hparams were read again.
    HparamsLoaded(Result<Box<Hparams>, String>),
}

/// To the WindowClock.
pub enum WindowClockMsg {
    Block(BlockInfo),
}

/// To the WeightSetter.
pub enum WeightSetterMsg {
    /// New scores were folded in (the weights to set are read from the score book).
    ScoresUpdated { window: Window },
    /// Time to check the rate limit, a pending reveal, or a retry.
    Tick,
    /// A submission task ended.
    Done(SubmitOutcome),
}

/// How a weight submission ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Set and read back from the chain at this block.
    Set { block: Block, weights: Vec<(u16, u16)> },
    /// A commit landed (the reveal comes later, by us or by the chain).
    Committed { block: Block },
    /// A commit was revealed and the weights read back.
    Revealed { block: Block, weights: Vec<(u16, u16)> },
    /// The subnet's rate limit: not before this block (a wait, not a failure).
    RateLimited { until: Block },
    /// A pending commit is not revealable yet.
    Waiting { until: Block },
    /// Nothing to do.
    Idle,
    /// Refused or failed; retried with a backoff.
    Failed(String),
}

/// To the Trainer (and the validator's Evaluator, which takes the same messages).
pub enum TrainerMsg {
    /// The clock entered `window` at `block`.
    WindowStarted { window: Window, block: Block },
    /// The current window task finished (or failed).
    WindowDone(Result<WindowResult, RuntimeError>),
    /// Watchdog: engine liveness; the safe point where injected faults fire.
    Tick,
    /// Stop training, write a checkpoint, reply.
    Shutdown(RpcReplyPort<ShutdownReport>),
}

/// What a window task did, for logs and counters.
#[derive(Debug, Clone)]
pub struct WindowResult {
    pub window: Window,
    pub trained: bool,
}

#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub checkpoint_window: Option<Window>,
    pub error: Option<String>,
}

/// To the StateSyncer.
pub enum StateSyncerMsg {
    /// The mean of the valid `kind` slices of `window` (the own one included).
    /// `center`: what each slice's distance is measured from for the clip (the reader's
    /// own values at the positions; `None`: zero, for updates).
    Average { kind: SliceKind, window: Window, center: Option<Arc<Vec<f32>>>, reply: RpcReplyPort<AverageOutcome> },
}

#[derive(Debug, Clone, Default)]
pub struct AverageOutcome {
    /// `None` when no valid slice was found.
    pub mean: Option<Arc<Vec<f32>>>,
    pub accepted: u32,
    pub rejected: u32,
    /// Slices pulled back to the clip radius.
    pub clipped: u32,
    /// What became of each sender's slice (a validator marks state faults by it).
    pub verdicts: Vec<(Hotkey, SliceVerdict)>,
}

/// One peer's slice in an average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SliceVerdict {
    /// Averaged (pulled back to the clip radius if beyond it); its distance from the centre.
    Counted { distance: f64 },
    /// Refused at decode (forged, malformed, implausible values).
    Rejected,
}

/// To the SliceDownloader.
pub enum SliceDownloaderMsg {
    /// Every usable `kind` object of `window` in the buckets this miner reads, fetched into
    /// the cache; byte-level validation is the reader's.
    Fetch { kind: SliceKind, window: Window, reply: RpcReplyPort<FetchOutcome> },
    /// List the deltas of `window` while it is open, recording when each is first seen
    /// (a validator's, for on-time checks and copy order by its own clock).
    Watch { window: Window },
}

#[derive(Debug, Clone, Default)]
pub struct FetchOutcome {
    pub slices: Vec<FetchedSlice>,
    /// Objects listed but not used (bad name, unregistered, wrong bucket, out of time).
    pub refused: u32,
    pub failed: u32,
    /// Listings and downloads that overran the fetch budget (counted in `failed` too).
    pub late: u32,
    /// Buckets not tried at all (skipped for failing or slowness): their miners were not
    /// read, so a validator scores them neither way.
    pub not_tried: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FetchedSlice {
    pub key: ObjectKey,
    pub path: PathBuf,
    pub bucket: String,
    /// The bucket's `LastModified` (unix ms): the peer's claim, used only when this node
    /// did not watch the window.
    pub last_modified_ms: Option<i64>,
    /// When this node first listed it (unix ms, deltas only), for telling a copy from its
    /// original by the reader's own clock.
    pub first_seen_ms: Option<i64>,
}

/// To the SliceUploader.
pub enum SliceUploaderMsg {
    /// Publish the own slice; queued, never blocks the sender.
    Upload { kind: SliceKind, window: Window, body: crate::sparse::ObjectBody },
    /// Delete own objects of `kinds` (and cached slices) of windows before this one.
    Prune { before: Window, kinds: &'static [SliceKind] },
    /// Retry the head of the queue (after a backoff).
    Kick,
    /// An upload task ended.
    Finished { key: String, result: Result<(), String> },
    /// Finish the upload in flight (or abandon it at the deadline) and reply.
    Drain(RpcReplyPort<usize>),
}
