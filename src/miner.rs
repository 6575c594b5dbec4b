//! `tessera miner`: start-up checks for each configured miner, then the actor tree until
//! SIGTERM/SIGINT (graceful: checkpoint, uploads finished or abandoned, exit 0) or until
//! every miner has failed (exit non-zero with the reasons).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tessera_actors::context::{MinerParts, ModelSpec, NodeIdentity, NodeRole, RuntimeSettings, Storage, WindowHook};
use tessera_actors::observe;
use tessera_actors::{Host, MinerContext};
use tessera_core::chain::{Chain, CommitmentChange, SubtensorChain, ensure_commitment, find_uid};
use tessera_core::config::{DataConfig, DataSourceSpec, MinerConfig, MinerInstance};
use tessera_core::hparams::Hparams;
use tessera_core::model::ParamLayout;
use tessera_core::storage::{BucketClient, BucketLocation, PeerClients, SliceCache, TransferOptions};
use tessera_core::wallet::{LoadedHotkey, WalletSpec};
use tessera_core::window::WindowSchedule;
use tessera_data::{
    HfRowsConfig, HfRowsSource, HubClient, LocalFilesSource, PageSource, SyntheticSource, TextTokenizer,
};
use tessera_model::LlamaConfig;
use tessera_model::backend::describe_device;
use tessera_model::checkpoint::CheckpointStore;
use tessera_model::train::OptimSettings;
use tessera_wandb::{WandbLogger, WandbSettings};
use tracing::{error, info, warn};

/// Subtensor's block time: window bounds are extrapolated with it between observed blocks.
const SUBTENSOR_BLOCK_TIME: Duration = Duration::from_secs(12);

/// Everything the miners of the process share.
pub struct Shared {
    pub hparams: Hparams,
    pub chain: Arc<SubtensorChain>,
    pub peer_clients: PeerClients,
    pub cache: SliceCache,
}

impl Shared {
    pub async fn new(config: &MinerConfig, hparams: Hparams) -> Result<Self> {
        let chain = Arc::new(SubtensorChain::connect(config.chain_endpoint()).await?);
        let runtime = &config.runtime;
        let opts = TransferOptions {
            transfer_timeout: runtime.peer_deadline,
            progress_timeout: runtime.progress_timeout,
            allow_private_endpoints: runtime.allow_private_endpoints,
            ..TransferOptions::default()
        };
        let peer_clients = PeerClients::new(config.s3.region(), opts)?;
        let cache_dir = runtime.cache_dir.clone();
        let cache = tokio::task::spawn_blocking(move || SliceCache::open(cache_dir)).await??;
        Ok(Self { hparams, chain, peer_clients, cache })
    }
}

/// The training data of the process: the tokenizer the hparams name and the page source.
pub struct DataInputs {
    pub source: Arc<dyn PageSource>,
    pub tokenizer: TextTokenizer,
}

impl DataInputs {
    /// The tokenizer from the local HF cache, else fetched from the Hub into it (once).
    pub async fn load(config: &MinerConfig, hparams: &Hparams) -> Result<Self> {
        let name = &hparams.tokenizer_name;
        let hub = HubClient::from_env();
        let tokenizer = TextTokenizer::load_or_fetch(name, hub.as_ref()).await.with_context(|| {
            format!(
                "loading the tokenizer {name:?} named by the hparams (offline? fetch it once with \
                 `huggingface-cli download {name} tokenizer.json tokenizer_config.json`, or point \
                 tokenizer_name at a tokenizer.json)"
            )
        })?;
        if tokenizer.vocab_size() > hparams.vocab_size {
            bail!(
                "the tokenizer {name:?} has {} tokens but the model's vocabulary (hparams vocab_size) is {}",
                tokenizer.vocab_size(),
                hparams.vocab_size
            );
        }
        Ok(Self { source: page_source(&config.data)?, tokenizer })
    }
}

fn page_source(data: &DataConfig) -> Result<Arc<dyn PageSource>> {
    Ok(match &data.source {
        DataSourceSpec::HuggingFace => {
            let mut hf = HfRowsConfig::default();
            if let Some(dataset) = &data.dataset {
                hf.dataset = dataset.clone();
            }
            Arc::new(HfRowsSource::new(hf)?)
        }
        DataSourceSpec::Synthetic => Arc::new(SyntheticSource::new(data.synthetic_seed)),
        DataSourceSpec::Local(path) => Arc::new(LocalFilesSource::new(path.clone())),
    })
}

/// The miner's hotkey from its wallet: checked first, before anything touches the network.
pub fn load_wallet(instance: &MinerInstance) -> Result<LoadedHotkey> {
    let config = &instance.config;
    let wallet = WalletSpec {
        name: config.wallet.name.to_string(),
        hotkey: config.wallet.hotkey.to_string(),
        path: config.wallet.path.clone(),
    };
    let hotkey = wallet.load_hotkey()?;
    info!(miner = %instance.name, hotkey = %hotkey.hotkey(), wallet = %config.wallet.name, "loaded hotkey");
    Ok(hotkey)
}

/// A miner whose identity checks passed: its hotkey is registered, its bucket reachable
/// and committed, its device usable.
pub struct Prepared {
    instance: MinerInstance,
    hotkey: LoadedHotkey,
    uid: u16,
    own_bucket: BucketClient,
}

/// The start-up checks of one miner, in the seed's order: wallet, registration, own
/// bucket, commitment; then the training device.
pub async fn prepare(instance: &MinerInstance, hotkey: LoadedHotkey, shared: &Shared) -> Result<Prepared> {
    let config = &instance.config;
    let name = &instance.name;

    let chain: &dyn Chain = shared.chain.as_ref();
    let (uid, metagraph) = find_uid(chain, config.netuid, &hotkey.hotkey()).await?;
    let uid = uid.ok_or_else(|| not_registered(config, &hotkey.hotkey().to_string()))?;
    info!(miner = %name, uid, netuid = config.netuid, neurons = metagraph.size(), block = metagraph.block, "hotkey is registered");

    let location = own_bucket(config)?;
    let own_bucket = check_own_bucket(config, &location).await?;
    match ensure_commitment(chain, config.netuid, hotkey.keypair(), &location.to_string()).await? {
        CommitmentChange::Unchanged => info!(miner = %name, bucket = %location, "bucket commitment is current"),
        CommitmentChange::Committed { previous } => info!(
            miner = %name,
            bucket = %location,
            previous = previous.as_deref().unwrap_or("none"),
            "committed the bucket location"
        ),
    }

    let backend = tokio::task::spawn_blocking({
        let device = config.device;
        move || describe_device(&device)
    })
    .await??;
    info!(miner = %name, %backend, "training device");
    Ok(Prepared { instance: instance.clone(), hotkey, uid, own_bucket })
}

/// The miner's runtime context, from its checks and what the process shares.
pub fn build(prepared: Prepared, shared: &Shared, data: &DataInputs, validator: bool) -> Result<Arc<MinerContext>> {
    let Prepared { instance, hotkey, uid, own_bucket } = prepared;
    let config = &instance.config;
    let hp = &shared.hparams;
    let shape = hp.model_shape();
    let checkpoints = config.checkpoint_path.clone().unwrap_or_else(|| instance.state_dir.join("checkpoints"));
    Ok(MinerContext::new(MinerParts {
        id: NodeIdentity {
            name: instance.name.clone(),
            netuid: config.netuid,
            uid,
            hotkey: Arc::new(hotkey),
            role: if validator {
                NodeRole::Validator { state_dir: instance.state_dir.join("validator") }
            } else {
                NodeRole::Miner
            },
        },
        hparams: hp.clone(),
        schedule: WindowSchedule::new(hp.window_length)?,
        model: ModelSpec {
            device: config.device,
            compute: config.compute(),
            llama: LlamaConfig::from(&shape),
            optim: OptimSettings::from_hparams(hp)?,
            layout: ParamLayout::llama(&shape)?,
            checkpoints: CheckpointStore::new(checkpoints),
            source: data.source.clone(),
            tokenizer: data.tokenizer.clone(),
            init_seed: tessera_actors::engine::MODEL_INIT_SEED,
        },
        settings: RuntimeSettings {
            // A validator reads every miner's committed bucket.
            remote: config.remote || validator,
            block_time: SUBTENSOR_BLOCK_TIME,
            ..config.runtime_settings(hp.validator_window_eval_size)
        },
        misbehaviour: None,
        chain: shared.chain.clone(),
        storage: Storage { own_bucket, peer_clients: shared.peer_clients.clone(), cache: shared.cache.clone() },
        hparams_refresh: Some(config.hparams_settings()),
    }))
}

/// Runs the host until a signal (graceful stop, Ok) or until every miner failed (Err),
/// with the metrics endpoint and, with `--use_wandb`, a W&B run per miner.
pub async fn run(miners: Vec<Arc<MinerContext>>, config: &MinerConfig) -> Result<()> {
    let loggers: Vec<WandbLogger> =
        if config.use_wandb { miners.iter().map(|m| attach_wandb(m, config)).collect() } else { Vec::new() };
    let mut host = Host::start(miners.clone()).await.map_err(|e| anyhow!("starting the miners: {e}"))?;
    let _endpoint = match config.metrics.listen {
        Some(listen) => Some(observe::serve(listen, miners, host.status_receiver()).await.with_context(|| {
            format!("serving metrics on {listen}: set metrics.listen (--metrics-listen) to a free port, or \"off\"")
        })?),
        None => None,
    };
    let shutdown_timeout = config.runtime.shutdown_timeout;
    let signal = shutdown_signal();
    let outcome = tokio::select! {
        name = signal => {
            info!(signal = name, timeout_secs = shutdown_timeout.as_secs(), "shutting down: checkpoint, finish uploads, stop");
            let reports = host.shutdown(shutdown_timeout).await;
            for r in reports.iter().filter(|r| r.error.is_some()) {
                warn!(miner = %r.miner, error = r.error.as_deref().unwrap_or(""), "shutdown incomplete");
            }
            Ok(())
        }
        status = host.stopped() => {
            for (miner, reason) in &status.failed {
                error!(miner = %miner, %reason, "miner failed");
            }
            let names: Vec<String> = status.failed.iter().map(|(m, r)| format!("{m} ({r})")).collect();
            Err(anyhow!("every miner of this process stopped after repeated failures: {}", names.join("; ")))
        }
    };
    futures::future::join_all(loggers.into_iter().map(|l| l.finish(Duration::from_secs(3)))).await;
    if outcome.is_ok() {
        info!("stopped");
    }
    outcome
}

/// A W&B run named `M{uid}` in `--project`, fed with the seed's metrics after each
/// window. Logging queues and returns: it never blocks or fails training.
fn attach_wandb(ctx: &Arc<MinerContext>, config: &MinerConfig) -> WandbLogger {
    let run = if ctx.is_validator() { format!("V{}", ctx.id.uid) } else { format!("M{}", ctx.id.uid) };
    let mut settings = WandbSettings::new(config.project.clone(), run);
    settings.config = serde_json::json!({
        "uid": ctx.id.uid,
        "netuid": ctx.id.netuid,
        "hotkey": ctx.own_hotkey().to_string(),
        "device": config.device.to_string(),
        "actual_batch_size": config.actual_batch_size,
        "hparams": ctx.network.hparams,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let logger = WandbLogger::start(settings);
    let feed = logger.clone();
    let hook: WindowHook = Arc::new(move |ctx, w| {
        if ctx.is_validator() {
            // The seed validator's rows: per-UID scores, moving averages and weights.
            if let Some(v) = ctx.validator_stats().and_then(|s| s.last_window()) {
                let mut row = serde_json::Map::new();
                row.insert("window".into(), serde_json::json!(v.window));
                row.insert("miners_scored".into(), serde_json::json!(v.scored));
                row.insert("miners_skipped".into(), serde_json::json!(v.skipped));
                row.insert("eval_seconds_per_miner".into(), serde_json::json!(v.eval_secs_per_miner));
                for u in &v.uids {
                    if let Some(score) = u.score {
                        row.insert(format!("scores/{}", u.uid), serde_json::json!(score));
                    }
                    row.insert(format!("moving_avg_scores/{}", u.uid), serde_json::json!(u.moving));
                    row.insert(format!("weights/{}", u.uid), serde_json::json!(u.weight));
                }
                feed.log(v.window, row);
            }
            ctx.telemetry.stats.telemetry_dropped.store(feed.dropped(), std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let mut row = serde_json::json!({
            "window": w.window,
            "loss": w.loss,
            "tokens_per_step": w.tokens,
            "tokens_per_second": w.tokens_per_sec,
            "sample_rate": w.sample_rate,
            "utilization": w.utilization,
            "learning_rate": w.lr,
            "state_slices": w.state_slices,
            "delta_slices": w.delta_slices,
        });
        if let (Some(eval), serde_json::Value::Object(map)) = (w.eval_loss, &mut row) {
            map.insert("eval_loss".into(), serde_json::json!(eval));
        }
        if let serde_json::Value::Object(row) = row {
            feed.log(w.step, row);
        }
        ctx.telemetry.stats.telemetry_dropped.store(feed.dropped(), std::sync::atomic::Ordering::Relaxed);
    });
    *ctx.telemetry.window_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    logger
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// The seed's advice when the hotkey is not registered, with today's btcli spelling.
fn not_registered(config: &MinerConfig, hotkey: &str) -> anyhow::Error {
    anyhow!(
        "hotkey {hotkey} of wallet {name}/{hk} is not registered on subnet {netuid} at {endpoint}. \
         You need to register first with:\n    btcli subnet register --netuid {netuid} --wallet.name {name} \
         --wallet.hotkey {hk} --subtensor.network {network}",
        name = config.wallet.name,
        hk = config.wallet.hotkey,
        netuid = config.netuid,
        endpoint = config.chain_endpoint(),
        network = config.subtensor.network,
    )
}

/// Fails early, with the bucket named, when the own bucket cannot be listed with the
/// configured credentials — rather than at the first upload, a window later.
async fn check_own_bucket(config: &MinerConfig, location: &BucketLocation) -> Result<BucketClient> {
    let credentials = config.s3.credentials().resolve()?;
    let opts = TransferOptions {
        transfer_timeout: config.runtime.peer_deadline.max(Duration::from_secs(120)),
        ..TransferOptions::default()
    };
    let client = BucketClient::new(location, config.s3.region(), credentials, opts)?;
    let existing =
        client.list("state-").await.with_context(|| format!("checking access to the own bucket {location}"))?;
    info!(bucket = %location, state_slices = existing.len(), "own bucket is reachable");
    Ok(client)
}

/// Where peers find this miner's slices: `s3://bucket` on AWS, or the configured
/// S3-compatible endpoint with the bucket as its path.
fn own_bucket(config: &MinerConfig) -> Result<BucketLocation> {
    Ok(match &config.s3.endpoint {
        None => BucketLocation::aws(config.bucket.clone()),
        Some(endpoint) => BucketLocation::endpoint(&endpoint.0, config.bucket.clone())
            .with_context(|| format!("s3.endpoint {} with bucket {}", endpoint.as_str(), config.bucket))?,
    })
}
