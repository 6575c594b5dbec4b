//! The miner's layered configuration.
//!
//! Keys match the seed miner's command-line flags one to one (`--wallet.name` is the key
//! `wallet.name`), so an operator's `python3 neurons/miner.py …` line carries over
//! unchanged. Layers, lowest to highest:
//!
//! 1. built-in defaults (the seed's defaults),
//! 2. `default.toml` in the configuration directory (`$TESSERA_CONFIG_DIR`, else
//!    `./config`), when it exists,
//! 3. `--config FILE` (must exist),
//! 4. environment variables `TESSERA__KEY`, `TESSERA__WALLET__NAME` (prefix `TESSERA`,
//!    separator `__`, any case; empty values count as unset),
//! 5. command-line flags actually given.
//!
//! The `config` crate merges the layers; every merged value is then checked here, key by
//! key, so an error names the key, the value, what is expected and which layer set it
//! (`invalid value "abc" for netuid (command-line flag --netuid): expected an integer
//! 0..=65535`). A key this build does not know is an error, never silently ignored.
//!
//! The `[s3]` section (how to reach and sign for the own bucket) has no flags, as in the
//! seed: operators set it in a file or, for the keys, in the environment
//! (`TESSERA__S3__SECRET_ACCESS_KEY`). Without keys the usual AWS places are used.
//!
//! `[runtime]` holds tunables of the miner runtime (checkpoint cadence, download limits,
//! restart policy, the shared slice cache) and `[data]` where training text comes from;
//! both have no flags. Several miners can run in one process: each `[[miners]]` table (in a
//! file only) names one, overriding a few top-level keys (wallet, bucket, device, …) for it;
//! see [`MinerConfig::instances`]. A layer that sets `[[miners]]` replaces the entries of
//! lower layers as a whole.
//!
//! There are no per-network files: the seed has no such notion, `--test`/`--local` and
//! `subtensor.network` already pick the well-known endpoints, and a file that changed
//! settings only when some other layer named a network would surprise. Per-network
//! settings go in a `--config` file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Source, ValueKind};
use serde::{Serialize, Serializer};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::hparams::HparamsSource;
use crate::storage::{AccessKeys, CredentialSource, DEFAULT_REGION};

/// Prefix of the configuration environment variables (`TESSERA__…`).
pub const ENV_PREFIX: &str = "TESSERA";
/// Separates the prefix and nested keys in variable names (`TESSERA__WALLET__NAME`).
/// Double, because keys themselves contain single underscores.
pub const ENV_SEPARATOR: &str = "__";
/// Environment variable naming the directory that holds `default.toml`.
pub const CONFIG_DIR_ENV: &str = "TESSERA_CONFIG_DIR";
/// The configuration directory when [`CONFIG_DIR_ENV`] is unset (relative to the cwd).
pub const DEFAULT_CONFIG_DIR: &str = "config";
/// The file read from the configuration directory.
pub const DEFAULT_CONFIG_FILE: &str = "default.toml";
/// The hparams cache, in the state directory.
pub const HPARAMS_CACHE_FILE: &str = "hparams-cache.json";

pub const FINNEY_ENDPOINT: &str = "wss://entrypoint-finney.opentensor.ai:443";
pub const TEST_ENDPOINT: &str = "wss://test.finney.opentensor.ai:443/";
pub const LOCAL_ENDPOINT: &str = "ws://127.0.0.1:9944";

/// What a secret's value is replaced with in printed configuration.
pub const REDACTED: &str = "<redacted>";
/// A key whose name contains one of these is a secret.
const SECRET_MARKERS: &[&str] = &["secret", "password", "token", "api_key", "access_key"];

/// Every configuration key, dotted.
pub const KEYS: &[&str] = &[
    "actual_batch_size",
    "autoupdate",
    "baseline",
    "bucket",
    "checkpoint_path",
    "data.dataset",
    "data.pages_per_window",
    "data.source",
    "data.synthetic_seed",
    "debug",
    "device",
    "hparams",
    "local",
    "log_format",
    "metrics.listen",
    "miners",
    "netuid",
    "process_name",
    "project",
    "random",
    "remote",
    "runtime.cache_dir",
    "runtime.checkpoint_every",
    "runtime.clock_skew_secs",
    "runtime.download_concurrency",
    "runtime.eval_every",
    "runtime.max_restarts",
    "runtime.peer_deadline_secs",
    "runtime.peer_failures_before_skip",
    "runtime.peer_skip_secs",
    "runtime.progress_timeout_secs",
    "runtime.refresh_secs",
    "runtime.restart_backoff_max_ms",
    "runtime.restart_backoff_ms",
    "runtime.restart_period_secs",
    "runtime.shutdown_timeout_secs",
    "s3.access_key_id",
    "s3.endpoint",
    "s3.profile",
    "s3.region",
    "s3.secret_access_key",
    "s3.session_token",
    "state_dir",
    "subtensor.chain_endpoint",
    "subtensor.network",
    "sync_state",
    "test",
    "trace",
    "use_wandb",
    "wallet.hotkey",
    "wallet.name",
    "wallet.path",
];

/// Keys that hold tables.
const SECTIONS: &[&str] = &["wallet", "subtensor", "s3", "runtime", "data", "metrics"];

/// Every key of one `[[miners]]` entry, dotted, relative to the entry (`miners[0].wallet.name`
/// is `wallet.name`).
pub const MINER_KEYS: &[&str] = &[
    "actual_batch_size",
    "baseline",
    "bucket",
    "checkpoint_path",
    "device",
    "name",
    "random",
    "s3.access_key_id",
    "s3.endpoint",
    "s3.profile",
    "s3.region",
    "s3.secret_access_key",
    "s3.session_token",
    "wallet.hotkey",
    "wallet.name",
    "wallet.path",
];

/// Keys of a `[[miners]]` entry that hold tables.
const MINER_SECTIONS: &[&str] = &["wallet", "s3"];

/// The shared slice cache, in the state directory, when `runtime.cache_dir` is unset.
pub const SLICE_CACHE_DIR: &str = "slice-cache";
/// Holds the state directories of the `[[miners]]` of a process (`<state_dir>/miners/<name>`).
pub const MINERS_DIR: &str = "miners";

/// The largest integer value of a key: TOML integers are signed 64-bit, and the printed
/// configuration must read back.
const MAX_INTEGER: u64 = i64::MAX as u64;

/// What a `[[miners]]` name must be.
const MINER_NAME_EXPECTED: &str = "a miner name: 1-32 letters, digits, '_' or '-'";
/// What `miners` must be.
const MINERS_EXPECTED: &str = "an array of tables: one [[miners]] table per miner";
/// What `data.source` must be.
const DATA_SOURCE_EXPECTED: &str =
    "\"huggingface\", \"synthetic\" or the path of a local file or directory of jsonl/txt/parquet shards";
/// A wallet or hotkey name.
const NAME_EXPECTED: &str = "a non-empty name without '/'";
/// A path key.
const PATH_EXPECTED: &str = "a non-empty path";

/// Origin tag of command-line values (a NUL cannot appear in a file path).
const CLI_ORIGIN: &str = "\0command line";
/// Origin tag the `config` crate gives environment values.
const ENV_ORIGIN: &str = "the environment";

/// The miner's effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinerConfig {
    /// Sequences per micro-batch (gradient accumulation step).
    pub actual_batch_size: u32,
    pub wallet: WalletConfig,
    /// This miner's S3 bucket (committed on chain). With `[[miners]]` entries that all set
    /// their own bucket and no top-level one, this is the first entry's (each instance uses
    /// its own).
    pub bucket: BucketName,
    /// Where `bucket` is served and how requests to it are signed.
    pub s3: S3Config,
    pub device: Device,
    pub use_wandb: bool,
    /// Weights & Biases project.
    pub project: String,
    pub netuid: u16,
    /// Read every UID's committed bucket, not only the own one.
    pub remote: bool,
    /// Replay the last `max_history` windows of state slices at start.
    pub sync_state: bool,
    pub debug: bool,
    pub trace: bool,
    /// Log lines as text for people (default) or JSON for log collectors.
    pub log_format: LogFormat,
    /// The `/metrics`, `/healthz` and `/readyz` endpoint.
    pub metrics: MetricsConfig,
    /// Train on random pages instead of the UID's deterministic ones.
    pub random: bool,
    /// Train alone: no slices downloaded or applied.
    pub baseline: bool,
    pub test: bool,
    pub local: bool,
    /// Accepted for compatibility; tessera updates by image or binary version.
    pub autoupdate: bool,
    pub subtensor: SubtensorConfig,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_path")]
    pub checkpoint_path: Option<PathBuf>,
    /// The seed's pm2 process name; accepted, unused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    pub hparams: HparamsSource,
    /// Local state: the hparams cache, later checkpoints and slice caches.
    #[serde(serialize_with = "ser_path")]
    pub state_dir: PathBuf,
    /// Tunables of the miner runtime (`[runtime]`).
    pub runtime: RuntimeConfig,
    /// Where training text comes from (`[data]`).
    pub data: DataConfig,
    /// The `[[miners]]` entries as configured, unresolved; [`MinerConfig::instances`]
    /// resolves them. Empty: this process runs one miner, this configuration.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub miners: Vec<MinerEntry>,
}

/// Tunables of the miner runtime (`[runtime]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeConfig {
    /// Write a checkpoint every this many windows (and always at shutdown).
    pub checkpoint_every: u64,
    /// Peer slice downloads in flight.
    pub download_concurrency: u32,
    /// Deadline of one whole peer download, in seconds.
    pub peer_deadline_secs: u64,
    /// A download that makes no progress for this many seconds is abandoned.
    pub progress_timeout_secs: u64,
    /// A peer whose downloads fail this many times in a row is skipped for `peer_skip_secs`.
    pub peer_failures_before_skip: u32,
    pub peer_skip_secs: u64,
    /// Period of the metagraph, peer bucket and hparams refresh, in seconds.
    pub refresh_secs: u64,
    /// More than this many restarts of one miner's actors within `restart_period_secs`
    /// escalate: the miner stops.
    pub max_restarts: u32,
    pub restart_period_secs: u64,
    /// First restart delay in milliseconds, doubling per restart up to `restart_backoff_max_ms`
    /// (which is at least this).
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// After SIGTERM/SIGINT the process exits within this many seconds.
    pub shutdown_timeout_secs: u64,
    /// Tolerance, in seconds, when a slice object's bucket `LastModified` is checked against
    /// its window's time bounds.
    pub clock_skew_secs: u64,
    /// Evaluate the model's loss on the held-out pages every this many windows (0: never;
    /// it costs compute on the critical GPU).
    pub eval_every: u64,
    /// The slice cache shared by all miners of the host: the configured directory, else
    /// `<state_dir>/slice-cache` (always set after loading).
    #[serde(serialize_with = "ser_path")]
    pub cache_dir: PathBuf,
}

impl RuntimeConfig {
    /// The built-in defaults, with the slice cache in `cache_dir`.
    pub fn defaults(cache_dir: PathBuf) -> Self {
        Self {
            checkpoint_every: 10,
            download_concurrency: 16,
            peer_deadline_secs: 30,
            progress_timeout_secs: 10,
            peer_failures_before_skip: 3,
            peer_skip_secs: 300,
            refresh_secs: 60,
            max_restarts: 5,
            restart_period_secs: 300,
            restart_backoff_ms: 500,
            restart_backoff_max_ms: 30_000,
            shutdown_timeout_secs: 30,
            clock_skew_secs: 30,
            eval_every: 0,
            cache_dir,
        }
    }

    /// Deadline of one whole peer download.
    pub fn peer_deadline(&self) -> Duration {
        Duration::from_secs(self.peer_deadline_secs)
    }

    /// How long a download may make no progress before it is abandoned.
    pub fn progress_timeout(&self) -> Duration {
        Duration::from_secs(self.progress_timeout_secs)
    }

    /// How long a peer that failed `peer_failures_before_skip` times in a row is skipped.
    pub fn peer_skip(&self) -> Duration {
        Duration::from_secs(self.peer_skip_secs)
    }

    /// Period of the metagraph, peer bucket and hparams refresh.
    pub fn refresh_period(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }

    /// The period in which more than `max_restarts` restarts escalate.
    pub fn restart_period(&self) -> Duration {
        Duration::from_secs(self.restart_period_secs)
    }

    /// The first restart delay.
    pub fn restart_backoff(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_ms)
    }

    /// The longest restart delay.
    pub fn restart_backoff_max(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_max_ms)
    }

    /// The delay before restart number `attempt` (0 for the first): `restart_backoff`
    /// doubled per earlier restart, at most `restart_backoff_max`.
    pub fn restart_delay(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
        Duration::from_millis(self.restart_backoff_ms.saturating_mul(factor).min(self.restart_backoff_max_ms))
    }

    /// How long shutdown may take before the process exits anyway.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Tolerance of the `LastModified` check of slice objects.
    pub fn clock_skew(&self) -> Duration {
        Duration::from_secs(self.clock_skew_secs)
    }
}

/// Where training text comes from (`[data]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataConfig {
    pub source: DataSourceSpec,
    /// Hugging Face dataset of the `huggingface` source; None = the data crate's default
    /// (the seed's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Seed of the `synthetic` source.
    pub synthetic_seed: u64,
    /// Pages a window trains on; None = the hparams' `validator_window_eval_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages_per_window: Option<u32>,
}

impl Default for DataConfig {
    /// The seed's dataset from Hugging Face.
    fn default() -> Self {
        Self { source: DataSourceSpec::HuggingFace, dataset: None, synthetic_seed: 0, pages_per_window: None }
    }
}

/// `data.source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSourceSpec {
    /// The seed's dataset through the Hugging Face datasets-server rows API.
    HuggingFace,
    /// Deterministic generated text, for offline devnets and tests.
    Synthetic,
    /// A local file or directory of jsonl/txt/parquet shards (not checked at load).
    Local(PathBuf),
}

impl DataSourceSpec {
    const HUGGING_FACE: &str = "huggingface";
    const SYNTHETIC: &str = "synthetic";

    /// `huggingface`, `synthetic` (any case), or any other non-blank text as a path (no `~`
    /// expansion here; the configuration does that).
    pub fn parse(text: &str) -> Option<Self> {
        let word = text.trim();
        if word.is_empty() {
            None
        } else if word.eq_ignore_ascii_case(Self::HUGGING_FACE) {
            Some(Self::HuggingFace)
        } else if word.eq_ignore_ascii_case(Self::SYNTHETIC) {
            Some(Self::Synthetic)
        } else {
            Some(Self::Local(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for DataSourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HuggingFace => f.write_str(Self::HUGGING_FACE),
            Self::Synthetic => f.write_str(Self::SYNTHETIC),
            // A relative path spelled like a keyword reads back as the path.
            Self::Local(path) if !matches!(Self::parse(&path.to_string_lossy()), Some(Self::Local(_))) => {
                write!(f, "./{}", path.display())
            }
            Self::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Serialize for DataSourceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One `[[miners]]` entry as configured: each key it sets overrides the top-level one for
/// that miner; the rest are the top-level configuration's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct MinerEntry {
    /// Label in logs and metrics and the name of its state directory; None = its hotkey name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "MinerWalletOverrides::is_empty")]
    pub wallet: MinerWalletOverrides,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_batch_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_path")]
    pub checkpoint_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random: Option<bool>,
    #[serde(skip_serializing_if = "S3Overrides::is_empty")]
    pub s3: S3Overrides,
}

/// The `wallet` keys of a `[[miners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct MinerWalletOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotkey: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_path")]
    pub path: Option<PathBuf>,
}

impl MinerWalletOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The `s3` keys of a `[[miners]]` entry, each overriding the top-level `[s3]` key.
///
/// `Debug` and [`MinerConfig::effective_toml`] hide the keys and the session token.
#[derive(Clone, PartialEq, Eq, Default, Serialize)]
pub struct S3Overrides {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_url")]
    pub endpoint: Option<url::Url>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl S3Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with the keys set here replaced.
    pub fn apply_to(&self, base: &S3Config) -> S3Config {
        let or = |own: &Option<String>, base: &Option<String>| own.clone().or_else(|| base.clone());
        S3Config {
            endpoint: self.endpoint.clone().or_else(|| base.endpoint.clone()),
            region: self.region.clone().unwrap_or_else(|| base.region.clone()),
            access_key_id: or(&self.access_key_id, &base.access_key_id),
            secret_access_key: or(&self.secret_access_key, &base.secret_access_key),
            session_token: or(&self.session_token, &base.session_token),
            profile: or(&self.profile, &base.profile),
        }
    }
}

impl fmt::Debug for S3Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("S3Overrides")
            .field("endpoint", &self.endpoint.as_ref().map(url::Url::as_str))
            .field("region", &self.region)
            .field("access_key_id", &hidden(&self.access_key_id))
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("profile", &self.profile)
            .finish()
    }
}

/// One miner of this process: its resolved configuration and where its own state lives.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerInstance {
    /// Label in logs and metrics.
    pub name: String,
    /// The top-level configuration with the entry's keys applied, `miners` empty and
    /// `state_dir` the instance's.
    pub config: MinerConfig,
    /// The top-level `state_dir` for a single miner, else `<state_dir>/miners/<name>`.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalletConfig {
    pub name: String,
    pub hotkey: String,
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubtensorConfig {
    pub network: Network,
    /// Always resolved: the configured endpoint or the network's well-known one.
    pub chain_endpoint: String,
}

/// The own bucket's endpoint, region and credentials (`[s3]`).
///
/// `Debug` and [`MinerConfig::effective_toml`] hide the keys and the session token.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct S3Config {
    /// S3-compatible endpoint (`https://host[:port]`, `http://` allowed) for non-AWS providers; None = AWS.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_url")]
    pub endpoint: Option<url::Url>,
    /// Region (default "us-east-1", what the seed used).
    pub region: String,
    /// Explicit keys; when absent the usual places are used (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env,
    /// then the ~/.aws/credentials profile). Given together; `session_token` only with both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Profile name in ~/.aws/credentials (default profile when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl Default for S3Config {
    /// AWS, `us-east-1`, credentials from the usual places.
    fn default() -> Self {
        Self {
            endpoint: None,
            region: DEFAULT_REGION.to_owned(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            profile: None,
        }
    }
}

impl S3Config {
    /// The configured keys (with the session token, if any) when both keys are set, else
    /// the AWS environment variables and then `profile` in `~/.aws/credentials`.
    pub fn credentials(&self) -> CredentialSource {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => CredentialSource::Static(AccessKeys {
                access_key: id.clone(),
                secret_key: secret.clone(),
                session_token: self.session_token.clone(),
            }),
            _ => CredentialSource::Environment { profile: self.profile.clone() },
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_ref().map(url::Url::as_str))
            .field("region", &self.region)
            .field("access_key_id", &hidden(&self.access_key_id))
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("profile", &self.profile)
            .finish()
    }
}

fn ser_opt_url<S: Serializer>(u: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(u.as_str()),
        None => s.serialize_none(),
    }
}

/// What `s3.endpoint` must be.
const S3_ENDPOINT_EXPECTED: &str = "an http:// or https:// URL of an S3-compatible endpoint, scheme://host[:port] \
                                    with no path, query or user name";

/// Checks an `s3.endpoint` value; the error says what is wrong with it.
fn parse_s3_endpoint(text: &str) -> Result<url::Url, String> {
    // The URL parser silently drops tabs and newlines; a pasted value with them is a mistake.
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("it contains {c:?}"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the scheme is {:?}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it has a user name or password; keys go in s3.access_key_id and s3.secret_access_key".into());
    }
    if url.path() != "/" {
        return Err(format!("it has the path {:?}; the bucket is not part of the endpoint", url.path()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or fragment".into());
    }
    Ok(url)
}

/// `text` with the password of a `scheme://user:password@host` prefix replaced, for messages.
fn hide_url_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else { return text.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return text.to_owned() };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
        None => text.to_owned(),
    }
}

/// An S3 region name as the storage client accepts it (its `check_region`).
fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn ser_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

fn ser_opt_path<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.collect_str(&p.display()),
        None => s.serialize_none(),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[metrics]`: where the Prometheus and health endpoints listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// `host:port`, or `None` (written `"off"`) for no endpoint.
    #[serde(serialize_with = "ser_listen")]
    pub listen: Option<std::net::SocketAddr>,
}

/// The metrics endpoint's default: loopback, so a bare-metal miner exposes nothing;
/// containers set `0.0.0.0:9464`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_METRICS_LISTEN.parse().ok() }
    }
}

fn ser_listen<S: Serializer>(listen: &Option<std::net::SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match listen {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("off"),
    }
}

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by index; plain `cuda` is GPU 0, as in torch.
    Cuda(u32),
}

impl Device {
    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(Self::Cpu),
            "cuda" => Some(Self::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:")?;
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                index.parse().ok().map(Self::Cuda)
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The subtensor network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    Finney,
    Test,
    Local,
    /// A node given by its `ws://`/`wss://` URL.
    Custom(String),
}

impl Network {
    /// `finney`, `test`, `local`, or a `ws://`/`wss://` URL.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "finney" => Some(Self::Finney),
            "test" => Some(Self::Test),
            "local" => Some(Self::Local),
            _ => is_ws_url(t).then(|| Self::Custom(t.to_owned())),
        }
    }

    /// The endpoint used when `subtensor.chain_endpoint` is not set.
    pub fn default_endpoint(&self) -> &str {
        match self {
            Self::Finney => FINNEY_ENDPOINT,
            Self::Test => TEST_ENDPOINT,
            Self::Local => LOCAL_ENDPOINT,
            Self::Custom(url) => url,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Finney => "finney",
            Self::Test => "test",
            Self::Local => "local",
            Self::Custom(url) => url,
        })
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn is_ws_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// An S3 bucket name that follows AWS's naming rules (as the seed checked at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BucketName(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BucketNameError {
    #[error("it has {0} characters")]
    Length(usize),
    #[error("{0:?} is not allowed")]
    Char(char),
    #[error("it starts or ends with '.' or '-'")]
    Edge,
    #[error("it contains \"..\"")]
    DoubleDot,
    #[error("it looks like an IP address")]
    IpAddress,
}

impl BucketNameError {
    /// The rules, for error messages.
    pub const RULES: &str = "3-63 lowercase letters, digits, '.' and '-', starting and ending with a \
                             letter or digit, no \"..\", not an IP address";
}

impl BucketName {
    /// 3–63 characters of lowercase letters, digits, `.` and `-`, starting and ending with
    /// a letter or digit, no `..`, not an IPv4 address.
    pub fn parse(name: &str) -> Result<Self, BucketNameError> {
        let len = name.chars().count();
        if !(3..=63).contains(&len) {
            return Err(BucketNameError::Length(len));
        }
        if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-')) {
            return Err(BucketNameError::Char(c));
        }
        let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
            return Err(BucketNameError::Edge);
        }
        if name.contains("..") {
            return Err(BucketNameError::DoubleDot);
        }
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(BucketNameError::IpAddress);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The layer a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(String),
    /// The variable name (reconstructed from the key).
    Env(String),
    /// The flag, `--key`.
    Cli(String),
}

impl Origin {
    fn of(key: &str, value: &config::Value) -> Self {
        // Merging layers rebuilds tables without an origin; their values keep theirs.
        fn tag(value: &config::Value) -> Option<&str> {
            value.origin().or_else(|| match &value.kind {
                ValueKind::Table(t) => t.values().find_map(tag),
                ValueKind::Array(a) => a.iter().find_map(tag),
                _ => None,
            })
        }
        match tag(value) {
            None => Self::Default,
            Some(CLI_ORIGIN) => Self::Cli(format!("--{key}")),
            Some(ENV_ORIGIN) => Self::Env(format!(
                "{ENV_PREFIX}{ENV_SEPARATOR}{}",
                key.to_ascii_uppercase().replace('.', ENV_SEPARATOR)
            )),
            Some(file) => Self::File(file.to_owned()),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(path) => write!(f, "config file {path}"),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Cli(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// Why the configuration is not usable.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid value {value} for {key} ({origin}): expected {expected}")]
    InvalidValue { key: String, value: String, expected: String, origin: Origin },
    #[error("unknown key \"{key}\" ({origin}){}", suggestion_text(.suggestion))]
    UnknownKey { key: String, origin: Origin, suggestion: Option<&'static str> },
    #[error(
        "bucket is required: pass --bucket NAME, set bucket = \"NAME\" in the config file, \
         or set {ENV_PREFIX}{ENV_SEPARATOR}BUCKET=NAME"
    )]
    MissingBucket,
    #[error("test and local are both set (--test and --local): choose one network")]
    TestAndLocal,
    #[error(
        "{given} is set ({origin}) but {missing} is not: s3.access_key_id and s3.secret_access_key must be \
         given together, or neither to use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~/.aws/credentials"
    )]
    S3UnpairedKey { given: &'static str, origin: Origin, missing: &'static str },
    #[error(
        "s3.session_token is set ({origin}) without s3.access_key_id and s3.secret_access_key: a session \
         token is only used with both keys (or set AWS_SESSION_TOKEN with the other AWS_ variables)"
    )]
    S3TokenWithoutKeys { origin: Origin },
    #[error(
        "miners[{index}] ({origin}) sets no bucket and there is no top-level bucket: set bucket in every \
         [[miners]] entry, or once at the top level for the entries that do not set their own"
    )]
    MinerWithoutBucket { index: usize, origin: Origin },
    #[error(
        "miners[{first}] and miners[{second}] ({origin}) have the same {what}: each miner of a process needs \
         its own"
    )]
    DuplicateMiner { first: usize, second: usize, what: String, origin: Origin },
    /// A rule across keys broken by the resolved configuration of one `[[miners]]` entry.
    #[error("miners[{index}]: {cause}")]
    InMiner { index: usize, cause: Box<ConfigError> },
    #[error("cannot expand ~ in {key} ({origin}): HOME is not set; give an absolute path")]
    NoHome { key: &'static str, origin: Origin },
    #[error("configuration file {} does not exist", .path.display())]
    FileNotFound { path: PathBuf },
    #[error("cannot read configuration file {path}: {cause}")]
    FileParse { path: String, cause: String },
    #[error("cannot assemble the configuration: {0}")]
    Layers(String),
}

fn suggestion_text(s: &Option<&'static str>) -> String {
    s.map(|k| format!("; did you mean \"{k}\"?")).unwrap_or_default()
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        match e {
            config::ConfigError::FileParse { uri, cause } => {
                Self::FileParse { path: uri.unwrap_or_else(|| "(unnamed)".into()), cause: cause.to_string() }
            }
            other => Self::Layers(other.to_string()),
        }
    }
}

/// The inputs of [`MinerConfig::load`]; explicit so tests need not touch the process.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Directory whose `default.toml`, if present, is the lowest file layer.
    pub config_dir: Option<PathBuf>,
    /// `--config FILE`: must exist.
    pub config_file: Option<PathBuf>,
    /// Variables to read `TESSERA__*` from; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
    /// Flags given on the command line: (key, value), e.g. `("wallet.name", "miner1")`;
    /// switches as `("remote", "true")`.
    pub cli_overrides: Vec<(String, String)>,
    /// Home directory for `~` expansion; `None` when unknown.
    pub home: Option<PathBuf>,
}

impl ConfigSources {
    /// The process's sources: `$TESSERA_CONFIG_DIR` (else `./config`), its environment
    /// and `$HOME`.
    pub fn from_process(config_file: Option<PathBuf>, cli_overrides: Vec<(String, String)>) -> Self {
        let explicit = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from);
        // ./config without a default.toml is normal; a directory named on purpose
        // without one is probably a mistake.
        if let Some(dir) = &explicit
            && !dir.join(DEFAULT_CONFIG_FILE).is_file()
        {
            warn!(
                dir = %dir.display(),
                "{CONFIG_DIR_ENV} is set but holds no {DEFAULT_CONFIG_FILE}; that layer is skipped"
            );
        }
        let config_dir = explicit.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
        Self {
            config_dir: Some(config_dir),
            config_file,
            env: None,
            cli_overrides,
            home: std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from),
        }
    }
}

/// Where hparams come from and where a fetched copy is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HparamsSettings {
    pub source: HparamsSource,
    pub cache_path: PathBuf,
}

impl HparamsSettings {
    /// Only the hparams part of the configuration (no bucket needed); the whole
    /// configuration is still checked, so a typo anywhere is reported.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        Draft::load(sources)?.hparams_settings()
    }
}

impl MinerConfig {
    /// Merges the layers of `sources` and validates the result.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        Draft::load(sources)?.finish()
    }

    /// Where hparams come from and where a fetched copy is cached.
    pub fn hparams_settings(&self) -> HparamsSettings {
        HparamsSettings { source: self.hparams.clone(), cache_path: self.state_dir.join(HPARAMS_CACHE_FILE) }
    }

    /// The miners this process runs. Without `[[miners]]` entries, one: named after the
    /// hotkey, this configuration, in `state_dir`. Otherwise one per entry, in entry order:
    /// this configuration with the entry's keys applied, in `<state_dir>/miners/<name>`;
    /// `runtime.cache_dir` is the same for all (the slice cache is shared by the miners of a
    /// host).
    pub fn instances(&self) -> Vec<MinerInstance> {
        if self.miners.is_empty() {
            let config = MinerConfig { miners: Vec::new(), ..self.clone() };
            return vec![MinerInstance { name: self.wallet.hotkey.clone(), config, state_dir: self.state_dir.clone() }];
        }
        self.miners.iter().map(|entry| self.instance(entry)).collect()
    }

    fn instance(&self, entry: &MinerEntry) -> MinerInstance {
        let mut config = MinerConfig { miners: Vec::new(), ..self.clone() };
        let wallet = &entry.wallet;
        if let Some(name) = &wallet.name {
            config.wallet.name.clone_from(name);
        }
        if let Some(hotkey) = &wallet.hotkey {
            config.wallet.hotkey.clone_from(hotkey);
        }
        if let Some(path) = &wallet.path {
            config.wallet.path.clone_from(path);
        }
        if let Some(bucket) = &entry.bucket {
            config.bucket = bucket.clone();
        }
        config.device = entry.device.unwrap_or(config.device);
        config.actual_batch_size = entry.actual_batch_size.unwrap_or(config.actual_batch_size);
        if entry.checkpoint_path.is_some() {
            config.checkpoint_path.clone_from(&entry.checkpoint_path);
        }
        config.baseline = entry.baseline.unwrap_or(config.baseline);
        config.random = entry.random.unwrap_or(config.random);
        config.s3 = entry.s3.apply_to(&self.s3);
        let name = entry.name.clone().unwrap_or_else(|| config.wallet.hotkey.clone());
        let state_dir = self.state_dir.join(MINERS_DIR).join(&name);
        config.state_dir.clone_from(&state_dir);
        MinerInstance { name, config, state_dir }
    }

    /// The effective configuration as TOML (valid as a `--config` file), secrets redacted.
    pub fn effective_toml(&self) -> String {
        let rendered = toml::Value::try_from(self).and_then(|mut value| {
            redact_secrets(&mut value);
            toml::to_string(&value)
        });
        match rendered {
            Ok(body) => {
                format!("# tessera miner: effective configuration (secrets redacted)\n{body}")
            }
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }
}

/// Replaces, anywhere in the tree, the value of every key that names a secret (contains
/// `secret`, `password`, `token`, `api_key` or `access_key`, in any case, `-` or `_`)
/// with [`REDACTED`].
pub fn redact_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) {
                    *v = toml::Value::String(REDACTED.into());
                } else {
                    redact_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    SECRET_MARKERS.iter().any(|m| k.contains(m))
}

/// Expands a leading `~` (alone or followed by `/`) to `home`.
pub fn expand_tilde(path: &str, home: Option<&Path>) -> Result<PathBuf, TildeError> {
    let rest = match path.strip_prefix('~') {
        None => return Ok(PathBuf::from(path)),
        Some(rest) => rest,
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(TildeError::OtherUser);
    }
    let home = home.ok_or(TildeError::NoHome)?;
    Ok(home.join(rest.trim_start_matches('/')))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TildeError {
    #[error("HOME is not set")]
    NoHome,
    #[error("~user paths are not supported")]
    OtherUser,
}

/// A command-line layer whose values carry their own origin tag.
#[derive(Debug, Clone)]
struct CliSource(Vec<(String, String)>);

impl Source for CliSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let origin = CLI_ORIGIN.to_owned();
        Ok(self.0.iter().map(|(k, v)| (k.clone(), config::Value::new(Some(&origin), v.clone()))).collect())
    }
}

/// A TOML file layer whose values carry the path *as given* as their origin. (The config
/// crate's own file source records a path relative to the working directory, which makes
/// messages depend on where the miner was started.)
#[derive(Debug, Clone)]
struct TomlFile(PathBuf);

impl Source for TomlFile {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let uri = self.0.display().to_string();
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| config::ConfigError::FileParse { uri: Some(uri.clone()), cause: Box::new(e) })?;
        let table = config::File::from_str(&text, config::FileFormat::Toml).collect().map_err(|e| match e {
            config::ConfigError::FileParse { cause, .. } => {
                config::ConfigError::FileParse { uri: Some(uri.clone()), cause }
            }
            other => other,
        })?;
        fn retag(value: config::Value, origin: &String) -> config::Value {
            let kind = match value.kind {
                ValueKind::Table(t) => ValueKind::Table(t.into_iter().map(|(k, v)| (k, retag(v, origin))).collect()),
                ValueKind::Array(a) => ValueKind::Array(a.into_iter().map(|v| retag(v, origin)).collect()),
                other => other,
            };
            config::Value::new(Some(origin), kind)
        }
        Ok(table.into_iter().map(|(k, v)| (k, retag(v, &uri))).collect())
    }
}

/// Merges the layers into (dotted key, value) pairs, sorted by key.
fn merged(sources: &ConfigSources) -> Result<Vec<(String, config::Value)>, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(dir) = &sources.config_dir {
        let path = dir.join(DEFAULT_CONFIG_FILE);
        if path.is_file() {
            info!(path = %path.display(), "configuration layer: defaults file");
            builder = builder.add_source(TomlFile(path));
        } else {
            debug!(path = %path.display(), "no defaults file");
        }
    }
    if let Some(path) = &sources.config_file {
        if !path.is_file() {
            return Err(ConfigError::FileNotFound { path: path.clone() });
        }
        info!(path = %path.display(), "configuration layer: --config file");
        builder = builder.add_source(TomlFile(path.clone()));
    }
    builder = builder
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .separator(ENV_SEPARATOR)
                .ignore_empty(true)
                .source(sources.env.clone()),
        )
        .add_source(CliSource(sources.cli_overrides.clone()));
    let table = builder.build()?.collect()?;
    Ok(flattened(table, KEYS, SECTIONS))
}

/// The (dotted key, value) pairs of `table`, sorted by key: tables are descended into
/// unless they are the value of one of `keys`; a table that is empty is a value unless it
/// is one of `sections`.
fn flattened(
    table: config::Map<String, config::Value>,
    keys: &[&str],
    sections: &[&str],
) -> Vec<(String, config::Value)> {
    let mut out = Vec::new();
    flatten("", table, keys, sections, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn flatten(
    prefix: &str,
    table: config::Map<String, config::Value>,
    keys: &[&str],
    sections: &[&str],
    out: &mut Vec<(String, config::Value)>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        let descend = matches!(&v.kind, ValueKind::Table(t)
            if !keys.contains(&key.as_str()) && (!t.is_empty() || sections.contains(&key.as_str())));
        match v.kind {
            ValueKind::Table(inner) if descend => flatten(&key, inner, keys, sections, out),
            _ => out.push((key, v)),
        }
    }
}

/// One merged value under check.
struct Entry<'a> {
    key: &'a str,
    value: &'a config::Value,
    origin: Origin,
}

impl Entry<'_> {
    fn bad(&self, expected: impl Into<String>) -> ConfigError {
        self.bad_shown(self.shown(), expected)
    }

    fn bad_shown(&self, value: String, expected: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            key: self.key.to_owned(),
            value,
            expected: expected.into(),
            origin: self.origin.clone(),
        }
    }

    /// The value for a message: a secret's is hidden unless it is empty or not a scalar.
    fn shown(&self) -> String {
        match &self.value.kind {
            ValueKind::String(s) if s.is_empty() => show(&self.value.kind),
            ValueKind::Nil | ValueKind::Table(_) | ValueKind::Array(_) => show(&self.value.kind),
            _ if is_secret_key(self.key) => REDACTED.into(),
            kind => show(kind),
        }
    }

    /// A non-blank string.
    fn text(&self, expected: &str) -> Result<String, ConfigError> {
        match &self.value.kind {
            ValueKind::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(self.bad(expected)),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        let expected = "a boolean (true or false)";
        match &self.value.kind {
            ValueKind::Boolean(b) => Ok(*b),
            ValueKind::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(self.bad(expected)),
            },
            _ => Err(self.bad(expected)),
        }
    }

    /// An integer ≥ `min` that fits `T`.
    fn uint<T: TryFrom<u64>>(&self, min: u64, expected: &str) -> Result<T, ConfigError> {
        let n: Option<u64> = match &self.value.kind {
            ValueKind::I64(v) => u64::try_from(*v).ok(),
            ValueKind::U64(v) => Some(*v),
            ValueKind::I128(v) => u64::try_from(*v).ok(),
            ValueKind::U128(v) => u64::try_from(*v).ok(),
            ValueKind::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.filter(|n| *n >= min).and_then(|n| T::try_from(n).ok()).ok_or_else(|| self.bad(expected))
    }

    /// An integer `min..=i64::MAX` (the TOML range) of `what`, e.g. "a number of seconds".
    fn count(&self, min: u64, what: &str) -> Result<u64, ConfigError> {
        let expected = format!("{what}, an integer {min}..={MAX_INTEGER}");
        self.uint::<u64>(min, &expected).and_then(|n| if n <= MAX_INTEGER { Ok(n) } else { Err(self.bad(expected)) })
    }

    /// A wallet or hotkey name.
    fn file_name(&self) -> Result<String, ConfigError> {
        let s = self.text(NAME_EXPECTED)?;
        if s.contains(['/', '\\']) { Err(self.bad(NAME_EXPECTED)) } else { Ok(s) }
    }

    /// A path, unexpanded, with its origin.
    fn path_text(&self) -> Result<(String, Origin), ConfigError> {
        Ok((self.text(PATH_EXPECTED)?, self.origin.clone()))
    }

    /// A key or token: printed configuration shows REDACTED, which must not be read back as one.
    fn secret(&self, what: &str) -> Result<(String, Origin), ConfigError> {
        let expected = format!("{what} without spaces");
        let s = self.text(&expected)?;
        if s == REDACTED {
            return Err(
                self.bad(format!("{what} (the real one, not the {REDACTED} placeholder of printed configuration)"))
            );
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.bad(expected));
        }
        Ok((s, self.origin.clone()))
    }

    fn bucket(&self) -> Result<BucketName, ConfigError> {
        let text = self.text("an S3 bucket name")?;
        BucketName::parse(&text)
            .map_err(|why| self.bad(format!("an S3 bucket name: {} ({why})", BucketNameError::RULES)))
    }

    fn device(&self) -> Result<Device, ConfigError> {
        let expected = "\"cpu\", \"cuda\" or \"cuda:N\"";
        Device::parse(&self.text(expected)?).ok_or_else(|| self.bad(expected))
    }

    /// A `[[miners]]` name: 1-32 of `[A-Za-z0-9_-]`.
    fn miner_name(&self) -> Result<String, ConfigError> {
        let s = self.text(MINER_NAME_EXPECTED)?;
        if is_miner_name(&s) { Ok(s) } else { Err(self.bad(MINER_NAME_EXPECTED)) }
    }

    /// The error for a section given a plain value.
    fn not_a_table(&self, section: &str, keys: &[&str]) -> ConfigError {
        let fields: Vec<_> = keys
            .iter()
            .filter(|k| k.starts_with(&format!("{section}.")))
            .map(|k| if self.key == section { (*k).to_owned() } else { format!("{}{}", self.key, &k[section.len()..]) })
            .collect();
        self.bad(format!("a table with keys {}", fields.join(", ")))
    }
}

fn is_miner_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A value as it appears in an error message.
fn show(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Nil => "(nothing)".into(),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(v) => v.to_string(),
        ValueKind::I128(v) => v.to_string(),
        ValueKind::U64(v) => v.to_string(),
        ValueKind::U128(v) => v.to_string(),
        ValueKind::Float(v) => v.to_string(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Table(_) => "(a table)".into(),
        ValueKind::Array(_) => "(an array)".into(),
    }
}

/// The closest known key, for typos.
fn suggest(key: &str) -> Option<&'static str> {
    suggest_from(key, KEYS)
}

/// The closest of `keys` to `key`, for typos.
fn suggest_from(key: &str, keys: &'static [&'static str]) -> Option<&'static str> {
    let norm = key.to_ascii_lowercase().replace('-', "_");
    keys.iter().map(|k| (edit_distance(&norm, k), *k)).filter(|(d, _)| *d <= 3).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

const DEFAULT_WALLET_PATH: &str = "~/.bittensor/wallets";
const DEFAULT_STATE_DIR: &str = "~/.tessera";

/// The merged, key-checked configuration before cross-key rules (bucket required,
/// `--test`/`--local`, `~` expansion, `[[miners]]` conflicts) are applied.
struct Draft {
    actual_batch_size: u32,
    wallet_name: String,
    wallet_hotkey: String,
    wallet_path: (String, Origin),
    bucket: Option<BucketName>,
    device: Device,
    use_wandb: bool,
    project: String,
    netuid: u16,
    remote: bool,
    sync_state: bool,
    debug: bool,
    trace: bool,
    log_format: LogFormat,
    metrics: MetricsConfig,
    random: bool,
    baseline: bool,
    test: bool,
    local: bool,
    autoupdate: bool,
    network: Option<(Network, Origin)>,
    chain_endpoint: Option<(String, Origin)>,
    checkpoint_path: Option<(String, Origin)>,
    process_name: Option<String>,
    hparams: (HparamsSource, Origin),
    state_dir: (String, Origin),
    s3: S3Draft,
    /// `cache_dir` is resolved by `finish`.
    runtime: RuntimeConfig,
    cache_dir: Option<(String, Origin)>,
    restart_backoff_origin: Origin,
    restart_backoff_max_origin: Origin,
    /// A local `source` is `~`-expanded by `finish`.
    data: DataConfig,
    data_source_origin: Origin,
    miners: Vec<MinerDraft>,
    home: Option<PathBuf>,
}

/// The `[s3]` keys given, with their origins; a `[[miners]]` entry's override the top-level ones.
#[derive(Debug, Clone, Default)]
struct S3Draft {
    endpoint: Option<url::Url>,
    region: Option<String>,
    access_key_id: Option<(String, Origin)>,
    secret_access_key: Option<(String, Origin)>,
    session_token: Option<(String, Origin)>,
    profile: Option<(String, Origin)>,
}

impl S3Draft {
    /// Checks and takes `key` (without the `s3.` prefix); false when it is not an `[s3]` key.
    fn set(&mut self, key: &str, e: &Entry<'_>) -> Result<bool, ConfigError> {
        match key {
            "endpoint" => {
                let text = e.text(S3_ENDPOINT_EXPECTED)?.trim().to_owned();
                let url = parse_s3_endpoint(&text).map_err(|why| {
                    e.bad_shown(format!("{:?}", hide_url_password(&text)), format!("{S3_ENDPOINT_EXPECTED} ({why})"))
                })?;
                self.endpoint = Some(url);
            }
            "region" => {
                let expected = "a region name: lowercase letters, digits and '-', e.g. \"us-east-1\"";
                let region = e.text(expected)?;
                if !is_region_name(&region) {
                    return Err(e.bad(expected));
                }
                self.region = Some(region);
            }
            "access_key_id" => self.access_key_id = Some(e.secret("an access key id")?),
            "secret_access_key" => self.secret_access_key = Some(e.secret("a secret access key")?),
            "session_token" => self.session_token = Some(e.secret("a session token")?),
            "profile" => self.profile = Some((e.text("a non-empty profile name")?, e.origin.clone())),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// These keys, and `base`'s where not given here.
    fn over(&self, base: &Self) -> Self {
        Self {
            endpoint: self.endpoint.clone().or_else(|| base.endpoint.clone()),
            region: self.region.clone().or_else(|| base.region.clone()),
            access_key_id: self.access_key_id.clone().or_else(|| base.access_key_id.clone()),
            secret_access_key: self.secret_access_key.clone().or_else(|| base.secret_access_key.clone()),
            session_token: self.session_token.clone().or_else(|| base.session_token.clone()),
            profile: self.profile.clone().or_else(|| base.profile.clone()),
        }
    }

    fn overrides(&self) -> S3Overrides {
        let value = |v: &Option<(String, Origin)>| v.as_ref().map(|(s, _)| s.clone());
        S3Overrides {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: value(&self.access_key_id),
            secret_access_key: value(&self.secret_access_key),
            session_token: value(&self.session_token),
            profile: value(&self.profile),
        }
    }

    /// Keys go in pairs; a session token needs both.
    fn finish(&self) -> Result<S3Config, ConfigError> {
        let (id, secret) = (&self.access_key_id, &self.secret_access_key);
        match (id, secret) {
            (Some((_, origin)), None) => {
                return Err(ConfigError::S3UnpairedKey {
                    given: "s3.access_key_id",
                    origin: origin.clone(),
                    missing: "s3.secret_access_key",
                });
            }
            (None, Some((_, origin))) => {
                return Err(ConfigError::S3UnpairedKey {
                    given: "s3.secret_access_key",
                    origin: origin.clone(),
                    missing: "s3.access_key_id",
                });
            }
            (None, None) => {
                if let Some((_, origin)) = &self.session_token {
                    return Err(ConfigError::S3TokenWithoutKeys { origin: origin.clone() });
                }
            }
            (Some(_), Some(_)) => {
                if let Some((profile, origin)) = &self.profile {
                    warn!(%profile, %origin, "s3.profile is unused: s3.access_key_id and s3.secret_access_key are set");
                }
            }
        }
        let overrides = self.overrides();
        Ok(S3Config {
            endpoint: overrides.endpoint,
            region: overrides.region.unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            access_key_id: overrides.access_key_id,
            secret_access_key: overrides.secret_access_key,
            session_token: overrides.session_token,
            profile: overrides.profile,
        })
    }
}

/// One `[[miners]]` entry, key-checked, paths expanded.
#[derive(Debug, Clone)]
struct MinerDraft {
    entry: MinerEntry,
    s3: S3Draft,
    /// Where the entry was given.
    origin: Origin,
}

impl Draft {
    fn defaults(home: Option<PathBuf>) -> Self {
        Self {
            actual_batch_size: 8,
            wallet_name: "default".into(),
            wallet_hotkey: "default".into(),
            wallet_path: (DEFAULT_WALLET_PATH.into(), Origin::Default),
            bucket: None,
            device: Device::Cuda(0),
            use_wandb: false,
            project: "templar".into(),
            netuid: 3,
            remote: false,
            sync_state: false,
            debug: false,
            trace: false,
            log_format: LogFormat::Text,
            metrics: MetricsConfig::default(),
            random: false,
            baseline: false,
            test: false,
            local: false,
            autoupdate: false,
            network: None,
            chain_endpoint: None,
            checkpoint_path: None,
            process_name: None,
            hparams: (HparamsSource::BuiltIn, Origin::Default),
            state_dir: (DEFAULT_STATE_DIR.into(), Origin::Default),
            s3: S3Draft::default(),
            runtime: RuntimeConfig::defaults(PathBuf::new()),
            cache_dir: None,
            restart_backoff_origin: Origin::Default,
            restart_backoff_max_origin: Origin::Default,
            data: DataConfig::default(),
            data_source_origin: Origin::Default,
            miners: Vec::new(),
            home,
        }
    }

    fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let mut draft = Self::defaults(sources.home.clone());
        for (key, value) in merged(sources)? {
            let origin = Origin::of(&key, &value);
            draft.apply(&Entry { key: &key, value: &value, origin })?;
        }
        Ok(draft)
    }

    fn apply(&mut self, e: &Entry<'_>) -> Result<(), ConfigError> {
        const SECONDS: &str = "a number of seconds";
        const MILLISECONDS: &str = "a number of milliseconds";
        const U32_FROM_1: &str = "an integer 1..=4294967295";
        if let Some(key) = e.key.strip_prefix("s3.")
            && self.s3.set(key, e)?
        {
            return Ok(());
        }
        let rt = &mut self.runtime;
        match e.key {
            "actual_batch_size" => self.actual_batch_size = e.uint(1, U32_FROM_1)?,
            "wallet.name" => self.wallet_name = e.file_name()?,
            "wallet.hotkey" => self.wallet_hotkey = e.file_name()?,
            "wallet.path" => self.wallet_path = e.path_text()?,
            "bucket" => self.bucket = Some(e.bucket()?),
            "device" => self.device = e.device()?,
            "use_wandb" => self.use_wandb = e.boolean()?,
            "project" => self.project = e.text("a non-empty project name")?,
            "netuid" => self.netuid = e.uint(0, "an integer 0..=65535")?,
            "remote" => self.remote = e.boolean()?,
            "sync_state" => self.sync_state = e.boolean()?,
            "debug" => self.debug = e.boolean()?,
            "log_format" => {
                self.log_format = match e.text("\"text\" or \"json\"")?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(e.bad("\"text\" or \"json\"")),
                }
            }
            "metrics.listen" => {
                const LISTEN: &str = "host:port (e.g. \"0.0.0.0:9464\") or \"off\"";
                let text = e.text(LISTEN)?;
                self.metrics.listen = match text.trim() {
                    "off" => None,
                    addr => Some(addr.parse().map_err(|_| e.bad(LISTEN))?),
                };
            }
            "trace" => self.trace = e.boolean()?,
            "random" => self.random = e.boolean()?,
            "baseline" => self.baseline = e.boolean()?,
            "test" => self.test = e.boolean()?,
            "local" => self.local = e.boolean()?,
            "autoupdate" => self.autoupdate = e.boolean()?,
            "subtensor.network" => {
                let expected = "\"finney\", \"test\", \"local\" or a ws:// or wss:// URL";
                let network = Network::parse(&e.text(expected)?).ok_or_else(|| e.bad(expected))?;
                self.network = Some((network, e.origin.clone()));
            }
            "subtensor.chain_endpoint" => {
                let expected = "a ws:// or wss:// URL";
                let url = e.text(expected)?.trim().to_owned();
                if !is_ws_url(&url) {
                    return Err(e.bad(expected));
                }
                self.chain_endpoint = Some((url, e.origin.clone()));
            }
            "checkpoint_path" => self.checkpoint_path = Some(e.path_text()?),
            "process_name" => self.process_name = Some(e.text("a non-empty process name")?),
            "hparams" => {
                let expected = "a file path, an http:// or https:// URL, or \"builtin\"";
                let source =
                    HparamsSource::parse(&e.text(expected)?).map_err(|err| e.bad(format!("{expected} ({err})")))?;
                self.hparams = (source, e.origin.clone());
            }
            "state_dir" => self.state_dir = e.path_text()?,
            "runtime.checkpoint_every" => rt.checkpoint_every = e.count(1, "a number of windows")?,
            "runtime.download_concurrency" => rt.download_concurrency = e.uint(1, U32_FROM_1)?,
            "runtime.peer_deadline_secs" => rt.peer_deadline_secs = e.count(1, SECONDS)?,
            "runtime.progress_timeout_secs" => rt.progress_timeout_secs = e.count(1, SECONDS)?,
            "runtime.peer_failures_before_skip" => rt.peer_failures_before_skip = e.uint(1, U32_FROM_1)?,
            "runtime.peer_skip_secs" => rt.peer_skip_secs = e.count(1, SECONDS)?,
            "runtime.refresh_secs" => rt.refresh_secs = e.count(1, SECONDS)?,
            "runtime.max_restarts" => rt.max_restarts = e.uint(1, U32_FROM_1)?,
            "runtime.restart_period_secs" => rt.restart_period_secs = e.count(1, SECONDS)?,
            "runtime.restart_backoff_ms" => {
                rt.restart_backoff_ms = e.count(1, MILLISECONDS)?;
                self.restart_backoff_origin = e.origin.clone();
            }
            "runtime.restart_backoff_max_ms" => {
                rt.restart_backoff_max_ms = e.count(1, MILLISECONDS)?;
                self.restart_backoff_max_origin = e.origin.clone();
            }
            "runtime.shutdown_timeout_secs" => rt.shutdown_timeout_secs = e.count(1, SECONDS)?,
            "runtime.clock_skew_secs" => rt.clock_skew_secs = e.count(0, SECONDS)?,
            "runtime.eval_every" => rt.eval_every = e.count(0, "a number of windows (0: never)")?,
            "runtime.cache_dir" => self.cache_dir = Some(e.path_text()?),
            "data.source" => {
                self.data.source =
                    DataSourceSpec::parse(&e.text(DATA_SOURCE_EXPECTED)?).ok_or_else(|| e.bad(DATA_SOURCE_EXPECTED))?;
                self.data_source_origin = e.origin.clone();
            }
            "data.dataset" => {
                let expected = "a Hugging Face dataset name without spaces, e.g. \"HuggingFaceFW/fineweb-edu-score-2\"";
                let name = e.text(expected)?;
                if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(e.bad(expected));
                }
                self.data.dataset = Some(name);
            }
            "data.synthetic_seed" => self.data.synthetic_seed = e.count(0, "a seed")?,
            "data.pages_per_window" => self.data.pages_per_window = Some(e.uint(1, U32_FROM_1)?),
            "miners" => {
                let ValueKind::Array(items) = &e.value.kind else { return Err(e.bad(MINERS_EXPECTED)) };
                self.miners =
                    items.iter().enumerate().map(|(i, item)| self.miner(i, item)).collect::<Result<_, _>>()?;
            }
            key if SECTIONS.contains(&key) => return Err(e.not_a_table(key, KEYS)),
            key => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_owned(),
                    origin: e.origin.clone(),
                    suggestion: suggest(key),
                });
            }
        }
        Ok(())
    }

    /// Checks `[[miners]]` entry `index`, key by key.
    fn miner(&self, index: usize, item: &config::Value) -> Result<MinerDraft, ConfigError> {
        let prefix = format!("miners[{index}]");
        let origin = Origin::of(&prefix, item);
        let ValueKind::Table(table) = &item.kind else {
            return Err(Entry { key: &prefix, value: item, origin }.bad("a table of miner settings ([[miners]])"));
        };
        let mut miner = MinerDraft { entry: MinerEntry::default(), s3: S3Draft::default(), origin };
        for (rel, value) in flattened(table.clone(), MINER_KEYS, MINER_SECTIONS) {
            let key = format!("{prefix}.{rel}");
            let e = Entry { key: &key, value: &value, origin: Origin::of(&key, &value) };
            if let Some(s3_key) = rel.strip_prefix("s3.")
                && miner.s3.set(s3_key, &e)?
            {
                continue;
            }
            let entry = &mut miner.entry;
            match rel.as_str() {
                "name" => entry.name = Some(e.miner_name()?),
                "wallet.name" => entry.wallet.name = Some(e.file_name()?),
                "wallet.hotkey" => entry.wallet.hotkey = Some(e.file_name()?),
                "wallet.path" => entry.wallet.path = Some(self.entry_path(&e)?),
                "bucket" => entry.bucket = Some(e.bucket()?),
                "device" => entry.device = Some(e.device()?),
                "actual_batch_size" => entry.actual_batch_size = Some(e.uint(1, "an integer 1..=4294967295")?),
                "checkpoint_path" => entry.checkpoint_path = Some(self.entry_path(&e)?),
                "baseline" => entry.baseline = Some(e.boolean()?),
                "random" => entry.random = Some(e.boolean()?),
                section if MINER_SECTIONS.contains(&section) => return Err(e.not_a_table(section, MINER_KEYS)),
                other => {
                    return Err(ConfigError::UnknownKey {
                        key: key.clone(),
                        origin: e.origin.clone(),
                        suggestion: suggest_from(other, MINER_KEYS),
                    });
                }
            }
        }
        Ok(miner)
    }

    fn path(&self, key: &'static str, (raw, origin): &(String, Origin)) -> Result<PathBuf, ConfigError> {
        expand_tilde(raw, self.home.as_deref()).map_err(|err| match err {
            TildeError::NoHome => ConfigError::NoHome { key, origin: origin.clone() },
            TildeError::OtherUser => ConfigError::InvalidValue {
                key: key.into(),
                value: format!("{raw:?}"),
                expected: "an absolute path, a relative path or ~/… (~user/ is not supported)".into(),
                origin: origin.clone(),
            },
        })
    }

    /// A path key of a `[[miners]]` entry, `~`-expanded.
    fn entry_path(&self, e: &Entry<'_>) -> Result<PathBuf, ConfigError> {
        let (raw, _) = e.path_text()?;
        expand_tilde(&raw, self.home.as_deref()).map_err(|err| match err {
            TildeError::NoHome => e.bad("an absolute or relative path (HOME is not set, so ~ cannot be expanded)"),
            TildeError::OtherUser => e.bad("an absolute path, a relative path or ~/… (~user/ is not supported)"),
        })
    }

    fn hparams_settings(&self) -> Result<HparamsSettings, ConfigError> {
        let source = match &self.hparams {
            (HparamsSource::File(p), origin) => {
                HparamsSource::File(self.path("hparams", &(p.to_string_lossy().into_owned(), origin.clone()))?)
            }
            (other, _) => other.clone(),
        };
        Ok(HparamsSettings { source, cache_path: self.path("state_dir", &self.state_dir)?.join(HPARAMS_CACHE_FILE) })
    }

    /// `--test`/`--local` force their network and its endpoint, as the seed did.
    fn subtensor(&self) -> Result<SubtensorConfig, ConfigError> {
        let forced = match (self.test, self.local) {
            (true, true) => return Err(ConfigError::TestAndLocal),
            (true, false) => Some(("--test", Network::Test)),
            (false, true) => Some(("--local", Network::Local)),
            (false, false) => None,
        };
        if let Some((flag, network)) = forced {
            let endpoint = network.default_endpoint().to_owned();
            if let Some((configured, origin)) = &self.network
                && *configured != network
            {
                warn!(%configured, %origin, "{flag} overrides subtensor.network");
            }
            if let Some((configured, origin)) = &self.chain_endpoint
                && *configured != endpoint
            {
                warn!(%configured, %origin, %endpoint, "{flag} overrides subtensor.chain_endpoint");
            }
            return Ok(SubtensorConfig { network, chain_endpoint: endpoint });
        }
        let network = self.network.as_ref().map_or(Network::Finney, |(n, _)| n.clone());
        let chain_endpoint =
            self.chain_endpoint.as_ref().map_or_else(|| network.default_endpoint().to_owned(), |(e, _)| e.clone());
        Ok(SubtensorConfig { network, chain_endpoint })
    }

    /// `[runtime]` with `cache_dir` resolved; the backoff cap is at least the first delay.
    fn runtime(&self, state_dir: &Path) -> Result<RuntimeConfig, ConfigError> {
        let (first, max) = (self.runtime.restart_backoff_ms, self.runtime.restart_backoff_max_ms);
        if max < first {
            return Err(ConfigError::InvalidValue {
                key: "runtime.restart_backoff_max_ms".into(),
                value: max.to_string(),
                expected: format!(
                    "a number of milliseconds at least runtime.restart_backoff_ms ({first}, {})",
                    self.restart_backoff_origin
                ),
                origin: self.restart_backoff_max_origin.clone(),
            });
        }
        let cache_dir = match &self.cache_dir {
            Some(raw) => self.path("runtime.cache_dir", raw)?,
            None => state_dir.join(SLICE_CACHE_DIR),
        };
        Ok(RuntimeConfig { cache_dir, ..self.runtime.clone() })
    }

    /// `[data]` with a local source `~`-expanded.
    fn data(&self) -> Result<DataConfig, ConfigError> {
        let mut data = self.data.clone();
        if let DataSourceSpec::Local(path) = &data.source {
            let raw = (path.to_string_lossy().into_owned(), self.data_source_origin.clone());
            data.source = DataSourceSpec::Local(self.path("data.source", &raw)?);
        }
        if let Some(dataset) = &data.dataset
            && data.source != DataSourceSpec::HuggingFace
        {
            warn!(%dataset, source = %data.source, "data.dataset is unused: data.source is not \"huggingface\"");
        }
        Ok(data)
    }

    /// The bucket of the configuration: the top-level one, else (when every `[[miners]]`
    /// entry sets its own) the first entry's.
    fn bucket(&self) -> Result<BucketName, ConfigError> {
        if let Some(bucket) = &self.bucket {
            return Ok(bucket.clone());
        }
        let Some(first) = self.miners.first() else { return Err(ConfigError::MissingBucket) };
        if let Some((index, miner)) = self.miners.iter().enumerate().find(|(_, m)| m.entry.bucket.is_none()) {
            return Err(ConfigError::MinerWithoutBucket { index, origin: miner.origin.clone() });
        }
        first.entry.bucket.clone().ok_or(ConfigError::MissingBucket)
    }

    /// Rules across the resolved `[[miners]]`: each entry's `[s3]` keys pair up, a default
    /// name (the hotkey) is a valid name, and no two miners share a name, a wallet or a
    /// checkpoint file.
    fn check_miners(&self, config: &MinerConfig) -> Result<(), ConfigError> {
        let instances = config.instances();
        for (index, (miner, instance)) in self.miners.iter().zip(&instances).enumerate() {
            miner.s3.over(&self.s3).finish().map_err(|e| ConfigError::InMiner { index, cause: Box::new(e) })?;
            if miner.entry.name.is_none() && !is_miner_name(&instance.name) {
                return Err(ConfigError::InvalidValue {
                    key: format!("miners[{index}].name"),
                    value: format!("{:?} (the default: its wallet.hotkey)", instance.name),
                    expected: format!("{MINER_NAME_EXPECTED}; set name"),
                    origin: miner.origin.clone(),
                });
            }
        }
        for (second, b) in instances.iter().enumerate().skip(1) {
            for (first, a) in instances.iter().enumerate().take(second) {
                let (wa, wb) = (&a.config.wallet, &b.config.wallet);
                let what = if wa == wb {
                    format!("wallet (name {:?}, hotkey {:?}, path {})", wa.name, wa.hotkey, wa.path.display())
                } else if a.name.eq_ignore_ascii_case(&b.name) {
                    format!("name {:?}", b.name)
                } else if let (Some(pa), Some(pb)) = (&a.config.checkpoint_path, &b.config.checkpoint_path)
                    && pa == pb
                {
                    format!("checkpoint_path {}", pa.display())
                } else {
                    continue;
                };
                return Err(ConfigError::DuplicateMiner {
                    first,
                    second,
                    what,
                    origin: self.miners[second].origin.clone(),
                });
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<MinerConfig, ConfigError> {
        let subtensor = self.subtensor()?;
        let s3 = self.s3.finish()?;
        let hparams = self.hparams_settings()?.source;
        let wallet_path = self.path("wallet.path", &self.wallet_path)?;
        let state_dir = self.path("state_dir", &self.state_dir)?;
        let checkpoint_path = match &self.checkpoint_path {
            Some(raw) => Some(self.path("checkpoint_path", raw)?),
            None => None,
        };
        let runtime = self.runtime(&state_dir)?;
        let data = self.data()?;
        let bucket = self.bucket()?;
        let config = MinerConfig {
            actual_batch_size: self.actual_batch_size,
            wallet: WalletConfig {
                name: self.wallet_name.clone(),
                hotkey: self.wallet_hotkey.clone(),
                path: wallet_path,
            },
            bucket,
            s3,
            device: self.device,
            use_wandb: self.use_wandb,
            project: self.project.clone(),
            netuid: self.netuid,
            remote: self.remote,
            sync_state: self.sync_state,
            debug: self.debug,
            trace: self.trace,
            log_format: self.log_format,
            metrics: self.metrics,
            random: self.random,
            baseline: self.baseline,
            test: self.test,
            local: self.local,
            autoupdate: self.autoupdate,
            subtensor,
            checkpoint_path,
            process_name: self.process_name.clone(),
            hparams,
            state_dir,
            runtime,
            data,
            miners: self.miners.iter().map(|m| MinerEntry { s3: m.s3.overrides(), ..m.entry.clone() }).collect(),
        };
        self.check_miners(&config)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "/home/op";

    fn sources() -> ConfigSources {
        ConfigSources {
            config_dir: None,
            config_file: None,
            env: Some(HashMap::new()),
            cli_overrides: Vec::new(),
            home: Some(PathBuf::from(HOME)),
        }
    }

    fn cli(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    fn with_bucket() -> ConfigSources {
        ConfigSources { cli_overrides: cli(&[("bucket", "my-bucket")]), ..sources() }
    }

    fn err(s: &ConfigSources) -> String {
        MinerConfig::load(s).expect_err("configuration should be rejected").to_string()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn defaults() -> MinerConfig {
        MinerConfig {
            actual_batch_size: 8,
            wallet: WalletConfig {
                name: "default".into(),
                hotkey: "default".into(),
                path: PathBuf::from("/home/op/.bittensor/wallets"),
            },
            bucket: BucketName::parse("my-bucket").unwrap(),
            s3: S3Config {
                endpoint: None,
                region: "us-east-1".into(),
                access_key_id: None,
                secret_access_key: None,
                session_token: None,
                profile: None,
            },
            device: Device::Cuda(0),
            use_wandb: false,
            project: "templar".into(),
            netuid: 3,
            remote: false,
            sync_state: false,
            debug: false,
            trace: false,
            log_format: LogFormat::Text,
            metrics: MetricsConfig::default(),
            random: false,
            baseline: false,
            test: false,
            local: false,
            autoupdate: false,
            subtensor: SubtensorConfig { network: Network::Finney, chain_endpoint: FINNEY_ENDPOINT.into() },
            checkpoint_path: None,
            process_name: None,
            hparams: HparamsSource::BuiltIn,
            state_dir: PathBuf::from("/home/op/.tessera"),
            runtime: RuntimeConfig {
                checkpoint_every: 10,
                download_concurrency: 16,
                peer_deadline_secs: 30,
                progress_timeout_secs: 10,
                peer_failures_before_skip: 3,
                peer_skip_secs: 300,
                refresh_secs: 60,
                max_restarts: 5,
                restart_period_secs: 300,
                restart_backoff_ms: 500,
                restart_backoff_max_ms: 30_000,
                shutdown_timeout_secs: 30,
                clock_skew_secs: 30,
                eval_every: 0,
                cache_dir: PathBuf::from("/home/op/.tessera/slice-cache"),
            },
            data: DataConfig {
                source: DataSourceSpec::HuggingFace,
                dataset: None,
                synthetic_seed: 0,
                pages_per_window: None,
            },
            miners: Vec::new(),
        }
    }

    #[test]
    fn defaults_are_the_seeds() {
        assert_eq!(MinerConfig::load(&with_bucket()).unwrap(), defaults());
    }

    #[test]
    fn layers_take_precedence_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            DEFAULT_CONFIG_FILE,
            "actual_batch_size = 2\nnetuid = 20\n[wallet]\nname = \"from-default\"\n",
        );
        let file = write(dir.path(), "mine.toml", "actual_batch_size = 3\n[wallet]\nname = \"from-file\"\n");
        let mut s = ConfigSources {
            config_dir: Some(dir.path().to_owned()),
            config_file: Some(file),
            env: env(&[("TESSERA__ACTUAL_BATCH_SIZE", "4"), ("TESSERA__WALLET__NAME", "from-env")]),
            cli_overrides: cli(&[("bucket", "my-bucket"), ("actual_batch_size", "5"), ("wallet.name", "from-cli")]),
            ..sources()
        };
        let c = MinerConfig::load(&s).unwrap();
        assert_eq!((c.actual_batch_size, c.wallet.name.as_str(), c.netuid), (5, "from-cli", 20));
        s.cli_overrides = cli(&[("bucket", "my-bucket")]);
        let c = MinerConfig::load(&s).unwrap();
        assert_eq!((c.actual_batch_size, c.wallet.name.as_str()), (4, "from-env"));
        s.env = env(&[]);
        let c = MinerConfig::load(&s).unwrap();
        assert_eq!((c.actual_batch_size, c.wallet.name.as_str()), (3, "from-file"));
        s.config_file = None;
        let c = MinerConfig::load(&s).unwrap();
        assert_eq!((c.actual_batch_size, c.wallet.name.as_str()), (2, "from-default"));
        s.config_dir = None;
        let c = MinerConfig::load(&s).unwrap();
        assert_eq!((c.actual_batch_size, c.wallet.name.as_str(), c.netuid), (8, "default", 3));
        // A configuration directory without default.toml is no layer, not an error.
        s.config_dir = Some(dir.path().join("elsewhere"));
        assert_eq!(MinerConfig::load(&s).unwrap(), defaults());
    }

    #[test]
    fn environment_variable_spelling() {
        let s = ConfigSources {
            env: env(&[
                ("TESSERA__BUCKET", "env-bucket"),
                ("TESSERA__WALLET__NAME", "w1"),
                ("TESSERA__WALLET__HOTKEY", "h1"),
                ("TESSERA__SUBTENSOR__CHAIN_ENDPOINT", "ws://10.0.0.1:9944"),
                ("tessera__netuid", "223"),
                ("TESSERA__REMOTE", "true"),
                ("TESSERA__SYNC_STATE", "1"),
                ("TESSERA__DEVICE", "cuda:1"),
                // Not configuration: a single underscore, other prefixes, empty values.
                ("TESSERA_CONFIG_DIR", "/nowhere"),
                ("TESSERA_BUCKET", "ignored"),
                ("HOME", "/root"),
                ("TESSERA__PROJECT", ""),
            ]),
            ..sources()
        };
        let c = MinerConfig::load(&s).unwrap();
        assert_eq!(c.bucket.as_str(), "env-bucket");
        assert_eq!((c.wallet.name.as_str(), c.wallet.hotkey.as_str()), ("w1", "h1"));
        assert_eq!(c.subtensor.chain_endpoint, "ws://10.0.0.1:9944");
        assert_eq!(c.subtensor.network, Network::Finney);
        assert_eq!(c.netuid, 223);
        assert!(c.remote && c.sync_state && !c.debug);
        assert_eq!(c.device, Device::Cuda(1));
        assert_eq!(c.project, "templar", "an empty variable counts as unset");
    }

    #[test]
    fn unknown_keys_are_named_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "c.toml", "bucket = \"my-bucket\"\n[wallet]\nnmae = \"x\"\n");
        let text = err(&ConfigSources { config_file: Some(file.clone()), ..sources() });
        assert!(text.contains("unknown key \"wallet.nmae\""), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("did you mean \"wallet.name\""), "{text}");

        let text = err(&ConfigSources { env: env(&[("TESSERA__BUKCET", "x")]), ..with_bucket() });
        assert!(text.contains("unknown key \"bukcet\"") && text.contains("TESSERA__BUKCET"), "{text}");
        assert!(text.contains("did you mean \"bucket\""), "{text}");

        let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1"), ("frobnicate", "1")]), ..sources() });
        assert!(text.contains("unknown key \"frobnicate\"") && text.contains("--frobnicate"), "{text}");
        assert!(!text.contains("did you mean"), "{text}");

        // A whole unknown table, empty or not, and a kebab-case spelling.
        let file = write(dir.path(), "t.toml", "bucket = \"my-bucket\"\n[walet]\n");
        assert!(err(&ConfigSources { config_file: Some(file), ..sources() }).contains("unknown key \"walet\""));
        let file = write(dir.path(), "k.toml", "bucket = \"my-bucket\"\nactual-batch-size = 2\n");
        let text = err(&ConfigSources { config_file: Some(file), ..sources() });
        assert!(
            text.contains("\"actual-batch-size\"") && text.contains("did you mean \"actual_batch_size\""),
            "{text}"
        );

        // A section given a plain value.
        let text = err(&ConfigSources { env: env(&[("TESSERA__WALLET", "x")]), ..with_bucket() });
        assert!(text.contains("for wallet") && text.contains("wallet.name"), "{text}");
    }

    #[test]
    fn bad_values_name_key_value_expectation_and_layer() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            err(&ConfigSources { cli_overrides: cli(&[("bucket", "my-bucket"), ("netuid", "abc")]), ..sources() });
        assert_eq!(
            text,
            "invalid value \"abc\" for netuid (command-line flag --netuid): expected an integer 0..=65535"
        );
        let file = write(dir.path(), "n.toml", "netuid = 70000\n");
        let text = err(&ConfigSources { config_file: Some(file.clone()), ..with_bucket() });
        assert!(
            text.contains("invalid value 70000 for netuid") && text.contains(&file.display().to_string()),
            "{text}"
        );

        let text = err(&ConfigSources { env: env(&[("TESSERA__ACTUAL_BATCH_SIZE", "0")]), ..with_bucket() });
        assert!(text.contains("invalid value \"0\" for actual_batch_size"), "{text}");
        assert!(text.contains("environment variable TESSERA__ACTUAL_BATCH_SIZE"), "{text}");

        let cases: &[(&str, &str, &str)] = &[
            ("device = \"tpu\"", "for device", "\"cpu\", \"cuda\" or \"cuda:N\""),
            ("remote = \"maybe\"", "for remote", "a boolean"),
            ("remote = 1", "for remote", "a boolean"),
            ("project = 5", "for project", "project name"),
            ("actual_batch_size = 2.5", "for actual_batch_size", "an integer"),
            ("actual_batch_size = -1", "for actual_batch_size", "an integer"),
            ("[subtensor]\nnetwork = \"mainnet\"", "for subtensor.network", "\"finney\""),
            ("[subtensor]\nchain_endpoint = \"http://x:9944\"", "for subtensor.chain_endpoint", "ws://"),
            ("[wallet]\nname = \"a/b\"", "for wallet.name", "without '/'"),
            ("[wallet]\nhotkey = \"\"", "for wallet.hotkey", "non-empty"),
            ("hparams = \"ftp://x/h.json\"", "for hparams", "https://"),
            ("project = [\"a\"]", "for project", "project name"),
        ];
        for (toml, key, expected) in cases {
            let file = write(dir.path(), "case.toml", toml);
            let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
            assert!(text.contains(key) && text.contains(expected) && text.contains("case.toml"), "{toml}: {text}");
        }
    }

    #[test]
    fn bucket_names_follow_the_s3_rules() {
        for ok in ["abc", "my-bucket", "my.bucket.1", "0bucket9", &"a".repeat(63)] {
            assert!(BucketName::parse(ok).is_ok(), "{ok}");
        }
        let bad = [
            ("ab", BucketNameError::Length(2)),
            (&*"a".repeat(64), BucketNameError::Length(64)),
            ("My-bucket", BucketNameError::Char('M')),
            ("my_bucket", BucketNameError::Char('_')),
            ("-bucket", BucketNameError::Edge),
            ("bucket.", BucketNameError::Edge),
            ("my..bucket", BucketNameError::DoubleDot),
            ("192.168.1.1", BucketNameError::IpAddress),
        ];
        for (name, why) in bad {
            assert_eq!(BucketName::parse(name), Err(why), "{name}");
        }
        let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "Bad_Bucket")]), ..sources() });
        assert!(text.contains("invalid value \"Bad_Bucket\" for bucket (command-line flag --bucket)"), "{text}");
        assert!(text.contains("'B' is not allowed"), "{text}");
    }

    #[test]
    fn missing_bucket_says_how_to_set_it() {
        let e = MinerConfig::load(&sources()).unwrap_err();
        assert!(matches!(e, ConfigError::MissingBucket));
        let text = e.to_string();
        assert!(text.contains("--bucket NAME") && text.contains("TESSERA__BUCKET"), "{text}");
    }

    #[test]
    fn device_parsing() {
        assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
        assert_eq!(Device::parse("cuda"), Some(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Some(Device::Cuda(3)));
        assert_eq!(Device::parse("CUDA:1"), Some(Device::Cuda(1)));
        for bad in ["tpu", "cuda:", "cuda:-1", "cuda:x", "cuda:+1", "cuda:1:2", "", "cuda:99999999999"] {
            assert_eq!(Device::parse(bad), None, "{bad}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn test_and_local_force_their_network_and_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "n.toml",
            "[subtensor]\nnetwork = \"finney\"\nchain_endpoint = \"wss://mine.example:443\"\n",
        );
        let base = ConfigSources { config_file: Some(file), ..sources() };
        let c = MinerConfig::load(&ConfigSources {
            cli_overrides: cli(&[("bucket", "b-1"), ("test", "true")]),
            ..base.clone()
        })
        .unwrap();
        assert_eq!(c.subtensor, SubtensorConfig { network: Network::Test, chain_endpoint: TEST_ENDPOINT.into() });
        let c = MinerConfig::load(&ConfigSources {
            env: env(&[("TESSERA__LOCAL", "true")]),
            cli_overrides: cli(&[("bucket", "b-1")]),
            ..base.clone()
        })
        .unwrap();
        assert_eq!(c.subtensor, SubtensorConfig { network: Network::Local, chain_endpoint: LOCAL_ENDPOINT.into() });
        let c = MinerConfig::load(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1")]), ..base }).unwrap();
        assert_eq!(c.subtensor.chain_endpoint, "wss://mine.example:443", "an explicit endpoint wins without --test");
        let e = MinerConfig::load(&ConfigSources {
            cli_overrides: cli(&[("bucket", "b-1"), ("test", "true"), ("local", "true")]),
            ..sources()
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::TestAndLocal), "{e}");
    }

    #[test]
    fn network_names_and_urls_pick_the_endpoint() {
        let load = |net: &str| {
            MinerConfig::load(&ConfigSources {
                cli_overrides: cli(&[("bucket", "b-1"), ("subtensor.network", net)]),
                ..sources()
            })
            .unwrap()
            .subtensor
        };
        assert_eq!(load("test").chain_endpoint, TEST_ENDPOINT);
        assert_eq!(load("local").chain_endpoint, LOCAL_ENDPOINT);
        assert_eq!(load("finney").chain_endpoint, FINNEY_ENDPOINT);
        let custom = load("wss://node.example:9944");
        assert_eq!(custom.network, Network::Custom("wss://node.example:9944".into()));
        assert_eq!(custom.chain_endpoint, "wss://node.example:9944");
    }

    #[test]
    fn tilde_expansion() {
        let home = Path::new("/home/op");
        assert_eq!(expand_tilde("~", Some(home)).unwrap(), PathBuf::from("/home/op"));
        assert_eq!(expand_tilde("~/w/x", Some(home)).unwrap(), PathBuf::from("/home/op/w/x"));
        assert_eq!(expand_tilde("/abs/~", None).unwrap(), PathBuf::from("/abs/~"));
        assert_eq!(expand_tilde("rel/x", None).unwrap(), PathBuf::from("rel/x"));
        assert_eq!(expand_tilde("~/x", None), Err(TildeError::NoHome));
        assert_eq!(expand_tilde("~bob/x", Some(home)), Err(TildeError::OtherUser));

        let c = MinerConfig::load(&ConfigSources {
            cli_overrides: cli(&[
                ("bucket", "b-1"),
                ("wallet.path", "~/wallets"),
                ("checkpoint_path", "~/ckpt.bin"),
                ("hparams", "~/hp.json"),
            ]),
            ..sources()
        })
        .unwrap();
        assert_eq!(c.wallet.path, PathBuf::from("/home/op/wallets"));
        assert_eq!(c.checkpoint_path, Some(PathBuf::from("/home/op/ckpt.bin")));
        assert_eq!(c.hparams, HparamsSource::File(PathBuf::from("/home/op/hp.json")));

        // Without HOME, the defaults that start with ~ must be replaced, and the error says which.
        let no_home = ConfigSources { home: None, ..with_bucket() };
        let text = err(&no_home);
        assert!(
            text.contains("~ in") && text.contains("HOME is not set") && text.contains("built-in default"),
            "{text}"
        );
        let c = MinerConfig::load(&ConfigSources {
            cli_overrides: cli(&[("bucket", "b-1"), ("wallet.path", "/w"), ("state_dir", "/s")]),
            ..no_home
        })
        .unwrap();
        assert_eq!((c.wallet.path, c.state_dir), (PathBuf::from("/w"), PathBuf::from("/s")));

        let text =
            err(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1"), ("state_dir", "~bob/s")]), ..sources() });
        assert!(text.contains("for state_dir") && text.contains("~user"), "{text}");
    }

    #[test]
    fn config_file_must_exist_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let text = err(&ConfigSources { config_file: Some(missing.clone()), ..with_bucket() });
        assert!(text.contains(&missing.display().to_string()) && text.contains("does not exist"), "{text}");

        let broken = write(dir.path(), "broken.toml", "netuid = 3\nbucket = \n");
        let e = MinerConfig::load(&ConfigSources { config_file: Some(broken), ..with_bucket() }).unwrap_err();
        assert!(matches!(e, ConfigError::FileParse { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("broken.toml") && text.contains("line 2"), "{text}");
    }

    #[test]
    fn secrets_are_redacted_anywhere_in_the_tree() {
        let mut tree: toml::Value = toml::from_str(
            r#"
            bucket = "b"
            max_tokens = 3
            [s3]
            access_key_id = "AKIA"
            secret_access_key = "s3cr3t"
            endpoint = "https://s3.example"
            [wandb]
            api-key = "k"
            [[peers]]
            name = "p"
            password = "pw"
            "#,
        )
        .unwrap();
        redact_secrets(&mut tree);
        let t = &tree;
        assert_eq!(t["s3"]["access_key_id"].as_str(), Some(REDACTED));
        assert_eq!(t["s3"]["secret_access_key"].as_str(), Some(REDACTED));
        assert_eq!(t["s3"]["endpoint"].as_str(), Some("https://s3.example"));
        assert_eq!(t["wandb"]["api-key"].as_str(), Some(REDACTED));
        assert_eq!(t["peers"][0]["password"].as_str(), Some(REDACTED));
        assert_eq!(t["peers"][0]["name"].as_str(), Some("p"));
        assert_eq!(t["bucket"].as_str(), Some("b"));
        // "token" marks a secret even in a harmless name: redaction errs on the safe side.
        assert_eq!(t["max_tokens"].as_str(), Some(REDACTED));
        let printed = toml::to_string(&tree).unwrap();
        assert!(!printed.contains("s3cr3t") && !printed.contains("AKIA") && !printed.contains("pw\""), "{printed}");
    }

    /// Every `[[miners]]` key but the S3 keys and token in the first entry (printed, those
    /// are placeholders that cannot be read back), a few in the second.
    const EVERY_MINER_KEY: &str = r#"
[[miners]]
name = "alpha"
bucket = "alpha-bucket"
device = "cuda:0"
actual_batch_size = 4
checkpoint_path = "/ckpt/alpha.bin"
baseline = false
random = true
[miners.wallet]
name = "cold-a"
hotkey = "hot-a"
path = "/wallets-a"
[miners.s3]
endpoint = "https://alpha.s3.example.com"
region = "eu-west-1"
profile = "alpha"

[[miners]]
bucket = "beta-bucket"
device = "cuda:1"
[miners.wallet]
hotkey = "hot-b"
"#;

    fn every_key_set(dir: &Path) -> ConfigSources {
        ConfigSources {
            config_file: Some(write(dir, "miners.toml", EVERY_MINER_KEY)),
            cli_overrides: cli(&[
                ("actual_batch_size", "2"),
                ("wallet.name", "w"),
                ("wallet.hotkey", "h"),
                ("wallet.path", "/wallets"),
                ("bucket", "my-bucket"),
                ("device", "cuda:1"),
                ("use_wandb", "true"),
                ("project", "p"),
                ("netuid", "223"),
                ("remote", "true"),
                ("sync_state", "true"),
                ("debug", "true"),
                ("trace", "true"),
                ("random", "true"),
                ("baseline", "true"),
                ("test", "false"),
                ("local", "false"),
                ("autoupdate", "true"),
                ("subtensor.network", "local"),
                ("subtensor.chain_endpoint", "ws://10.1.1.1:9944"),
                ("checkpoint_path", "/ckpt.bin"),
                ("process_name", "Miner1"),
                ("hparams", "https://example.com/hparams.json"),
                ("state_dir", "/state"),
                ("s3.endpoint", "https://s3.example.com:8443"),
                ("s3.region", "eu-central-003"),
                ("s3.profile", "miner"),
                ("runtime.checkpoint_every", "5"),
                ("runtime.download_concurrency", "4"),
                ("runtime.peer_deadline_secs", "20"),
                ("runtime.progress_timeout_secs", "5"),
                ("runtime.peer_failures_before_skip", "2"),
                ("runtime.peer_skip_secs", "120"),
                ("runtime.refresh_secs", "30"),
                ("runtime.max_restarts", "7"),
                ("runtime.restart_period_secs", "600"),
                ("runtime.restart_backoff_ms", "250"),
                ("runtime.restart_backoff_max_ms", "8000"),
                ("runtime.shutdown_timeout_secs", "15"),
                ("runtime.clock_skew_secs", "0"),
                ("runtime.cache_dir", "/cache"),
                ("data.source", "/data/shards"),
                ("data.dataset", "owner/corpus"),
                ("data.synthetic_seed", "42"),
                ("data.pages_per_window", "3"),
            ]),
            // The seed has no S3 flags: keys come from a file or, as here, the environment.
            env: env(S3_KEYS_ENV),
            ..sources()
        }
    }

    const S3_KEYS_ENV: &[(&str, &str)] = &[
        ("TESSERA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEID"),
        ("TESSERA__S3__SECRET_ACCESS_KEY", "wJalrXUtnFEMIsecretEXAMPLEKEY"),
        ("TESSERA__S3__SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLEtoken"),
    ];

    fn leaf_keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if v.is_table() { leaf_keys(&key, v, out) } else { out.push(key) }
            }
        }
    }

    #[test]
    fn effective_toml_lists_every_key_and_reads_back_as_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = MinerConfig::load(&every_key_set(dir.path())).unwrap();
        let text = c.effective_toml();
        let tree: toml::Value = toml::from_str(&text).unwrap();
        let mut keys = Vec::new();
        leaf_keys("", &tree, &mut keys);
        keys.sort();
        assert_eq!(keys, KEYS, "KEYS, the loader and the printed configuration must agree");
        assert!(text.contains("device = \"cuda:1\"") && text.contains("netuid = 223"), "{text}");
        assert!(text.contains("[[miners]]") && text.contains("source = \"/data/shards\""), "{text}");
        let mut keys = Vec::new();
        leaf_keys("", &tree["miners"][0], &mut keys);
        keys.sort();
        let secrets = ["s3.access_key_id", "s3.secret_access_key", "s3.session_token"];
        let expected: Vec<&str> = MINER_KEYS.iter().copied().filter(|k| !secrets.contains(k)).collect();
        assert_eq!(keys, expected, "MINER_KEYS, the loader and the printed [[miners]] must agree");

        for (_, secret) in S3_KEYS_ENV {
            assert!(!text.contains(secret), "{text}");
        }

        // Printed secrets are placeholders: read back alone they are refused, and with the
        // real keys in the environment the file gives the same configuration again.
        let file = write(dir.path(), "effective.toml", &text);
        let text = err(&ConfigSources { config_file: Some(file.clone()), ..sources() });
        assert!(text.contains("for s3.") && text.contains("placeholder"), "{text}");
        let again =
            MinerConfig::load(&ConfigSources { config_file: Some(file), env: env(S3_KEYS_ENV), ..sources() }).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn hparams_settings_need_no_bucket() {
        let s = ConfigSources {
            cli_overrides: cli(&[("hparams", "https://h.example/hp.json"), ("state_dir", "~/st")]),
            ..sources()
        };
        let h = HparamsSettings::load(&s).unwrap();
        assert!(matches!(h.source, HparamsSource::Url(ref u) if u.as_str() == "https://h.example/hp.json"));
        assert_eq!(h.cache_path, PathBuf::from("/home/op/st/hparams-cache.json"));
        let h = HparamsSettings::load(&sources()).unwrap();
        assert_eq!(
            h,
            HparamsSettings {
                source: HparamsSource::BuiltIn,
                cache_path: PathBuf::from("/home/op/.tessera/hparams-cache.json")
            }
        );
        // The rest of the configuration is still checked.
        let text = HparamsSettings::load(&ConfigSources { cli_overrides: cli(&[("netuid", "x")]), ..sources() })
            .unwrap_err()
            .to_string();
        assert!(text.contains("for netuid"), "{text}");
        let c = MinerConfig::load(&with_bucket()).unwrap();
        assert_eq!(c.hparams_settings(), HparamsSettings::load(&sources()).unwrap());
    }

    /// `config/default.toml` documents every default: as shipped (all commented) it changes
    /// nothing, and with every setting uncommented it still gives the built-in defaults.
    #[test]
    fn shipped_default_toml_documents_the_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let shipped = std::fs::read_to_string(dir.join(DEFAULT_CONFIG_FILE)).unwrap();
        let c = MinerConfig::load(&ConfigSources { config_dir: Some(dir.clone()), ..with_bucket() }).unwrap();
        assert_eq!(c, defaults());

        let uncommented: String = shipped
            .lines()
            .map(|l| if l.starts_with("# ") && !l.starts_with("## ") { &l[2..] } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), DEFAULT_CONFIG_FILE, &uncommented);
        let c = MinerConfig::load(&ConfigSources { config_dir: Some(tmp.path().to_owned()), ..with_bucket() }).unwrap();
        let mut expected = defaults();
        expected.bucket = c.bucket.clone();
        assert_eq!(c, expected, "uncommented default.toml:\n{uncommented}");
        let tree: toml::Value = toml::from_str(&uncommented).unwrap();
        let mut keys = Vec::new();
        leaf_keys("", &tree, &mut keys);
        keys.sort();
        // Keys without a default are documented as examples ("## key = …").
        let examples = [
            "bucket",
            "checkpoint_path",
            "data.dataset",
            "data.pages_per_window",
            "miners",
            "runtime.cache_dir",
            "process_name",
            "s3.access_key_id",
            "s3.endpoint",
            "s3.profile",
            "s3.secret_access_key",
            "s3.session_token",
            "subtensor.chain_endpoint",
        ];
        let documented: Vec<&str> = KEYS.iter().copied().filter(|k| !examples.contains(k)).collect();
        assert_eq!(keys, documented, "default.toml shows every key with a default");
        for key in examples {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let shown = if key == "miners" { "\n## [[miners]]\n".to_owned() } else { format!("\n## {leaf} = ") };
            assert!(shipped.contains(&shown), "{key} is documented");
        }

        // The [[miners]] example, at the end of the file, is a working configuration.
        let example = &shipped[shipped.find("\n## [[miners]]\n").unwrap()..];
        let example: String =
            example.lines().map(|l| l.strip_prefix("##").unwrap_or(l).trim_start()).collect::<Vec<_>>().join("\n");
        let file = write(tmp.path(), "example.toml", &example);
        let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..sources() }).unwrap();
        let instances = c.instances();
        assert_eq!(instances.len(), 2, "{example}");
        assert_eq!(
            instances.iter().map(|i| i.config.device).collect::<Vec<_>>(),
            [Device::Cuda(0), Device::Cuda(1)],
            "{example}"
        );
        assert!(instances.iter().all(|i| i.config.runtime.cache_dir == c.runtime.cache_dir), "{example}");
    }

    fn s3_of(s: &ConfigSources) -> S3Config {
        MinerConfig::load(s).unwrap().s3
    }

    fn with_bucket_and(pairs: &[(&str, &str)]) -> ConfigSources {
        ConfigSources { env: env(pairs), ..with_bucket() }
    }

    #[test]
    fn s3_defaults_are_aws_in_us_east_1_with_the_usual_credentials() {
        let s3 = s3_of(&with_bucket());
        assert_eq!(s3, S3Config::default());
        assert_eq!((s3.endpoint.as_ref(), s3.region.as_str()), (None, "us-east-1"));
        assert_eq!(s3.credentials(), CredentialSource::Environment { profile: None });
        let text = MinerConfig::load(&with_bucket()).unwrap().effective_toml();
        let tree: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            tree["s3"].as_table().map(|t| t.keys().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["region"]),
            "{text}"
        );
    }

    #[test]
    fn s3_settings_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "s3.toml",
            "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"garage\"\nprofile = \"tessera\"\n",
        );
        let s3 = s3_of(&ConfigSources { config_file: Some(file.clone()), ..with_bucket() });
        assert_eq!(s3.endpoint.as_ref().map(url::Url::as_str), Some("http://127.0.0.1:9000/"));
        assert_eq!((s3.region.as_str(), s3.profile.as_deref()), ("garage", Some("tessera")));
        assert_eq!(s3.credentials(), CredentialSource::Environment { profile: Some("tessera".into()) });

        let s3 = s3_of(&ConfigSources {
            config_file: Some(file),
            env: env(&[
                ("TESSERA__S3__ENDPOINT", "https://s3.example.com:8443/"),
                ("TESSERA__S3__REGION", "auto"),
                ("TESSERA__S3__ACCESS_KEY_ID", "AKID"),
                ("TESSERA__S3__SECRET_ACCESS_KEY", "s3cr3t"),
                ("tessera__s3__session_token", "tok"),
                ("TESSERA__S3__PROFILE", ""),
            ]),
            ..with_bucket()
        });
        assert_eq!(s3.endpoint.as_ref().map(url::Url::as_str), Some("https://s3.example.com:8443/"));
        assert_eq!(s3.region, "auto", "the environment beats the file");
        assert_eq!(s3.profile.as_deref(), Some("tessera"), "an empty variable counts as unset");
        assert_eq!(
            s3.credentials(),
            CredentialSource::Static(AccessKeys {
                access_key: "AKID".into(),
                secret_key: "s3cr3t".into(),
                session_token: Some("tok".into()),
            })
        );

        for ok in ["https://S3.Example.com", "http://[::1]:9000", "https://10.0.0.1:443/", " https://s3.example.com "] {
            assert!(s3_of(&with_bucket_and(&[("TESSERA__S3__ENDPOINT", ok)])).endpoint.is_some(), "{ok}");
        }
    }

    #[test]
    fn s3_endpoint_errors_name_the_key_the_value_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("s3.example.com", "not a URL"),
            ("ftp://s3.example.com", "the scheme is \"ftp\""),
            ("s3://my-bucket", "the scheme is \"s3\""),
            ("https://", "not a URL"),
            ("https://s3.example.com/my-bucket", "the path \"/my-bucket\""),
            ("https://s3.example.com//", "the path \"//\""),
            ("https://s3.example.com?x-id=1", "query or fragment"),
            ("https://s3.example.com/#top", "query or fragment"),
            ("https://AKID@s3.example.com", "user name or password"),
            ("https://s3.exa\tmple.com", "contains '\\t'"),
        ];
        for (value, why) in cases {
            let text = err(&with_bucket_and(&[("TESSERA__S3__ENDPOINT", value)]));
            assert!(text.starts_with(&format!("invalid value {value:?} for s3.endpoint")), "{value}: {text}");
            assert!(text.contains("environment variable TESSERA__S3__ENDPOINT"), "{value}: {text}");
            assert!(text.contains("http:// or https:// URL") && text.contains(why), "{value}: {text}");
        }
        // A password in the URL is not repeated in the message.
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "e.toml", "[s3]\nendpoint = \"https://AKID:hunter2@s3.example.com\"\n");
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.contains("\"https://AKID:<redacted>@s3.example.com\" for s3.endpoint"), "{text}");
        assert!(text.contains("e.toml") && !text.contains("hunter2"), "{text}");
    }

    #[test]
    fn s3_region_and_profile_errors_name_the_key_and_value() {
        for bad in ["us east 1", "US-EAST-1", "eu_west_1", "région", &"a".repeat(65)] {
            let text = err(&with_bucket_and(&[("TESSERA__S3__REGION", bad)]));
            assert!(text.starts_with(&format!("invalid value {bad:?} for s3.region")), "{text}");
            assert!(text.contains("TESSERA__S3__REGION") && text.contains("a region name"), "{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "r.toml", "[s3]\nregion = \"\"\n");
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.starts_with("invalid value \"\" for s3.region") && text.contains("r.toml"), "{text}");
        let file = write(dir.path(), "p.toml", "[s3]\nprofile = 7\n");
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.starts_with("invalid value 7 for s3.profile") && text.contains("profile name"), "{text}");

        // A section given a plain value, and a typo in the section.
        let text = err(&with_bucket_and(&[("TESSERA__S3", "x")]));
        assert!(text.contains("for s3") && text.contains("s3.endpoint, s3.profile"), "{text}");
        let text = err(&with_bucket_and(&[("TESSERA__S3__ENDPIONT", "https://s3.example.com")]));
        assert!(
            text.contains("unknown key \"s3.endpiont\"") && text.contains("did you mean \"s3.endpoint\""),
            "{text}"
        );
    }

    #[test]
    fn s3_keys_must_be_given_together() {
        let text = err(&with_bucket_and(&[("TESSERA__S3__ACCESS_KEY_ID", "AKID")]));
        assert!(
            text.starts_with("s3.access_key_id is set (environment variable TESSERA__S3__ACCESS_KEY_ID)"),
            "{text}"
        );
        assert!(text.contains("but s3.secret_access_key is not") && text.contains("must be given together"), "{text}");
        assert!(!text.contains("AKID"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "k.toml", "[s3]\nsecret_access_key = \"s3cr3t\"\n");
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.starts_with("s3.secret_access_key is set (config file") && text.contains("k.toml"), "{text}");
        assert!(text.contains("but s3.access_key_id is not") && text.contains("must be given together"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");

        // A session token needs both keys.
        let e = MinerConfig::load(&with_bucket_and(&[("TESSERA__S3__SESSION_TOKEN", "tok")])).unwrap_err();
        assert!(matches!(e, ConfigError::S3TokenWithoutKeys { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("s3.session_token is set (environment variable TESSERA__S3__SESSION_TOKEN)"),
            "{text}"
        );
        assert!(
            text.contains("without s3.access_key_id and s3.secret_access_key") && !text.contains("tok\""),
            "{text}"
        );
        let e = MinerConfig::load(&with_bucket_and(&[
            ("TESSERA__S3__SESSION_TOKEN", "tok"),
            ("TESSERA__S3__ACCESS_KEY_ID", "AKID"),
        ]))
        .unwrap_err();
        assert!(matches!(e, ConfigError::S3UnpairedKey { given: "s3.access_key_id", .. }), "{e}");

        let s3 = s3_of(&with_bucket_and(&[
            ("TESSERA__S3__ACCESS_KEY_ID", "AKID"),
            ("TESSERA__S3__SECRET_ACCESS_KEY", "s3cr3t"),
            ("TESSERA__S3__PROFILE", "unused"),
        ]));
        assert_eq!(s3.credentials(), CredentialSource::Static(AccessKeys::new("AKID", "s3cr3t")));
    }

    #[test]
    fn s3_secrets_are_redacted_in_effective_toml_debug_and_errors() {
        let s = with_bucket_and(&[
            ("TESSERA__S3__ENDPOINT", "https://s3.example.com"),
            ("TESSERA__S3__REGION", "eu-west-1"),
            ("TESSERA__S3__PROFILE", "miner"),
            ("TESSERA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEID"),
            ("TESSERA__S3__SECRET_ACCESS_KEY", "wJalrXUtnFEMIsecret"),
            ("TESSERA__S3__SESSION_TOKEN", "FwoGZXIvtoken"),
        ]);
        let c = MinerConfig::load(&s).unwrap();
        let text = c.effective_toml();
        let tree: toml::Value = toml::from_str(&text).unwrap();
        let s3 = &tree["s3"];
        for key in ["access_key_id", "secret_access_key", "session_token"] {
            assert_eq!(s3[key].as_str(), Some(REDACTED), "{key}: {text}");
        }
        assert_eq!(s3["endpoint"].as_str(), Some("https://s3.example.com/"));
        assert_eq!(s3["region"].as_str(), Some("eu-west-1"));
        assert_eq!(s3["profile"].as_str(), Some("miner"));
        let debug = format!("{c:?}");
        for shown in [&text, &debug] {
            for secret in ["AKIAEXAMPLEID", "wJalrXUtnFEMIsecret", "FwoGZXIvtoken"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        assert!(debug.contains("https://s3.example.com/") && debug.contains(REDACTED), "{debug}");

        // Values of secret keys are not repeated in errors either.
        let text = err(&with_bucket_and(&[
            ("TESSERA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEID"),
            ("TESSERA__S3__SECRET_ACCESS_KEY", "wJalrXUtn secret"),
        ]));
        assert_eq!(
            text,
            "invalid value <redacted> for s3.secret_access_key (environment variable \
             TESSERA__S3__SECRET_ACCESS_KEY): expected a secret access key without spaces"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "t.toml", "[s3]\nsession_token = 12345\n");
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.starts_with("invalid value <redacted> for s3.session_token") && !text.contains("12345"), "{text}");
    }

    #[test]
    fn runtime_and_data_defaults_helpers_and_spellings() {
        let c = MinerConfig::load(&with_bucket()).unwrap();
        let rt = &c.runtime;
        assert_eq!(*rt, RuntimeConfig::defaults(PathBuf::from("/home/op/.tessera/slice-cache")));
        assert_eq!(c.data, DataConfig::default());
        assert_eq!(
            (rt.peer_deadline(), rt.progress_timeout(), rt.peer_skip(), rt.refresh_period()),
            (Duration::from_secs(30), Duration::from_secs(10), Duration::from_secs(300), Duration::from_secs(60))
        );
        assert_eq!((rt.restart_period(), rt.shutdown_timeout()), (Duration::from_secs(300), Duration::from_secs(30)));
        assert_eq!(rt.clock_skew(), Duration::from_secs(30));
        assert_eq!(
            (rt.restart_backoff(), rt.restart_backoff_max()),
            (Duration::from_millis(500), Duration::from_secs(30))
        );
        let delays: Vec<u128> =
            [0, 1, 2, 5, 6, 63, 64, u32::MAX].iter().map(|n| rt.restart_delay(*n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 16_000, 30_000, 30_000, 30_000, 30_000]);

        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "rt.toml",
            "state_dir = \"/st\"\n[runtime]\ncheckpoint_every = 3\nclock_skew_secs = 0\n\
             [data]\nsource = \"Synthetic\"\nsynthetic_seed = 7\npages_per_window = 2\n",
        );
        let c = MinerConfig::load(&ConfigSources {
            config_file: Some(file),
            env: env(&[("TESSERA__RUNTIME__DOWNLOAD_CONCURRENCY", "2"), ("tessera__data__dataset", "me/text")]),
            ..with_bucket()
        })
        .unwrap();
        assert_eq!((c.runtime.checkpoint_every, c.runtime.clock_skew_secs, c.runtime.download_concurrency), (3, 0, 2));
        assert_eq!(c.runtime.cache_dir, PathBuf::from("/st/slice-cache"), "the cache follows state_dir");
        assert_eq!(
            c.data,
            DataConfig {
                source: DataSourceSpec::Synthetic,
                dataset: Some("me/text".into()),
                synthetic_seed: 7,
                pages_per_window: Some(2)
            }
        );
        let c = MinerConfig::load(&with_bucket_and(&[
            ("TESSERA__RUNTIME__CACHE_DIR", "~/cache"),
            ("TESSERA__DATA__SOURCE", "~/shards"),
        ]))
        .unwrap();
        assert_eq!(c.runtime.cache_dir, PathBuf::from("/home/op/cache"));
        assert_eq!(c.data.source, DataSourceSpec::Local(PathBuf::from("/home/op/shards")));
        assert_eq!(DataSourceSpec::parse(" HuggingFace "), Some(DataSourceSpec::HuggingFace));
        assert_eq!(DataSourceSpec::parse("  "), None);
        // A relative path spelled like a keyword is printed so that it reads back as a path.
        let odd = DataSourceSpec::Local(PathBuf::from("synthetic"));
        assert_eq!(odd.to_string(), "./synthetic");
        assert!(matches!(DataSourceSpec::parse(&odd.to_string()), Some(DataSourceSpec::Local(_))));
    }

    #[test]
    fn runtime_and_data_errors_name_key_value_expectation_and_layer() {
        let seconds = format!("a number of seconds, an integer 1..={}", i64::MAX);
        let cases: &[(&str, &str, &str)] = &[
            ("TESSERA__RUNTIME__CHECKPOINT_EVERY", "0", "a number of windows, an integer 1..=9223372036854775807"),
            ("TESSERA__RUNTIME__DOWNLOAD_CONCURRENCY", "0", "an integer 1..=4294967295"),
            ("TESSERA__RUNTIME__DOWNLOAD_CONCURRENCY", "4294967296", "an integer 1..=4294967295"),
            ("TESSERA__RUNTIME__PEER_DEADLINE_SECS", "0", &seconds),
            ("TESSERA__RUNTIME__PROGRESS_TIMEOUT_SECS", "-1", &seconds),
            ("TESSERA__RUNTIME__PEER_FAILURES_BEFORE_SKIP", "0", "an integer 1..=4294967295"),
            ("TESSERA__RUNTIME__PEER_SKIP_SECS", "x", &seconds),
            ("TESSERA__RUNTIME__REFRESH_SECS", "0", &seconds),
            ("TESSERA__RUNTIME__MAX_RESTARTS", "0", "an integer 1..=4294967295"),
            ("TESSERA__RUNTIME__RESTART_PERIOD_SECS", "0", &seconds),
            ("TESSERA__RUNTIME__RESTART_BACKOFF_MS", "0", "a number of milliseconds, an integer 1..="),
            ("TESSERA__RUNTIME__RESTART_BACKOFF_MAX_MS", "0", "a number of milliseconds, an integer 1..="),
            ("TESSERA__RUNTIME__SHUTDOWN_TIMEOUT_SECS", "0", &seconds),
            ("TESSERA__RUNTIME__SHUTDOWN_TIMEOUT_SECS", "9223372036854775808", &seconds),
            ("TESSERA__RUNTIME__CLOCK_SKEW_SECS", "-5", "a number of seconds, an integer 0..=9223372036854775807"),
            ("TESSERA__DATA__SYNTHETIC_SEED", "-1", "a seed, an integer 0..="),
            ("TESSERA__DATA__PAGES_PER_WINDOW", "0", "an integer 1..=4294967295"),
            ("TESSERA__DATA__DATASET", "a b", "a Hugging Face dataset name without spaces"),
        ];
        for (var, value, expected) in cases {
            let key = var.trim_start_matches("TESSERA__").to_ascii_lowercase().replace("__", ".");
            let text = err(&with_bucket_and(&[(var, value)]));
            assert_eq!(
                text.split(": expected ").next().unwrap(),
                format!("invalid value {value:?} for {key} (environment variable {var})"),
                "{text}"
            );
            assert!(text.contains(expected), "{var}={value}: {text}");
        }

        let dir = tempfile::tempdir().unwrap();
        let file_cases: &[(&str, &str, &str)] = &[
            ("[runtime]\ncheckpoint_every = 1.5", "invalid value 1.5 for runtime.checkpoint_every", "an integer"),
            ("[runtime]\ncache_dir = \"\"", "invalid value \"\" for runtime.cache_dir", "a non-empty path"),
            ("[runtime]\ncache_dir = \"~bob/c\"", "invalid value \"~bob/c\" for runtime.cache_dir", "~user"),
            (
                "[data]\nsource = \"\"",
                "invalid value \"\" for data.source",
                "\"huggingface\", \"synthetic\" or the path",
            ),
            ("[data]\nsource = 3", "invalid value 3 for data.source", "jsonl/txt/parquet"),
            ("runtime = 3", "invalid value 3 for runtime", "a table with keys runtime.cache_dir, "),
            ("[data]\nsorce = \"synthetic\"", "unknown key \"data.sorce\"", "did you mean \"data.source\""),
            (
                "[runtime]\nrefresh_sec = 3",
                "unknown key \"runtime.refresh_sec\"",
                "did you mean \"runtime.refresh_secs\"",
            ),
        ];
        for (toml, start, expected) in file_cases {
            let file = write(dir.path(), "case.toml", toml);
            let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
            assert!(text.starts_with(start) && text.contains(expected) && text.contains("case.toml"), "{toml}: {text}");
        }
    }

    #[test]
    fn restart_backoff_max_is_at_least_the_first_delay() {
        let c = MinerConfig::load(&with_bucket_and(&[
            ("TESSERA__RUNTIME__RESTART_BACKOFF_MS", "700"),
            ("TESSERA__RUNTIME__RESTART_BACKOFF_MAX_MS", "700"),
        ]))
        .unwrap();
        assert_eq!(c.runtime.restart_delay(3), Duration::from_millis(700));
        let text = err(&with_bucket_and(&[("TESSERA__RUNTIME__RESTART_BACKOFF_MS", "60000")]));
        assert_eq!(
            text,
            "invalid value 30000 for runtime.restart_backoff_max_ms (built-in default): expected a number of \
             milliseconds at least runtime.restart_backoff_ms (60000, environment variable \
             TESSERA__RUNTIME__RESTART_BACKOFF_MS)"
        );
    }

    /// Two miners on two GPUs, sharing the top-level settings and the slice cache.
    const TWO_MINERS: &str = r#"
state_dir = "~/st"
bucket = "shared-bucket"
actual_batch_size = 6
checkpoint_path = "/ckpt/top.bin"
[wallet]
name = "cold"
[s3]
endpoint = "https://s3.example.com"
access_key_id = "AKIATOP"
secret_access_key = "top-secret"

[[miners]]
name = "gpu0"
device = "cuda:0"
[miners.wallet]
hotkey = "h0"

[[miners]]
device = "cuda:1"
bucket = "other-bucket"
actual_batch_size = 2
checkpoint_path = "~/ckpt/h1.bin"
random = true
[miners.wallet]
hotkey = "h1"
path = "~/w1"
[miners.s3]
region = "eu-west-1"
access_key_id = "AKIAONE"
secret_access_key = "one-secret"
"#;

    #[test]
    fn two_miners_make_two_instances_sharing_the_slice_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "two.toml", TWO_MINERS);
        let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..sources() }).unwrap();
        assert_eq!(c.miners.len(), 2);
        assert_eq!(c.miners[1].wallet.path, Some(PathBuf::from("/home/op/w1")), "entry paths are ~-expanded");
        let [a, b] = <[MinerInstance; 2]>::try_from(c.instances()).unwrap();
        assert_eq!((a.name.as_str(), b.name.as_str()), ("gpu0", "h1"), "the name defaults to the hotkey");
        assert_eq!(a.state_dir, PathBuf::from("/home/op/st/miners/gpu0"));
        assert_eq!(b.state_dir, PathBuf::from("/home/op/st/miners/h1"));
        assert_eq!((&a.config.state_dir, &b.config.state_dir), (&a.state_dir, &b.state_dir));
        for i in [&a, &b] {
            assert_eq!(i.config.runtime.cache_dir, PathBuf::from("/home/op/st/slice-cache"), "one shared cache");
            assert!(i.config.miners.is_empty());
            assert_eq!(i.config.wallet.name, "cold");
        }

        let top = MinerConfig { miners: Vec::new(), ..c.clone() };
        let mut expected = top.clone();
        expected.wallet.hotkey = "h0".into();
        expected.device = Device::Cuda(0);
        expected.state_dir = a.state_dir.clone();
        assert_eq!(a.config, expected, "the first entry changes only its keys");

        assert_eq!(b.config.device, Device::Cuda(1));
        assert_eq!((b.config.bucket.as_str(), b.config.actual_batch_size), ("other-bucket", 2));
        assert_eq!(b.config.checkpoint_path, Some(PathBuf::from("/home/op/ckpt/h1.bin")));
        assert_eq!(a.config.checkpoint_path, Some(PathBuf::from("/ckpt/top.bin")));
        assert!(b.config.random && !a.config.random);
        assert_eq!(b.config.wallet.path, PathBuf::from("/home/op/w1"));
        assert_eq!(
            b.config.s3,
            S3Config {
                endpoint: top.s3.endpoint.clone(),
                region: "eu-west-1".into(),
                access_key_id: Some("AKIAONE".into()),
                secret_access_key: Some("one-secret".into()),
                session_token: None,
                profile: None,
            },
            "the entry's [s3] keys override the top-level ones key by key"
        );
        assert_eq!(a.config.s3, top.s3);

        // Printed, the entries are [[miners]] tables with their secrets hidden, and read back
        // (with the secrets put back) they give the same configuration.
        let text = c.effective_toml();
        for secret in ["AKIATOP", "top-secret", "AKIAONE", "one-secret"] {
            assert!(!text.contains(secret), "{text}");
        }
        let debug = format!("{c:?}");
        assert!(!debug.contains("one-secret") && !debug.contains("AKIAONE"), "{debug}");
        let tree: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(tree["miners"][1]["s3"]["secret_access_key"].as_str(), Some(REDACTED), "{text}");
        assert_eq!(tree["miners"][0]["name"].as_str(), Some("gpu0"), "{text}");
        let printed = write(dir.path(), "printed.toml", &text);
        let e = err(&ConfigSources { config_file: Some(printed), ..sources() });
        assert!(
            e.starts_with("invalid value <redacted> for miners[1].s3.access_key_id") && e.contains("placeholder"),
            "{e}"
        );
        let mut tree = tree;
        for (table, id, secret) in [("miners", "AKIAONE", "one-secret"), ("s3", "AKIATOP", "top-secret")] {
            let s3 = if table == "miners" { &mut tree["miners"][1]["s3"] } else { &mut tree["s3"] };
            s3["access_key_id"] = toml::Value::String(id.into());
            s3["secret_access_key"] = toml::Value::String(secret.into());
        }
        let restored = toml::to_string(&tree).unwrap();
        let restored = write(dir.path(), "restored.toml", &restored);
        let again = MinerConfig::load(&ConfigSources { config_file: Some(restored), ..sources() }).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn without_miners_one_instance_is_the_configuration() {
        let c = MinerConfig::load(&with_bucket()).unwrap();
        assert_eq!(
            c.instances(),
            [MinerInstance { name: "default".into(), config: c.clone(), state_dir: c.state_dir.clone() }]
        );
        assert!(!c.effective_toml().contains("miners"), "{}", c.effective_toml());
        // An empty array is no entries.
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "none.toml", "miners = []\n");
        assert_eq!(MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() }).unwrap(), c);
    }

    #[test]
    fn miners_may_each_set_the_bucket_instead_of_the_top_level() {
        let dir = tempfile::tempdir().unwrap();
        let both = "[[miners]]\nbucket = \"bucket-a\"\nwallet.hotkey = \"a\"\n\
                    [[miners]]\nbucket = \"bucket-b\"\nwallet.hotkey = \"b\"\n";
        let file = write(dir.path(), "both.toml", both);
        let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..sources() }).unwrap();
        assert_eq!(c.bucket.as_str(), "bucket-a", "the first entry's stands in for the top level");
        let buckets: Vec<String> = c.instances().iter().map(|i| i.config.bucket.to_string()).collect();
        assert_eq!(buckets, ["bucket-a", "bucket-b"]);

        let one = "[[miners]]\nbucket = \"bucket-a\"\nwallet.hotkey = \"a\"\n[[miners]]\nwallet.hotkey = \"b\"\n";
        let file = write(dir.path(), "one.toml", one);
        let e = MinerConfig::load(&ConfigSources { config_file: Some(file.clone()), ..sources() }).unwrap_err();
        assert!(matches!(e, ConfigError::MinerWithoutBucket { index: 1, .. }), "{e}");
        let text = e.to_string();
        assert!(text.starts_with("miners[1] (config file ") && text.contains("one.toml"), "{text}");
        assert!(text.contains("sets no bucket and there is no top-level bucket"), "{text}");
        // With a top-level bucket, an entry without one uses it.
        let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() }).unwrap();
        assert_eq!(c.instances()[1].config.bucket.as_str(), "my-bucket");
    }

    #[test]
    fn miners_must_not_share_a_name_a_wallet_or_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let load = |toml: &str| {
            let file = write(dir.path(), "dup.toml", toml);
            MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() })
        };
        let text =
            load("[[miners]]\nname = \"m\"\nwallet.hotkey = \"a\"\n[[miners]]\nname = \"M\"\nwallet.hotkey = \"b\"\n")
                .unwrap_err()
                .to_string();
        assert!(text.starts_with("miners[0] and miners[1] (config file ") && text.contains("dup.toml"), "{text}");
        assert!(text.contains("have the same name \"M\": each miner of a process needs its own"), "{text}");

        let text = load(
            "[[miners]]\nname = \"a\"\nwallet.hotkey = \"h\"\n[[miners]]\nname = \"b\"\n\
             [[miners]]\nname = \"c\"\nwallet.hotkey = \"h\"\nwallet.path = \"~/.bittensor/wallets\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.starts_with("miners[0] and miners[2]")
                && text.contains("same wallet (name \"default\", hotkey \"h\", path /home/op/.bittensor/wallets)"),
            "{text}"
        );
        // Two entries that set no hotkey both use the top-level wallet.
        let text = load("[[miners]]\nname = \"a\"\n[[miners]]\nname = \"b\"\n").unwrap_err().to_string();
        assert!(text.contains("miners[0] and miners[1]") && text.contains("same wallet"), "{text}");

        let text = load(
            "checkpoint_path = \"/c.bin\"\n[[miners]]\nwallet.hotkey = \"a\"\n[[miners]]\nwallet.hotkey = \"b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("miners[0] and miners[1]") && text.contains("same checkpoint_path /c.bin"), "{text}");

        // Two miners on one GPU are allowed.
        let c = load("[[miners]]\nwallet.hotkey = \"a\"\ndevice = \"cuda:0\"\n[[miners]]\nwallet.hotkey = \"b\"\ndevice = \"cuda\"\n")
            .unwrap();
        assert_eq!(c.instances().len(), 2);

        // A default name must be a valid name.
        let text = load("[[miners]]\nwallet.hotkey = \"hot.key\"\n").unwrap_err().to_string();
        assert!(
            text.starts_with("invalid value \"hot.key\" (the default: its wallet.hotkey) for miners[0].name")
                && text.contains("set name"),
            "{text}"
        );
    }

    #[test]
    fn miner_entries_are_checked_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let check = |toml: &str, start: &str, rest: &str| {
            let file = write(dir.path(), "m.toml", toml);
            let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
            assert!(text.starts_with(start) && text.contains(rest) && text.contains("m.toml"), "{toml}: {text}");
        };
        check(
            "[[miners]]\nbukcet = \"b-1\"\n",
            "unknown key \"miners[0].bukcet\" (config file ",
            "did you mean \"bucket\"?",
        );
        check(
            "[[miners]]\nname = \"a\"\n[[miners]]\nname = \"b\"\nfoo = 1\n",
            "unknown key \"miners[1].foo\" (config file ",
            "",
        );
        check("[[miners]]\nnetuid = 1\n", "unknown key \"miners[0].netuid\"", "");
        check(
            "[[miners]]\n[miners.wallet]\nhotky = \"h\"\n",
            "unknown key \"miners[0].wallet.hotky\"",
            "\"wallet.hotkey\"",
        );
        check("[[miners]]\n[miners.s3]\nregoin = \"x\"\n", "unknown key \"miners[0].s3.regoin\"", "\"s3.region\"");
        check(
            "[[miners]]\nbucket = \"Bad_Bucket\"\n",
            "invalid value \"Bad_Bucket\" for miners[0].bucket",
            "'B' is not allowed",
        );
        check("[[miners]]\ndevice = \"tpu\"\n", "invalid value \"tpu\" for miners[0].device", "\"cuda:N\"");
        check(
            "[[miners]]\nactual_batch_size = 0\n",
            "invalid value 0 for miners[0].actual_batch_size",
            "1..=4294967295",
        );
        check("[[miners]]\nrandom = \"maybe\"\n", "invalid value \"maybe\" for miners[0].random", "a boolean");
        check("[[miners]]\nname = \"a b\"\n", "invalid value \"a b\" for miners[0].name", MINER_NAME_EXPECTED);
        check(&format!("[[miners]]\nname = \"{}\"\n", "n".repeat(33)), "invalid value", "for miners[0].name");
        check("[[miners]]\nwallet.name = \"a/b\"\n", "invalid value \"a/b\" for miners[0].wallet.name", "without '/'");
        check(
            "[[miners]]\ncheckpoint_path = \"~bob/c\"\n",
            "invalid value \"~bob/c\" for miners[0].checkpoint_path",
            "~user",
        );
        check("[[miners]]\nwallet = 3\n", "invalid value 3 for miners[0].wallet", "miners[0].wallet.hotkey");
        check(
            "[[miners]]\n[miners.s3]\nendpoint = \"ftp://x\"\n",
            "invalid value \"ftp://x\" for miners[0].s3.endpoint",
            "the scheme is \"ftp\"",
        );
        check(
            "[[miners]]\n[miners.s3]\nsecret_access_key = \"s3cr3t\"\n",
            "miners[0]: s3.secret_access_key is set (config file ",
            "but s3.access_key_id is not",
        );
        check("[miners]\nbucket = \"b-1\"\n", "invalid value (a table) for miners", MINERS_EXPECTED);
        check("miners = [1]\n", "invalid value 1 for miners[0]", "a table of miner settings");
        check("[[minerz]]\nbucket = \"b-1\"\n", "unknown key \"minerz\"", "did you mean \"miners\"");

        // Without HOME, a ~ path in an entry names the entry's key.
        let file = write(dir.path(), "h.toml", "[[miners]]\nwallet.path = \"~/w\"\n");
        let text = err(&ConfigSources {
            config_file: Some(file),
            home: None,
            cli_overrides: cli(&[("bucket", "b-1"), ("wallet.path", "/w"), ("state_dir", "/s")]),
            ..sources()
        });
        assert!(text.starts_with("invalid value \"~/w\" for miners[0].wallet.path") && text.contains("HOME"), "{text}");
    }

    #[test]
    fn a_higher_layer_replaces_the_miners_of_a_lower_one() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            DEFAULT_CONFIG_FILE,
            "[[miners]]\nname = \"a\"\nwallet.hotkey = \"a\"\n[[miners]]\nname = \"b\"\nwallet.hotkey = \"b\"\n",
        );
        let file = write(dir.path(), "mine.toml", "[[miners]]\nname = \"c\"\nwallet.hotkey = \"c\"\n");
        let s = ConfigSources { config_dir: Some(dir.path().to_owned()), ..with_bucket() };
        let names = |s: &ConfigSources| -> Vec<String> {
            MinerConfig::load(s).unwrap().instances().into_iter().map(|i| i.name).collect()
        };
        assert_eq!(names(&s), ["a", "b"]);
        assert_eq!(names(&ConfigSources { config_file: Some(file), ..s }), ["c"]);
    }
}
