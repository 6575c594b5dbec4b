//! What every actor of one miner shares: who the miner is, its clients, the views the
//! ChainListener keeps fresh, the clock, counters, and the engine slot that lets a
//! restarted Trainer find the model it left behind.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ractor::{ActorRef, Message};

use crate::messages::SliceVerdict;
use tessera_core::chain::{Chain, Metagraph};
use tessera_core::config::HparamsSettings;
use tessera_core::hotkey::Hotkey;
use tessera_core::hparams::Hparams;
use tessera_core::model::ParamLayout;
use tessera_core::slice::{
    Exchange, Expected, MAX_ABS_VALUE, SliceIndices, SliceKind, slice_len, state_compression, update_value_bound,
};
use tessera_core::storage::{BucketClient, BucketLocation, PeerClients, SliceCache};
use tessera_core::validator::ScoreBook;
use tessera_core::wallet::LoadedHotkey;
use tessera_core::window::{Block, Window, WindowSchedule};
use tessera_data::{Batch, PageSource, TextTokenizer};
use tessera_model::LlamaConfig;
use tessera_model::checkpoint::CheckpointStore;
use tessera_model::train::{OptimSettings, SampleRate};
use tokio::sync::watch;

use crate::bounds::{OWN_UPDATES_KEPT, SLICE_INDEX_WINDOWS_KEPT};
use crate::deadlines::Deadlines;
use crate::engine::EngineHandle;
use crate::error::RuntimeError;
use crate::faults::Faults;
use crate::stats::{MinerStats, ValidatorStats, WindowSummary};
use crate::window::Misbehaviour;

/// The actor kinds of a miner's tree; names in the registry are `{miner}/{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    ChainListener,
    WindowClock,
    StateSyncer,
    SliceDownloader,
    SliceUploader,
    Trainer,
    /// The validator's counterpart of the Trainer: keeps its model in step and scores.
    Evaluator,
    WeightSetter,
}

impl ActorKind {
    /// A miner's actors.
    pub const ALL: [ActorKind; 6] = [
        ActorKind::ChainListener,
        ActorKind::WindowClock,
        ActorKind::StateSyncer,
        ActorKind::SliceDownloader,
        ActorKind::SliceUploader,
        ActorKind::Trainer,
    ];

    /// A validator's actors: the miner's without training, plus the weights (its uploads
    /// are the snapshots of a compressed exchange's model).
    pub const VALIDATOR: [ActorKind; 7] = [
        ActorKind::ChainListener,
        ActorKind::WindowClock,
        ActorKind::StateSyncer,
        ActorKind::SliceDownloader,
        ActorKind::SliceUploader,
        ActorKind::Evaluator,
        ActorKind::WeightSetter,
    ];

    pub fn for_role(role: &NodeRole) -> &'static [ActorKind] {
        match role {
            NodeRole::Miner => &Self::ALL,
            NodeRole::Validator { .. } => &Self::VALIDATOR,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ActorKind::ChainListener => "chain_listener",
            ActorKind::WindowClock => "window_clock",
            ActorKind::StateSyncer => "state_syncer",
            ActorKind::SliceDownloader => "slice_downloader",
            ActorKind::SliceUploader => "slice_uploader",
            ActorKind::Trainer => "trainer",
            ActorKind::Evaluator => "evaluator",
            ActorKind::WeightSetter => "weight_setter",
        }
    }
}

impl std::fmt::Display for ActorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The registry name of a miner's actor. Siblings find each other by name at each use,
/// so a restarted actor (a new `ActorRef`) is found without rewiring.
pub fn actor_name(miner: &str, kind: ActorKind) -> String {
    format!("{miner}/{kind}")
}

/// The miner's actor of `kind`, if it is running now.
/// Checked by message type: an actor of another type under that name is not returned.
pub fn lookup<M: Message>(miner: &str, kind: ActorKind) -> Option<ActorRef<M>> {
    ActorRef::<M>::where_is(actor_name(miner, kind))
}

/// What a node of the actor tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    Miner,
    /// Scores the miners and sets weights; keeps its scores (and a pending weight
    /// commit) in `state_dir`.
    Validator {
        state_dir: PathBuf,
    },
}

/// Where the clock stands: the latest block seen and its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockState {
    pub block: Block,
    pub window: Window,
    /// False until the first block arrived.
    pub started: bool,
}

/// One peer whose slices are read: its hotkey, UID and committed bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u16,
    pub hotkey: Hotkey,
    pub bucket: BucketLocation,
}

/// The subnet as the ChainListener last read it.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    pub metagraph: Metagraph,
    /// Registered hotkeys with a valid bucket commitment.
    pub peers: Vec<Peer>,
    pub registered: HashSet<Hotkey>,
    /// When it was read (unix ms); 0 = never.
    pub refreshed_ms: i64,
}

/// When each recent block arrived, for the time bounds of a window (copying defence).
#[derive(Debug, Default)]
pub struct BlockTimes {
    arrivals: BTreeMap<Block, i64>,
}

impl BlockTimes {
    const KEEP: usize = 4096;

    pub fn record(&mut self, block: Block, unix_ms: i64) {
        self.arrivals.entry(block).or_insert(unix_ms);
        while self.arrivals.len() > Self::KEEP {
            self.arrivals.pop_first();
        }
    }

    /// The wall-clock span `[first block of window, first block after it)` as observed,
    /// extrapolated with `block_ms` for blocks not seen (before start, or still ahead).
    pub fn window_bounds(&self, schedule: &WindowSchedule, window: Window, block_ms: u64) -> Option<(i64, i64)> {
        let start = self.time_of(schedule.start_block(window), block_ms)?;
        let end = self.time_of(schedule.end_block(window) + 1, block_ms)?;
        Some((start, end))
    }

    /// Whether `block` came before the first block this node saw (its time is a guess).
    pub fn before_first_seen(&self, block: Block) -> bool {
        self.arrivals.first_key_value().is_some_and(|(first, _)| block < *first)
    }

    fn time_of(&self, block: Block, block_ms: u64) -> Option<i64> {
        if let Some(&t) = self.arrivals.get(&block) {
            return Some(t);
        }
        // Nearest observed block, then the nominal block time.
        let after = self.arrivals.range(block..).next();
        let before = self.arrivals.range(..block).next_back();
        let (anchor, t) = match (before, after) {
            (Some(b), _) => b,
            (None, Some(a)) => a,
            (None, None) => return None,
        };
        let delta = (block as i128 - *anchor as i128) * i128::from(block_ms);
        Some((i128::from(*t) + delta) as i64)
    }
}

/// The runtime tunables of a miner: one type, configured by `[runtime]` and set by the
/// binary or the devnet.
pub use tessera_core::config::RuntimeSettings;

/// The model side of a miner: architecture, layout, where checkpoints go, data.
pub struct ModelSpec {
    pub device: tessera_core::model::Device,
    /// Precision, attention kernel and recomputation on `device`.
    pub compute: tessera_core::model::ComputeOptions,
    pub llama: LlamaConfig,
    pub optim: OptimSettings,
    pub layout: ParamLayout,
    pub checkpoints: CheckpointStore,
    pub source: Arc<dyn PageSource>,
    pub tokenizer: TextTokenizer,
    /// The seed the network initialises the model from (the same on every node).
    pub init_seed: u64,
}

/// Called with each window's summary (telemetry such as W&B); must return at once.
pub type WindowHook = Arc<dyn Fn(&MinerContext, &WindowSummary) + Send + Sync>;

/// Who a node is.
pub struct NodeIdentity {
    /// Label in logs, metrics and actor names (unique in the process).
    pub name: String,
    pub netuid: u16,
    pub uid: u16,
    pub hotkey: Arc<LoadedHotkey>,
    pub role: NodeRole,
}

/// The network as this node sees it: the chain and its clock, the peers, the hparams.
pub struct NetworkView {
    pub chain: Arc<dyn Chain>,
    pub hparams: Hparams,
    pub schedule: WindowSchedule,
    /// Where to re-read the hparams every refresh (`None`: built in, never changes).
    pub hparams_refresh: Option<HparamsSettings>,
    /// `hparams.max_history` as last refreshed (the one hparam a running miner follows).
    pub max_history: AtomicU64,
    pub clock: watch::Sender<ClockState>,
    pub peers: watch::Sender<Arc<PeerView>>,
    pub block_times: Mutex<BlockTimes>,
}

/// Where slices go and come from.
pub struct Storage {
    pub own_bucket: BucketClient,
    pub peer_clients: PeerClients,
    pub cache: SliceCache,
}

/// The model and what outlives a Trainer's restart with it.
pub struct ModelSlot {
    pub spec: ModelSpec,
    /// The engine outlives a Trainer actor's crash: the next Trainer takes it back.
    pub engine: Mutex<Option<EngineHandle>>,
    /// The seed's adaptive sample rate; here so that a restarted Trainer keeps it.
    pub sample_rate: Arc<Mutex<SampleRate>>,
    /// The own updates of the last windows (update exchange), replaced by the peers' mean
    /// a window later; here so that a restarted Trainer keeps them.
    pub own_updates: Mutex<VecDeque<(Window, Arc<Vec<f32>>)>>,
    /// The held-out micro-batches, loaded at the first evaluation.
    pub held_out: tokio::sync::OnceCell<Arc<Vec<Batch>>>,
    pub index_cache: Mutex<VecDeque<(Window, Arc<SliceIndices>)>>,
    /// SparseLoCo's error buffer and outer momentum (`crate::sparse`).
    pub sparse: Mutex<crate::sparse::SparseState>,
}

/// Counters and the per-window telemetry hook.
#[derive(Default)]
pub struct Telemetry {
    pub stats: MinerStats,
    pub window_hook: Mutex<Option<WindowHook>>,
}

/// What only a validator holds: every UID's moving score (loaded from the state directory
/// at the first window, saved atomically after each, shared with the WeightSetter) and
/// its counters.
#[derive(Default)]
pub struct ValidatorState {
    pub scores: Mutex<Option<ScoreBook>>,
    pub stats: ValidatorStats,
    /// What became of each miner's state slice in the state averages of the last few
    /// windows, until the window is scored ([`crate::messages::SliceVerdict`]).
    pub state_verdicts: Mutex<BTreeMap<Window, Vec<(Hotkey, SliceVerdict)>>>,
}

/// Everything one node's actors share, by concern. Built once per node; actors hold an `Arc`.
pub struct MinerContext {
    pub id: NodeIdentity,
    pub network: NetworkView,
    pub storage: Storage,
    pub model: ModelSlot,
    pub telemetry: Telemetry,
    /// `Some` on a validator only.
    pub validator: Option<ValidatorState>,
    pub settings: RuntimeSettings,
    /// What the node publishes instead of its honest result: the devnet's adversaries.
    pub misbehaviour: Option<Arc<dyn Misbehaviour>>,
    pub faults: Faults,
    /// Set at shutdown: actors stop taking new work.
    pub stopping: AtomicBool,
}

/// What a node is built from; [`MinerContext::new`] adds the shared runtime state.
pub struct MinerParts {
    pub id: NodeIdentity,
    pub chain: Arc<dyn Chain>,
    pub hparams: Hparams,
    pub schedule: WindowSchedule,
    /// Where to re-read the hparams every refresh (`None`: built in, never changes).
    pub hparams_refresh: Option<HparamsSettings>,
    pub storage: Storage,
    pub model: ModelSpec,
    pub settings: RuntimeSettings,
    /// What the node publishes instead of its honest result: the devnet's adversaries
    /// (`None` on every production node).
    pub misbehaviour: Option<Arc<dyn Misbehaviour>>,
}

impl MinerContext {
    pub fn new(parts: MinerParts) -> Arc<Self> {
        let validator = matches!(parts.id.role, NodeRole::Validator { .. }).then(ValidatorState::default);
        Arc::new(Self {
            network: NetworkView {
                chain: parts.chain,
                max_history: AtomicU64::new(parts.hparams.max_history),
                hparams: parts.hparams,
                schedule: parts.schedule,
                hparams_refresh: parts.hparams_refresh,
                clock: watch::Sender::new(ClockState::default()),
                peers: watch::Sender::new(Arc::new(PeerView::default())),
                block_times: Mutex::new(BlockTimes::default()),
            },
            id: parts.id,
            storage: parts.storage,
            model: ModelSlot {
                spec: parts.model,
                engine: Mutex::new(None),
                sample_rate: Arc::new(Mutex::new(SampleRate::default())),
                own_updates: Mutex::new(VecDeque::new()),
                held_out: tokio::sync::OnceCell::new(),
                index_cache: Mutex::new(VecDeque::new()),
                sparse: Mutex::new(Default::default()),
            },
            telemetry: Telemetry::default(),
            validator,
            settings: parts.settings,
            misbehaviour: parts.misbehaviour,
            faults: Faults::default(),
            stopping: AtomicBool::new(false),
        })
    }

    /// A validator's counters (`None` on a miner).
    pub fn validator_stats(&self) -> Option<&ValidatorStats> {
        self.validator.as_ref().map(|v| &v.stats)
    }

    /// The window loop's waits, from `peer_deadline`.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines::new(self.settings.peer_deadline)
    }

    /// The compression of this network's slices at `I(w)` ([`state_compression`]: the
    /// hparams', or under a compressed exchange about 4,096 values a state slice).
    pub fn slice_compression(&self) -> u32 {
        let numel = self.model.spec.layout.total_numel() as u64;
        state_compression(self.exchange(), self.network.hparams.compression, numel)
    }

    /// Values in one slice of this model at this compression (every window the same).
    pub fn slice_value_count(&self) -> usize {
        let compression = self.slice_compression();
        self.model.spec.layout.params().iter().map(|p| slice_len(p.numel() as u64, compression) as usize).sum()
    }

    /// The slice positions of `window`, computed off the async threads and kept for the
    /// few windows that use them (state of `w+1` at the end of `w`, again at the start of `w+1`).
    pub async fn indices(&self, window: Window) -> Result<Arc<SliceIndices>, RuntimeError> {
        if let Some(found) = lock(&self.model.index_cache).iter().find(|(w, _)| *w == window) {
            return Ok(found.1.clone());
        }
        let layout = self.model.spec.layout.clone();
        let compression = self.slice_compression();
        let computed =
            tokio::task::spawn_blocking(move || SliceIndices::compute(&layout, window, compression)).await??;
        let computed = Arc::new(computed);
        let mut cache = lock(&self.model.index_cache);
        cache.push_back((window, computed.clone()));
        while cache.len() > SLICE_INDEX_WINDOWS_KEPT {
            cache.pop_front();
        }
        Ok(computed)
    }

    /// What a valid `kind` slice of `window` looks like to this node: this model, this
    /// compression and exchange; signed by `hotkey` (any when `None`), one of `registered`
    /// (unchecked when `None`).
    pub fn expected_slice<'a>(
        &self,
        kind: SliceKind,
        window: Window,
        hotkey: Option<Hotkey>,
        registered: Option<&'a HashSet<Hotkey>>,
    ) -> Expected<'a> {
        Expected {
            kind,
            window,
            hotkey,
            registered,
            fingerprint: self.model.spec.layout.fingerprint(),
            compression: self.slice_compression(),
            value_count: self.envelope_count(kind),
            version: self.exchange().protocol_version(),
            max_abs: self.value_bound(kind),
        }
    }

    /// The largest magnitude a value of a `kind` slice may have on this network: one
    /// AdamW step's bound for an update-exchange delta, [`MAX_ABS_VALUE`] otherwise.
    pub fn value_bound(&self, kind: SliceKind) -> f32 {
        let hp = &self.network.hparams;
        match (kind, self.exchange()) {
            (SliceKind::Delta, Exchange::Update) => {
                update_value_bound(hp.learning_rate, hp.optimizer_beta1, hp.optimizer_beta2, hp.optimizer_weight_decay)
            }
            (SliceKind::Delta, exchange) if exchange.is_compressed() => self.sparse_value_bound(),
            _ => MAX_ABS_VALUE,
        }
    }

    /// How this miner exchanges training with its peers (the network's hparams).
    pub fn exchange(&self) -> Exchange {
        self.network.hparams.exchange
    }

    /// Keeps the own update of `window` (update exchange; SparseLoCo: the values the window
    /// started from) for the next few windows.
    pub fn remember_own_update(&self, window: Window, update: Arc<Vec<f32>>) {
        let mut kept = lock(&self.model.own_updates);
        kept.retain(|(w, _)| *w != window);
        kept.push_back((window, update));
        while kept.len() > OWN_UPDATES_KEPT {
            kept.pop_front();
        }
    }

    /// The own update of `window`, if this miner trained it and still has it.
    pub fn own_update(&self, window: Window) -> Option<Arc<Vec<f32>>> {
        lock(&self.model.own_updates).iter().find(|(w, _)| *w == window).map(|(_, u)| u.clone())
    }

    pub fn is_validator(&self) -> bool {
        matches!(self.id.role, NodeRole::Validator { .. })
    }

    /// The actor that runs the windows: the Trainer, or a validator's Evaluator (the same
    /// actor under another name).
    pub fn window_actor(&self) -> ActorKind {
        if self.is_validator() { ActorKind::Evaluator } else { ActorKind::Trainer }
    }

    pub fn own_location(&self) -> &BucketLocation {
        self.storage.own_bucket.location()
    }

    pub fn own_hotkey(&self) -> Hotkey {
        self.id.hotkey.hotkey()
    }

    /// The training engine is built (the Trainer started it, or a restarted one took it back).
    pub fn engine_ready(&self) -> bool {
        lock(&self.model.engine).as_ref().is_some_and(EngineHandle::is_alive)
    }

    pub fn clock_now(&self) -> ClockState {
        *self.network.clock.borrow()
    }

    pub fn peer_view(&self) -> Arc<PeerView> {
        self.network.peers.borrow().clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// `window`'s span in unix ms (observed block times, extrapolated where not seen).
    pub fn window_bounds(&self, window: Window) -> Option<(i64, i64)> {
        let block_ms = self.settings.block_time.as_millis() as u64;
        lock(&self.network.block_times).window_bounds(&self.network.schedule, window, block_ms)
    }

    /// A window's nominal length; `None` under fixed compute, where the clock waits for
    /// the nodes and a window lasts as long as the slowest.
    pub fn nominal_window(&self) -> Option<std::time::Duration> {
        (self.settings.fixed_micro_batches == 0)
            .then(|| self.settings.block_time * self.network.schedule.window_length() as u32)
    }

    /// Time bounds in which an object of `(kind, window)` may have been uploaded, by the
    /// peer's own claim (`LastModified`): `state-w` is written at the end of window `w-1`,
    /// `delta-w` at the end of `w`; the end work runs into the next window, and clocks
    /// differ by up to `clock_skew`.
    pub fn upload_bounds(&self, kind: SliceKind, window: Window) -> Option<(i64, i64)> {
        let written_after = match kind {
            SliceKind::State => window.saturating_sub(1),
            SliceKind::Delta => window,
            // Written when its writer's model reached the window, which for a validator is
            // a few windows later: only the earliest time is bounded (its content is what
            // a joiner checks, not its time).
            SliceKind::Snapshot => window.saturating_sub(1),
        };
        let times = lock(&self.network.block_times);
        let block_ms = self.settings.block_time.as_millis() as u64;
        let (mut start, _) = times.window_bounds(&self.network.schedule, written_after, block_ms)?;
        // Before this node started, block times are extrapolated, and a chain that paused
        // (or a devnet restarted on its state) makes them later than they were: an object
        // of such a window (a catch-up reads them) is bounded by its latest time only.
        if times.before_first_seen(self.network.schedule.start_block(written_after)) {
            start = i64::MIN;
        }
        let (_, end) = times.window_bounds(&self.network.schedule, written_after + 1, block_ms)?;
        let skew = self.settings.clock_skew.as_millis() as i64;
        // While the upload's window is still open here its end is not observed (under
        // fixed compute the clock waits, so an extrapolated end means nothing): no upper
        // bound; lateness is judged by the reader's first sighting (`first_seen`).
        let open = kind == SliceKind::Snapshot || self.clock_now().window <= written_after + 1;
        Some((start.saturating_sub(skew), if open { i64::MAX } else { end + skew }))
    }

    /// The peers whose buckets this miner reads: every committed bucket with `--remote`,
    /// else only the own bucket (which several miners may share, as the seed's start.sh).
    pub fn buckets_to_read(&self) -> Vec<BucketLocation> {
        if !self.settings.remote {
            return vec![self.own_location().clone()];
        }
        let view = self.peer_view();
        let mut seen = HashSet::new();
        let mut out = vec![self.own_location().clone()];
        seen.insert(self.own_location().to_string());
        for peer in &view.peers {
            if seen.insert(peer.bucket.to_string()) {
                out.push(peer.bucket.clone());
            }
        }
        out
    }

    /// With `--remote`, the hotkeys committed to each bucket (a slice signed by a hotkey
    /// found in another's bucket is not used).
    pub fn committers_by_bucket(&self) -> HashMap<String, HashSet<Hotkey>> {
        let view = self.peer_view();
        let mut map: HashMap<String, HashSet<Hotkey>> = HashMap::new();
        for peer in &view.peers {
            map.entry(peer.bucket.to_string()).or_default().insert(peer.hotkey);
        }
        map.entry(self.own_location().to_string()).or_default().insert(self.own_hotkey());
        map
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small locks leaves consistent data behind.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_use_observed_blocks_and_extrapolate_the_rest() {
        let schedule = WindowSchedule::new(2).unwrap();
        let mut times = BlockTimes::default();
        times.record(10, 10_000);
        times.record(11, 11_000);
        times.record(12, 12_500);
        // Window 5 = blocks 10, 11; ends when block 12 arrives.
        assert_eq!(times.window_bounds(&schedule, 5, 1000), Some((10_000, 12_500)));
        // Window 6 = blocks 12, 13; block 14 not seen: 12_500 + 2 * 1000.
        assert_eq!(times.window_bounds(&schedule, 6, 1000), Some((12_500, 14_500)));
        // Before anything seen: back from block 10.
        assert_eq!(times.window_bounds(&schedule, 4, 1000), Some((8_000, 10_000)));
        assert_eq!(BlockTimes::default().window_bounds(&schedule, 1, 1000), None);
    }
}
