//! The command line. `tessera miner` takes every flag of the seed's `neurons/miner.py`
//! with the seed's spelling, so an operator's command line carries over unchanged.
//!
//! Value flags are taken as text and checked by the configuration loader, like values
//! from files and the environment, so every layer reports bad values the same way.
//! Only flags actually given become overrides: switches can turn a setting on, and a
//! setting left off the command line keeps the value of the lower layers.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Id, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Collaborative LLM-training miner for a Bittensor subnet (slice protocol)",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a miner; takes the seed miner's flags (`python3 neurons/miner.py …`).
    Miner(Box<MinerArgs>),
    /// Run a validator; takes the seed validator's flags (`python3 neurons/validator.py …`,
    /// the miner's set): scores every miner's delta each window and sets weights on chain.
    /// One hotkey per process; --random and --baseline do not apply and are refused.
    Validator(Box<MinerArgs>),
    /// One screen for a running miner or validator process: each node's UID, hotkey,
    /// bucket, window, loss, tokens/s, peers, slices averaged, rejections, restarts and
    /// health, read from its /metrics and /healthz.
    Status(StatusArgs),
    /// Mean loss and perplexity of a checkpoint (or an HF directory) on held-out pages:
    /// pages no miner is assigned, the held-out set the devnet and miners evaluate on.
    Eval(EvalArgs),
    /// Inspect a training checkpoint: what it is of, and whether every byte is intact.
    Checkpoint(CheckpointArgs),
    /// Write a checkpoint's model as a Hugging Face directory (config.json,
    /// model.safetensors, the tokenizer files when given) that transformers loads as
    /// LlamaForCausalLM.
    Export(ExportArgs),
    /// Print the validated network hyperparameters and the model they define (JSON).
    Hparams(HparamsArgs),
    /// Run a whole network on this machine: a dev chain, an S3 server and N miners
    /// training a tiny Llama on CPU, every real code path; prints each window and a summary.
    Devnet(DevnetArgs),
}

/// The flags of `tessera eval`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["checkpoint", "hf"])))]
pub struct EvalArgs {
    /// A tessera checkpoint file.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,

    /// A Hugging Face model directory (config.json + model.safetensors), e.g. an export.
    #[arg(long, value_name = "DIR")]
    pub hf: Option<PathBuf>,

    /// The data the held-out pages come from: huggingface (the seed's dataset), synthetic
    /// (the devnet's generated text), or a local file or directory of jsonl/txt/parquet.
    #[arg(long, value_name = "SOURCE", default_value = "synthetic")]
    pub data: String,

    /// Seed of the synthetic source (the devnet's --seed).
    #[arg(long = "data-seed", value_name = "SEED", default_value_t = 0)]
    pub data_seed: u64,

    /// Held-out pages to evaluate on.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub pages: usize,

    /// Sequences per micro-batch.
    #[arg(long = "batch-size", value_name = "N", default_value_t = 4)]
    pub batch_size: usize,

    /// Tokens per sequence [default: the hparams' sequence_length, at most the model's
    /// max_position_embeddings].
    #[arg(long = "seq-len", value_name = "N")]
    pub seq_len: Option<usize>,

    /// At most this many micro-batches of the pages (0: all).
    #[arg(long = "max-batches", value_name = "N", default_value_t = 0)]
    pub max_batches: usize,

    /// The tokenizer: bytes, a tokenizer.json, a directory, or a Hub name in the HF cache
    /// [default: bytes for a byte-vocabulary model, else the hparams' tokenizer_name].
    #[arg(long, value_name = "SPEC")]
    pub tokenizer: Option<String>,

    /// Device: cpu, cuda or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `tessera status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Where the process serves its metrics (its metrics.listen).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9464")]
    pub metrics: String,
}

/// The flags of `tessera export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint file (e.g. <state_dir>/checkpoints/latest.ckpt); every section is
    /// verified before anything is written.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,

    /// The directory to write; it appears whole or not at all (written beside, renamed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The weights' dtype: f32 (exact), bf16 or f16 (rounded to nearest).
    #[arg(long, value_name = "f32|bf16|f16", default_value = "f32")]
    pub dtype: String,

    /// Replace DIR when it exists and is not empty.
    #[arg(long)]
    pub force: bool,

    /// The tokenizer to ship with the model: a tokenizer.json, a directory holding one, or
    /// a Hub name in the local HF cache; its tokenizer.json and tokenizer_config.json (and
    /// special_tokens_map.json) are copied.
    #[arg(long, value_name = "PATH|NAME")]
    pub tokenizer: Option<String>,
}

/// `tessera checkpoint …`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub command: CheckpointCommand,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// The window, step, model (fingerprint, shape, parameters) and sizes of a checkpoint
    /// file, after checking the header, the manifest and the BLAKE3 of every section; exits
    /// non-zero naming the file and what is wrong when it is missing, truncated, damaged or
    /// not a tessera checkpoint.
    Show {
        /// The checkpoint file (e.g. <state_dir>/checkpoints/latest.ckpt).
        path: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The flags of `tessera devnet`.
#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Miners exchanging slices.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub miners: u16,

    /// Stop after every miner has trained this many windows (0: run until Ctrl-C).
    #[arg(long, default_value_t = 40)]
    pub windows: u64,

    /// Time between blocks, e.g. 500ms or 1s (windows are 2 blocks).
    #[arg(long = "block-time", default_value = "500ms", value_parser = parse_duration)]
    pub block_time: std::time::Duration,

    /// Add one miner that trains alone (--baseline), for comparison.
    #[arg(long = "baseline-miner")]
    pub baseline_miner: bool,

    /// Add one miner that trains alone on all the exchanging miners' data: each step on
    /// N× the micro-batch (N = --miners), as many steps per window. The data-parallel
    /// ideal the exchange is measured against.
    #[arg(long = "ideal-miner")]
    pub ideal_miner: bool,

    /// Keep the state (checkpoints, buckets, cache) here and reuse it on the next run
    /// [default: a temporary directory, removed at exit].
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Exit non-zero unless the held-out loss fell on every exchanging miner (or, resumed
    /// from --state-dir, did not rise), slices flowed between them, and with a baseline the
    /// exchanging miners end below it (judged on a fresh run only) (for CI).
    #[arg(long)]
    pub check: bool,

    /// How the exchanging miners combine their training (the devnet network's `exchange`
    /// hparam).
    #[arg(long, value_enum, default_value_t)]
    pub exchange: crate::devnet::ExchangeFlag,

    /// Add this many miners that follow the seed's exchange beside the others, so the two
    /// exchanges are compared in one run.
    #[arg(long = "seed-exchange-miners", value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=32))]
    pub seed_exchange_miners: u16,

    /// Fixed compute: every miner trains exactly N micro-batches per window and the block
    /// clock waits for all of them, so a difference is the protocol's, not the CPU's
    /// (0: train until the window ends, as a real network does).
    #[arg(long = "fixed-compute", value_name = "MICRO_BATCHES", default_value_t = 0)]
    pub fixed_compute: u32,

    /// The devnet network's `compression` hparam: a slice holds 1/N of each parameter.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub compression: u32,

    /// The devnet network's `exchange_outer_lr` hparam (update exchange): the mean update
    /// is applied scaled by this factor.
    #[arg(long = "outer-lr", value_name = "LR")]
    pub outer_lr: Option<f64>,

    /// The devnet network's `exchange_outer_momentum` hparam (SparseLoCo): Nesterov
    /// momentum of the outer step [default: none].
    #[arg(long = "outer-momentum", value_name = "MU")]
    pub outer_momentum: Option<f64>,

    /// The devnet network's `exchange_top_k` hparam (SparseLoCo): entries kept per chunk
    /// of 4096 [default: 64].
    #[arg(long = "top-k", value_name = "K")]
    pub top_k: Option<u32>,

    /// The devnet network's `micro_batches_per_step` hparam: an optimizer step every M
    /// micro-batches of a window [default: one step per window].
    #[arg(long = "micro-batches-per-step", value_name = "M")]
    pub micro_batches_per_step: Option<u32>,

    /// The devnet network's `exchange_max_peers` hparam (update exchange): read the own
    /// slice and at most K − 1 peers' per window and kind.
    #[arg(long = "max-peers", value_name = "K")]
    pub max_peers: Option<u32>,

    /// The devnet network's `learning_rate` hparam [default: the devnet's 0.003].
    #[arg(long = "learning-rate", value_name = "LR")]
    pub learning_rate: Option<f64>,

    /// Seed of the model's initialisation and of the synthetic data (printed at start).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Evaluate every miner's held-out loss every N windows (0: never).
    #[arg(long = "eval-every", value_name = "N", default_value_t = 1)]
    pub eval_every: u64,

    /// Write per-window figures (windows.csv), a summary (summary.json) and a plot of the
    /// held-out loss per miner (heldout.svg) into DIR.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,

    /// Serve /metrics, /healthz and /readyz on this host:port.
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Leave out the validator (by default one scores the miners every window and sets
    /// their weights on the dev chain).
    #[arg(long = "no-validator")]
    pub no_validator: bool,

    /// Add misbehaving miners: `all`, `classic` (copier, lazy, noise, randompages; the
    /// default of a bare --adversaries) or a comma list of copier, lazy, noise,
    /// randompages, poisoner, scaledcopy, noisycopy, meanecho, overfitter, slowbucket,
    /// timeliar, sybil (a sybil brings its twin, a second hotkey publishing its update).
    /// With --check, every honest miner must end with more weight than every adversary
    /// (a sybil's twin included; the sybil itself trains honestly), and the adversaries with less
    /// than 10% in all.
    #[arg(long, value_name = "LIST", num_args = 0..=1, default_missing_value = "classic",
          value_parser = parse_adversaries)]
    pub adversaries: Option<AdversaryList>,

    #[command(flatten)]
    pub logs: LogArgs,
}

/// Log flags shared by the long-running commands.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[arg(long = "log-format", value_name = "text|json", help = with_default("Log lines as text or json (one object per line, for log collectors).", "log_format"))]
    pub log_format: Option<String>,

    /// Enable debug logging (RUST_LOG overrides).
    #[arg(long)]
    pub debug: bool,

    /// Enable trace logging, very verbose (RUST_LOG overrides).
    #[arg(long)]
    pub trace: bool,
}

/// `500ms`, `2s`, `1.5s` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a duration like 500ms or 1s"))?;
    let secs = value * scale;
    if !(0.05..=600.0).contains(&secs) {
        return Err(format!("{text:?}: the block time must be between 50ms and 600s"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The flags of `tessera miner`. Defaults are those of the configuration (see
/// `config/default.toml`); a flag overrides files and environment variables.
#[derive(Debug, Args)]
#[group(skip)]
pub struct MinerArgs {
    #[arg(help = with_default("Training batch size per accumulation step, in sequences.", "actual_batch_size"), long = "actual_batch_size", visible_alias = "actual-batch-size", value_name = "N")]
    pub actual_batch_size: Option<String>,

    #[arg(id = "wallet.name", help = with_default("Wallet (coldkey) name.", "wallet.name"), long = "wallet.name", visible_alias = "wallet-name", value_name = "NAME")]
    pub wallet_name: Option<String>,

    #[arg(id = "wallet.hotkey", help = with_default("Hotkey name within the wallet.", "wallet.hotkey"), long = "wallet.hotkey", visible_alias = "wallet-hotkey", value_name = "NAME")]
    pub wallet_hotkey: Option<String>,

    #[arg(id = "wallet.path", help = with_default("Directory holding the wallets.", "wallet.path"), long = "wallet.path", visible_alias = "wallet-path", value_name = "DIR")]
    pub wallet_path: Option<String>,

    /// S3 bucket name this miner writes its slices to and commits on chain (required).
    #[arg(long, value_name = "NAME")]
    pub bucket: Option<String>,

    #[arg(help = with_default("Device to use for training: cpu, cuda or cuda:N.", "device"), long, value_name = "DEVICE")]
    pub device: Option<String>,

    /// Use Weights and Biases for logging.
    #[arg(long = "use_wandb", visible_alias = "use-wandb")]
    pub use_wandb: bool,

    #[arg(help = with_default("Weights and Biases project name.", "project"), long, value_name = "NAME")]
    pub project: Option<String>,

    #[arg(help = with_default("Bittensor subnet UID.", "netuid"), long, value_name = "UID")]
    pub netuid: Option<String>,

    /// Connect to other miners' buckets: read slices from every UID's committed bucket,
    /// not only from --bucket.
    #[arg(long)]
    pub remote: bool,

    /// Sync the model state at start by pulling the history of uploaded states.
    #[arg(long = "sync_state", visible_alias = "sync-state")]
    pub sync_state: bool,

    /// Enable debug logging (RUST_LOG overrides).
    #[arg(long)]
    pub debug: bool,

    /// Enable trace logging, very verbose (RUST_LOG overrides).
    #[arg(long)]
    pub trace: bool,

    #[arg(long = "log-format", value_name = "text|json", help = with_default("Log lines as text or json (one object per line, for log collectors).", "log_format"))]
    pub log_format: Option<String>,

    #[arg(id = "metrics.listen", long = "metrics-listen", value_name = "ADDR", help = with_default("Serve /metrics, /healthz and /readyz on this host:port, or \"off\".", "metrics.listen"))]
    pub metrics_listen: Option<String>,

    /// Train on random data pages instead of this UID's deterministic ones.
    #[arg(long)]
    pub random: bool,

    /// Don't perform syncing with other peers, just train.
    #[arg(long)]
    pub baseline: bool,

    /// Run on the test network (subtensor.network test and its endpoint).
    #[arg(long)]
    pub test: bool,

    /// Run on a local network (subtensor.network local, ws://127.0.0.1:9944).
    #[arg(long)]
    pub local: bool,

    /// Enable automatic updates. Accepted for compatibility and ignored: tessera is
    /// updated by image or binary version.
    #[arg(long)]
    pub autoupdate: bool,

    #[arg(id = "subtensor.network", long = "subtensor.network", visible_alias = "subtensor-network", value_name = "NETWORK", help = with_default("Subtensor network: finney, test, local, or a ws:// / wss:// URL.", "subtensor.network"))]
    pub subtensor_network: Option<String>,

    /// Subtensor node endpoint, a ws:// / wss:// URL [default: the network's endpoint].
    #[arg(
        id = "subtensor.chain_endpoint",
        long = "subtensor.chain_endpoint",
        visible_alias = "subtensor-chain-endpoint",
        value_name = "URL"
    )]
    pub subtensor_chain_endpoint: Option<String>,

    /// Path to save/load the checkpoint.
    #[arg(long = "checkpoint_path", visible_alias = "checkpoint-path", value_name = "PATH")]
    pub checkpoint_path: Option<String>,

    /// The name of the PM2 process (accepted for compatibility, unused).
    #[arg(long = "process_name", visible_alias = "process-name", value_name = "NAME")]
    pub process_name: Option<String>,

    #[arg(long, help = with_default("Precision of the model's products: auto, bf16-mixed or fp32.", "precision"), value_name = "PRECISION")]
    pub precision: Option<String>,

    #[arg(long, help = with_default("Attention kernel: auto, naive or fused.", "attention"), value_name = "KERNEL")]
    pub attention: Option<String>,

    /// Recompute decoder blocks in the backward pass: less activation memory, more compute.
    #[arg(long = "recompute_activations", visible_alias = "recompute-activations")]
    pub recompute_activations: bool,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Print the effective configuration (secrets redacted) as TOML and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,
}

/// Flags shared by the subcommands that read the configuration.
#[derive(Debug, Args)]
#[group(skip)]
pub struct CommonArgs {
    /// TOML configuration file, layered over config/default.toml and under environment
    /// variables (TESSERA__KEY) and flags. Keys are the flag names.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(long, value_name = "PATH|URL", help = with_default("Network hyperparameters: builtin, a path to an hparams.json, or an http(s):// URL (falls back to the last cached copy).", "hparams"))]
    pub hparams: Option<String>,

    #[arg(long = "state_dir", visible_alias = "state-dir", value_name = "DIR", help = with_default("Directory for local state, such as the hparams cache.", "state_dir"))]
    pub state_dir: Option<String>,
}

#[derive(Debug, Args)]
#[group(skip)]
pub struct HparamsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `text` with the setting's built-in default, stated once in the configuration.
fn with_default(text: &str, key: &str) -> String {
    match tessera_core::config::default_of(key) {
        Some(default) => format!("{text} [default: {default}]"),
        None => text.to_owned(),
    }
}

/// Flags of the node subcommands that are not configuration keys.
const NOT_SETTINGS: &[&str] = &["config", "print_config"];

/// The configuration overrides of the flags given on the command line: each flag of the
/// subcommand is the setting its id names (`wallet.name`), with its value (`true` for a
/// switch); flags not given leave the lower layers alone.
pub fn overrides(matches: &ArgMatches) -> Vec<(String, String)> {
    let Some((_, sub)) = matches.subcommand() else { return Vec::new() };
    let given = |id: &&Id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine);
    let settings = sub.ids().filter(given).filter(|id| !NOT_SETTINGS.contains(&id.as_str()));
    settings
        .filter_map(|id| {
            let value = sub.try_get_raw(id.as_str()).ok()??.next_back()?;
            Some((id.to_string(), value.to_string_lossy().into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use tessera_core::config::{LogFormat, MinerConfig};

    use super::*;

    #[test]
    fn block_times_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(std::time::Duration::from_secs(2)));
        assert_eq!(parse_duration("0.25"), Ok(std::time::Duration::from_millis(250)));
        assert!(parse_duration("fast").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1ms").unwrap_err().contains("between"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seed_command_line_parses_into_overrides() {
        let matches = Cli::command()
            .try_get_matches_from([
                "tessera",
                "miner",
                "--actual_batch_size",
                "1",
                "--wallet.name",
                "w",
                "--wallet.hotkey=h",
                "--bucket",
                "b-1",
                "--device",
                "cuda:0",
                "--use_wandb",
                "--netuid",
                "223",
                "--remote",
                "--sync_state",
            ])
            .unwrap();
        let o = overrides(&matches);
        for pair in [
            ("actual_batch_size", "1"),
            ("wallet.name", "w"),
            ("wallet.hotkey", "h"),
            ("bucket", "b-1"),
            ("device", "cuda:0"),
            ("use_wandb", "true"),
            ("netuid", "223"),
            ("remote", "true"),
            ("sync_state", "true"),
        ] {
            assert!(o.contains(&(pair.0.to_owned(), pair.1.to_owned())), "{pair:?} in {o:?}");
        }
        assert!(!o.iter().any(|(k, _)| k == "debug" || k == "project"), "flags not given are not overrides: {o:?}");
    }

    #[test]
    fn kebab_aliases_map_to_the_same_keys() {
        let args = ["tessera", "miner", "--actual-batch-size", "2", "--wallet-name", "w", "--sync-state"];
        let o = overrides(&Cli::command().try_get_matches_from(args).unwrap());
        assert!(o.contains(&("actual_batch_size".into(), "2".into())));
        assert!(o.contains(&("wallet.name".into(), "w".into())));
        assert!(o.contains(&("sync_state".into(), "true".into())));
    }

    #[test]
    fn every_setting_flag_is_the_configuration_key_its_id_names() {
        let args = [
            "tessera",
            "miner",
            "--actual_batch_size",
            "2",
            "--wallet.name",
            "w",
            "--wallet.hotkey",
            "h",
            "--wallet.path",
            "/w",
            "--bucket",
            "b-1",
            "--device",
            "cpu",
            "--use_wandb",
            "--project",
            "p",
            "--netuid",
            "2",
            "--remote",
            "--sync_state",
            "--debug",
            "--trace",
            "--log-format",
            "json",
            "--metrics-listen",
            "off",
            "--random",
            "--baseline",
            "--test",
            "--autoupdate",
            "--subtensor.network",
            "test",
            "--subtensor.chain_endpoint",
            "ws://node:9944",
            "--checkpoint_path",
            "/c",
            "--process_name",
            "M",
            "--precision",
            "fp32",
            "--attention",
            "naive",
            "--recompute_activations",
            "--hparams",
            "builtin",
            "--state_dir",
            "/s",
            "--print-config",
        ];
        let o = overrides(&Cli::command().try_get_matches_from(args).unwrap());
        let miner = Cli::command().find_subcommand("miner").cloned().unwrap();
        let settings = miner.get_arguments().filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()));
        // Every setting flag but --local, which contradicts --test.
        let local = overrides(&Cli::command().try_get_matches_from(["tessera", "miner", "--local"]).unwrap());
        assert_eq!(local, [("local".to_owned(), "true".to_owned())]);
        assert_eq!(o.len() + 1, settings.filter(|a| a.get_id() != "help").count(), "{o:?}");
        let sources = tessera_core::config::ConfigSources {
            cli_overrides: o,
            env: Some(Default::default()),
            ..Default::default()
        };
        let c = MinerConfig::load(&sources).unwrap();
        assert_eq!((c.wallet.name.as_str(), c.metrics.listen, c.log_format), ("w", None, LogFormat::Json));
    }
}

/// The adversaries `--adversaries` selects (one value for clap, not many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdversaryList(pub Vec<tessera_actors::devnet::Adversary>);

fn parse_adversaries(list: &str) -> Result<AdversaryList, String> {
    tessera_actors::devnet::Adversary::parse_list(list).map(AdversaryList)
}
