//! A whole network in one process: the in-process dev chain, an embedded S3 server over
//! HTTP on 127.0.0.1, and N miners on a tiny Llama with the synthetic data source — every
//! real code path (slices through S3, commitments on the chain, the actor tree). The
//! fault-injection tests run on it, and so does `tessera devnet`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_core::chain::{Chain, DevChain, DevChainOptions};
use tessera_core::hparams::Hparams;
use tessera_core::model::Device;
use tessera_core::model::ParamLayout;
use tessera_core::slice::Exchange;
use tessera_core::storage::BucketName;
use tessera_core::storage::{AccessKeys, BucketClient, EmbeddedS3, PeerClients, SliceCache, TransferOptions};
use tessera_core::wallet::LoadedHotkey;
use tessera_core::window::{Window, WindowSchedule};
use tessera_data::{SyntheticSource, TextTokenizer};
use tessera_model::LlamaConfig;
use tessera_model::checkpoint::CheckpointStore;
use tessera_model::train::OptimSettings;
use thiserror::Error;
use tracing::info;

use crate::context::{MinerContext, MinerParts, ModelSpec, NodeIdentity, NodeRole, RuntimeSettings, Storage};
use crate::host::{Host, MinerShutdown};
use crate::stats::MinerStats;
use crate::task::AbortOnDrop;
pub mod adversaries;
pub mod hostile_s3;

pub use self::adversaries::Adversary;
use self::hostile_s3::HostileS3;

#[derive(Debug, Error)]
pub enum DevnetError {
    #[error("devnet setup: {0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DevnetError + '_ {
    move |e| DevnetError::Setup(format!("{what}: {e}"))
}

/// How to run the devnet.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    pub miners: usize,
    /// Extra miners that run with `--baseline` (train alone), for comparison.
    pub baseline_miners: usize,
    /// One node that trains alone on `miners` miners' worth of data per step (each step on
    /// `miners`× the micro-batch, as many steps per window): the data-parallel ideal.
    pub ideal_miner: bool,
    /// Extra miners that follow the seed's exchange (protocol v1) beside the others, so
    /// the two exchanges are compared in one run (they never read each other's slices).
    pub seed_exchange_miners: usize,
    /// Seeds the model's initialisation and the synthetic data (the same for every miner).
    pub seed: u64,
    /// Fixed compute: every miner trains `settings.fixed_micro_batches` per window and the
    /// chain builds the window's last block only when every miner finished the window and
    /// its uploads (a comparison of protocols, not of CPU sharing).
    pub lockstep: bool,
    /// Lockstep: the clock holds once every node has completed this many windows (and a
    /// validator has set the weights of its last scores), so every run of a seed ends at
    /// the same window with the same weights.
    pub lockstep_windows: Option<u64>,
    pub block_time: Duration,
    pub state_dir: PathBuf,
    pub netuid: u16,
    pub hparams: Hparams,
    /// Runtime tunables of every miner (the devnet's are quick).
    pub settings: RuntimeSettings,
    /// Blocks count on from the wall clock (block = unix time / block time), so a devnet
    /// restarted on the same state directory continues its windows.
    pub wall_clock_blocks: bool,
    /// Lockstep runs on a kept state directory: the chain continues from the head written
    /// here at the last shutdown (from block 0 on a new directory), so a fresh run is
    /// reproducible for a seed and a resumed one continues its windows.
    pub head_file: Option<PathBuf>,
    /// Prefix of the miners' names (actor names are process-wide: two devnets in one
    /// process need different prefixes).
    pub name_prefix: String,
    /// Run a validator that scores the miners and sets weights on the dev chain.
    pub validator: bool,
    /// One node of each of these adversaries ([`Adversary::parse_list`]).
    pub adversaries: Vec<Adversary>,
}

impl DevnetOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self, DevnetError> {
        let block_time = Duration::from_millis(500);
        let hparams = tiny_hparams(2)?;
        Ok(Self {
            miners: 3,
            baseline_miners: 0,
            ideal_miner: false,
            seed_exchange_miners: 0,
            seed: 0,
            lockstep: false,
            lockstep_windows: None,
            block_time,
            state_dir: state_dir.into(),
            netuid: 1,
            hparams,
            settings: devnet_settings(block_time),
            wall_clock_blocks: false,
            head_file: None,
            name_prefix: String::new(),
            validator: false,
            adversaries: Vec::new(),
        })
    }
}

/// The devnet's runtime tunables: the chain's block time, quick deadlines and refreshes.
pub fn devnet_settings(block_time: Duration) -> RuntimeSettings {
    RuntimeSettings {
        checkpoint_every: 1,
        download_concurrency: 8,
        peer_deadline: Duration::from_secs(5),
        progress_timeout: Duration::from_secs(2),
        peer_skip: Duration::from_secs(5),
        refresh_period: Duration::from_secs(1),
        max_restarts: 20,
        restart_period: Duration::from_secs(60),
        restart_backoff: Duration::from_millis(100),
        restart_backoff_max: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(20),
        clock_skew: Duration::from_secs(2),
        // Every devnet bucket is on 127.0.0.1.
        allow_private_endpoints: true,
        eval_every: 1,
        block_time,
        remote: true,
        batch_size: 4,
        pages_per_window: 1,
        stall_timeout: (block_time * 8).max(Duration::from_secs(2)),
        ..RuntimeSettings::default()
    }
}

/// The seed's hparams with a tiny Llama (byte tokenizer, 2 layers, hidden 64) that
/// learns the synthetic source on a CPU in seconds.
pub fn tiny_hparams(window_length: u64) -> Result<Hparams, DevnetError> {
    let mut hp = Hparams::builtin().map_err(setup("built-in hparams"))?;
    hp.tokenizer_name = "bytes".to_owned();
    hp.vocab_size = tessera_data::BYTE_VOCAB_SIZE;
    hp.hidden_size = 64;
    hp.intermediate_size = 128;
    hp.num_hidden_layers = 2;
    hp.num_attention_heads = 4;
    hp.num_key_value_heads = 2;
    hp.max_position_embeddings = 128;
    hp.sequence_length = 64;
    hp.compression = 10;
    hp.window_length = window_length;
    hp.learning_rate = 3e-3;
    hp.max_history = 3;
    hp.validate().map_err(setup("tiny hparams"))?;
    Ok(hp)
}

/// What a devnet node is there for. Its `Display` is the only spelling of a role in the
/// devnet's tables and report; [`Role::stem`] names its nodes (`miner1`, `copier1`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Exchanges under the network's hparams (`exchange`).
    Exchanging,
    /// Exchanges under the seed's exchange beside the others, for comparison.
    SeedExchange,
    /// Trains alone (`--baseline`).
    Baseline,
    /// Trains alone on the exchanging miners' data put together (`--ideal-miner`).
    Ideal,
    /// Scores the miners and sets weights on the dev chain.
    Validator,
    /// Plays one of the adversaries of [`adversaries`].
    Adversary(Adversary),
}

impl Role {
    pub fn is_adversary(self) -> bool {
        matches!(self, Role::Adversary(_))
    }

    /// The stem of the devnet's names for this role (`miner1`, `copier1`, ...).
    pub fn stem(self) -> &'static str {
        match self {
            Role::Exchanging => "miner",
            Role::SeedExchange => "seedx",
            Role::Baseline => "baseline",
            Role::Ideal => "ideal",
            Role::Validator => "validator",
            Role::Adversary(adversary) => adversary.name(),
        }
    }
}

/// A role's spelling in the devnet's tables and report (`exchanging`, `seed-exchange`,
/// ...); [`Role::stem`] is the prefix of node names. Pads to a given width.
impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Role::Exchanging => "exchanging",
            Role::SeedExchange => "seed-exchange",
            Role::Baseline => "baseline",
            Role::Ideal => "ideal",
            Role::Validator => "validator",
            Role::Adversary(adversary) => adversary.name(),
        })
    }
}

/// The devnet's nodes, named by role: `miner1..`, `seedx1..`, `baseline1..`, then one of
/// each adversary (`copier1`, `lazy1`, ...) and `validator1`.
pub fn roster(options: &DevnetOptions) -> Vec<(String, Role)> {
    let groups = [
        (Role::Exchanging, options.miners),
        (Role::SeedExchange, options.seed_exchange_miners),
        (Role::Baseline, options.baseline_miners),
        (Role::Ideal, usize::from(options.ideal_miner)),
    ]
    .into_iter()
    .chain(options.adversaries.iter().map(|a| (Role::Adversary(*a), 1)))
    .chain([(Role::Validator, usize::from(options.validator))]);
    groups
        .flat_map(|(role, n)| (1..=n).map(move |i| (format!("{}{}{i}", options.name_prefix, role.stem()), role)))
        .collect()
}

fn dev_hotkey(name: &str) -> Result<LoadedHotkey, DevnetError> {
    LoadedHotkey::dev(&format!("//tessera-devnet-{name}")).map_err(setup("dev hotkey"))
}

/// The lockstep clock: builds each window's blocks `pace` apart and holds the block that
/// would start the next window until every running node has finished the window (see
/// [`window_settled`]), or a generous deadline passed, which is logged. After `windows`
/// windows on every node it builds no more blocks and sets `held`.
async fn drive_lockstep(
    chain: Arc<DevChain>,
    miners: Vec<Arc<MinerContext>>,
    schedule: WindowSchedule,
    pace: Duration,
    windows: Option<u64>,
    held: Arc<AtomicBool>,
) {
    // Every engine built first, so that no miner loses the first window to start-up.
    let ready = tokio::time::Instant::now() + LOCKSTEP_WAIT_LIMIT;
    while tokio::time::Instant::now() < ready && !miners.iter().all(|m| m.is_stopping() || m.engine_ready()) {
        tokio::time::sleep(LOCKSTEP_POLL).await;
    }
    loop {
        let block = chain.produce_block().number;
        let window = schedule.window_of_block(block);
        if schedule.window_of_block(block + 1) == window {
            tokio::time::sleep(pace).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + LOCKSTEP_WAIT_LIMIT;
        while !all_settled(&chain, &miners, window).await {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(window, "lockstep: a miner did not finish the window in time; moving on");
                break;
            }
            tokio::time::sleep(LOCKSTEP_POLL).await;
        }
        let completed = |m: &Arc<MinerContext>| MinerStats::get(&m.telemetry.stats.windows_completed);
        if windows.is_some_and(|n| miners.iter().all(|m| m.is_stopping() || completed(m) >= n)) {
            held.store(true, Ordering::Release);
            return;
        }
        tokio::time::sleep(pace).await;
    }
}

/// Whether every node is done with `window` as the lockstep clock sees it: its summary
/// recorded, its uploads out of the queue, and (a validator) the weights of its last
/// scores confirmed on chain whenever the chain lets them be set now — so the weights set
/// never depend on how fast a node ran. (Under a rate limit or commit-reveal the weights
/// can change only after more blocks, which the lockstep clock counts the same every run.)
async fn all_settled(chain: &DevChain, nodes: &[Arc<MinerContext>], window: Window) -> bool {
    for node in nodes {
        let s = &node.telemetry.stats;
        if node.is_stopping() {
            continue;
        }
        let trained = s.last_window().is_some_and(|w| w.window >= window)
            && MinerStats::get(&s.uploads_settled) >= MinerStats::get(&s.uploads_requested);
        if !trained || (weights_behind(node) && weights_settable_now(chain, node).await) {
            return false;
        }
    }
    true
}

/// A validator whose latest scores earn weight that the chain does not hold yet.
fn weights_behind(node: &MinerContext) -> bool {
    let Some(stats) = node.validator_stats() else { return false };
    match stats.last_window() {
        Some(scored) if scored.uids.iter().any(|u| u.weight > 0.0) => {
            stats.weights_from_window().is_none_or(|w| w < scored.window)
        }
        _ => false,
    }
}

/// Whether the chain accepts this validator's weights set directly at its head.
async fn weights_settable_now(chain: &DevChain, node: &MinerContext) -> bool {
    let (netuid, uid) = (node.id.netuid, node.id.uid);
    let (Ok(policy), Ok(head), Ok(last)) =
        (chain.weights_policy(netuid).await, chain.latest_block().await, chain.last_weights_block(netuid, uid).await)
    else {
        return false;
    };
    !policy.commit_reveal && tessera_core::chain::weights::blocks_until_allowed(&policy, last, head.number) == 0
}

/// What every devnet node shares: the chain, the S3 server's keys and transfer options,
/// and the model's parts.
struct NodeCommon {
    chain: Arc<DevChain>,
    keys: AccessKeys,
    transfers: TransferOptions,
    peer_clients: PeerClients,
    model: ModelParts,
    schedule: WindowSchedule,
}

struct ModelParts {
    layout: ParamLayout,
    llama: LlamaConfig,
    optim: OptimSettings,
    tokenizer: TextTokenizer,
    source: Arc<SyntheticSource>,
}

/// One node: its hotkey registered and its bucket created and committed, then its
/// context with the settings of its role.
async fn start_node(
    options: &DevnetOptions,
    common: &NodeCommon,
    s3: &EmbeddedS3,
    name: &str,
    role: Role,
) -> Result<(Arc<MinerContext>, Option<HostileS3>), DevnetError> {
    let dir = options.state_dir.join(name);
    let chain: Arc<dyn Chain> = common.chain.clone();
    let hotkey = dev_hotkey(name)?;
    let bucket = BucketName::parse(&format!("devnet-{}", name.to_lowercase())).map_err(setup("bucket name"))?;
    let mut location = s3.create_bucket(bucket.as_str()).await.map_err(setup("creating a bucket"))?;
    // An adversary with a hostile server of its own: its bucket is reached through it.
    let front = match role {
        Role::Adversary(adversary) => match adversary.hostility(&options.settings) {
            Some(hostility) => Some(HostileS3::start(s3.addr(), hostility).await.map_err(setup("a hostile S3 front"))?),
            None => None,
        },
        _ => None,
    };
    if let Some(front) = &front {
        location = format!("{}/{}", front.endpoint(), bucket).parse().map_err(setup("the hostile front's location"))?;
    }
    let uid = chain.register(options.netuid, hotkey.keypair(), &hotkey.hotkey()).await.map_err(setup("registering"))?;
    chain
        .set_commitment(options.netuid, hotkey.keypair(), &location.to_string())
        .await
        .map_err(setup("committing the bucket"))?;
    // A cache per miner, as on separate hosts: every peer slice travels through S3.
    let cache = SliceCache::open(dir.join("slice-cache")).map_err(setup("opening the slice cache"))?;
    let credentials = common.keys.to_credentials().map_err(setup("credentials"))?;
    let own_bucket = BucketClient::new(&location, "us-east-1", credentials, common.transfers.clone())
        .map_err(setup("bucket client"))?;
    let mut hparams = options.hparams.clone();
    if role == Role::SeedExchange {
        hparams.exchange = Exchange::Seed;
    }
    let (settings, misbehaviour) = node_settings(options, role)?;
    let baseline = settings.baseline;
    let model = &common.model;
    let ctx = MinerContext::new(MinerParts {
        id: NodeIdentity {
            name: name.to_owned(),
            netuid: options.netuid,
            uid,
            hotkey: Arc::new(hotkey),
            role: match role {
                Role::Validator => NodeRole::Validator { state_dir: dir.clone() },
                _ => NodeRole::Miner,
            },
        },
        hparams,
        schedule: common.schedule,
        model: ModelSpec {
            device: Device::Cpu,
            compute: Default::default(),
            llama: model.llama.clone(),
            optim: model.optim.clone(),
            layout: model.layout.clone(),
            checkpoints: CheckpointStore::new(dir.join("checkpoints")),
            source: model.source.clone(),
            tokenizer: model.tokenizer.clone(),
            init_seed: options.seed,
        },
        settings,
        misbehaviour,
        chain,
        storage: Storage { own_bucket, peer_clients: common.peer_clients.clone(), cache },
        hparams_refresh: None,
    });
    info!(miner = %name, uid, bucket = %location, baseline, "devnet miner");
    Ok((ctx, front))
}

/// A node's runtime settings for its role, and what it publishes if it is an adversary.
fn node_settings(
    options: &DevnetOptions,
    role: Role,
) -> Result<(RuntimeSettings, Option<Arc<dyn crate::window::Misbehaviour>>), DevnetError> {
    let mut settings = options.settings.clone();
    if options.lockstep {
        settings.fixed_micro_batches = settings.fixed_micro_batches.max(1);
        // Blocks wait for the slowest miner: a long window is not a stalled stream.
        settings.stall_timeout = settings.stall_timeout.max(Duration::from_secs(600));
    }
    let baseline = matches!(role, Role::Baseline | Role::Ideal);
    settings.baseline = baseline;
    if role == Role::Ideal {
        // The exchanging miners' micro-batches side by side in each step, from as many pages.
        let n = options.miners.max(1);
        settings.batch_size *= n;
        settings.pages_per_window *= n;
    }
    settings.remote = settings.remote && !baseline;
    let misbehaviour = match role {
        Role::Adversary(adversary) => {
            // The honest node a copier copies: the first exchanging miner.
            let victim = dev_hotkey(&format!("{}{}1", options.name_prefix, Role::Exchanging.stem()))?.hotkey();
            let sybil = dev_hotkey(&format!("{}{}1", options.name_prefix, Adversary::Sybil.name()))?.hotkey();
            adversary.equip(&mut settings, victim, sybil)
        }
        _ => None,
    };
    Ok((settings, misbehaviour))
}

/// The lockstep clock's wait for a slow node, and how often it looks.
const LOCKSTEP_WAIT_LIMIT: Duration = Duration::from_secs(300);
const LOCKSTEP_POLL: Duration = Duration::from_millis(10);

/// A running devnet.
pub struct Devnet {
    pub chain: Arc<DevChain>,
    s3: Option<EmbeddedS3>,
    s3_addr: std::net::SocketAddr,
    s3_root: PathBuf,
    keys: AccessKeys,
    pub host: Option<Host>,
    pub options: DevnetOptions,
    _lockstep: Option<AbortOnDrop>,
    lockstep_held: Arc<AtomicBool>,
    roles: std::collections::HashMap<String, Role>,
    /// The adversaries' hostile S3 fronts, alive as long as the devnet.
    _fronts: Vec<HostileS3>,
}

impl Devnet {
    /// The role a node was started in ([`roster`]).
    pub fn role(&self, name: &str) -> Option<Role> {
        self.roles.get(name).copied()
    }

    /// Whether the lockstep clock has stopped after its windows (never without lockstep).
    pub fn lockstep_held(&self) -> bool {
        self.lockstep_held.load(Ordering::Acquire)
    }

    /// Starts the chain, the S3 server and the miners.
    pub async fn start(options: DevnetOptions) -> Result<Self, DevnetError> {
        let dir = &options.state_dir;
        std::fs::create_dir_all(dir).map_err(setup("creating the state directory"))?;
        let first_block = if options.wall_clock_blocks {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            (now.as_millis() / options.block_time.as_millis().max(1)) as u64
        } else if let Some(head) = options.head_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            head.trim().parse::<u64>().map_err(setup("reading the devnet's chain head"))? + 1
        } else {
            0
        };
        // In lockstep the devnet's driver builds the blocks, else the chain's own clock.
        let block_time = (!options.lockstep).then_some(options.block_time);
        let chain = DevChain::start(DevChainOptions { block_time, first_block });
        chain.create_subnet(options.netuid);

        let s3_root = dir.join("s3");
        std::fs::create_dir_all(&s3_root).map_err(setup("creating the S3 directory"))?;
        let keys = AccessKeys::new("devnet", "devnet-secret-key");
        let s3 = EmbeddedS3::start(&s3_root, keys.clone()).await.map_err(setup("starting the S3 server"))?;
        let s3_addr = s3.addr();
        let opts = TransferOptions {
            request_timeout: Duration::from_secs(5),
            transfer_timeout: options.settings.peer_deadline,
            progress_timeout: options.settings.progress_timeout,
            allow_private_endpoints: options.settings.allow_private_endpoints,
            ..TransferOptions::default()
        };
        let peer_clients = PeerClients::new("us-east-1", opts.clone()).map_err(setup("peer clients"))?;
        let shape = options.hparams.model_shape();
        let layout = ParamLayout::llama(&shape).map_err(setup("model layout"))?;
        let llama = LlamaConfig::from(&shape);
        let optim = OptimSettings::from_hparams(&options.hparams).map_err(setup("optimizer settings"))?;
        let schedule = WindowSchedule::new(options.hparams.window_length).map_err(setup("window schedule"))?;
        let tokenizer = TextTokenizer::load("bytes").map_err(setup("tokenizer"))?;
        let source = Arc::new(SyntheticSource::new(options.seed));
        let common = NodeCommon {
            chain: chain.clone(),
            keys: keys.clone(),
            transfers: opts,
            peer_clients,
            model: ModelParts { layout, llama, optim, tokenizer, source },
            schedule,
        };
        let roles: std::collections::HashMap<String, Role> = roster(&options).into_iter().collect();
        let (mut miners, mut fronts) = (Vec::new(), Vec::new());
        for (name, role) in roster(&options) {
            let (node, front) = start_node(&options, &common, &s3, &name, role).await?;
            miners.push(node);
            fronts.extend(front);
        }
        let lockstep_held = Arc::new(AtomicBool::new(false));
        let lockstep = options.lockstep.then(|| {
            let (windows, held) = (options.lockstep_windows, lockstep_held.clone());
            AbortOnDrop(tokio::spawn(drive_lockstep(
                chain.clone(),
                miners.clone(),
                schedule,
                options.block_time,
                windows,
                held,
            )))
        });
        let host = Host::start(miners).await.map_err(setup("starting the actors"))?;
        Ok(Self {
            chain,
            s3: Some(s3),
            s3_addr,
            s3_root,
            keys,
            host: Some(host),
            options,
            _lockstep: lockstep,
            lockstep_held,
            roles,
            _fronts: fronts,
        })
    }

    pub fn miners(&self) -> &[Arc<MinerContext>] {
        self.host.as_ref().map(Host::miners).unwrap_or_default()
    }

    pub fn s3_root(&self) -> &Path {
        &self.s3_root
    }

    /// Stops the S3 server (connections in flight are cut): an outage.
    pub async fn stop_s3(&mut self) {
        if let Some(s3) = self.s3.take() {
            s3.stop().await;
        }
    }

    /// Starts the S3 server again on the same address with the same data.
    pub async fn restart_s3(&mut self) -> Result<(), DevnetError> {
        if self.s3.is_none() {
            let s3 = EmbeddedS3::start_on(self.s3_addr, &self.s3_root, self.keys.clone())
                .await
                .map_err(setup("restarting the S3 server"))?;
            self.s3 = Some(s3);
        }
        Ok(())
    }

    /// Graceful shutdown of the miners, then the servers.
    pub async fn shutdown(mut self) -> Vec<MinerShutdown> {
        let timeout = self.options.settings.shutdown_timeout;
        let reports = match self.host.take() {
            Some(host) => host.shutdown(timeout).await,
            None => Vec::new(),
        };
        self.stop_s3().await;
        if let Some(file) = &self.options.head_file {
            let head = self.chain.produce_block().number;
            if let Err(e) = tessera_core::fsutil::write_atomic(file, head.to_string().as_bytes()) {
                tracing::warn!(path = %file.display(), error = %e, "could not keep the devnet's chain head");
            }
        }
        reports
    }
}
