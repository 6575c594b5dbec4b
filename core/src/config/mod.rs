//! The miner's layered configuration.
//!
//! Keys match the seed miner's command-line flags one to one (`--wallet.name` is the key
//! `wallet.name`), so an operator's `python3 neurons/miner.py …` line carries over
//! unchanged. Layers, lowest to highest:
//!
//! 1. built-in defaults ([`defaults`], the seed's, documented in `config/default.toml`),
//! 2. `default.toml` in the configuration directory (`$TESSERA_CONFIG_DIR`, else
//!    `./config`), when it exists,
//! 3. `--config FILE` (must exist),
//! 4. environment variables `TESSERA__KEY`, `TESSERA__WALLET__NAME` (prefix `TESSERA`,
//!    separator `__`, any case; empty values count as unset),
//! 5. command-line flags actually given.
//!
//! Each setting is described once: a field of [`MinerConfig`] (or of a section such as
//! [`RuntimeConfig`]) whose type checks its value, with its default and its notes for
//! operators in `config/default.toml` ([`defaults`]). Each layer is a figment provider
//! named after its origin; figment merges them and remembers which layer set each value,
//! so an error names the key, the value, what is expected and which layer set it
//! (`invalid value "abc" for netuid (command-line flag --netuid): expected an integer
//! 0..=65535`). A key this build does not know is an error, with the nearest known key
//! suggested. Variables and flags are text, read as numbers or booleans where a setting
//! takes one (figment's lossy reading); files are typed (`netuid = "3"` is refused).
//! A leading `~` in paths is expanded after reading.
//!
//! `[s3]` (how to reach and sign for the own bucket), `[runtime]` (tunables of the miner
//! runtime) and `[data]` (where training text comes from) have no flags, as in the seed.
//! Several miners can run in one process: each `[[miners]]` table (in a file only) names
//! one, overriding a few top-level keys for it (`miner::MinerOverrides`); see
//! [`MinerConfig::instances`]. A layer that sets `[[miners]]` replaces the entries of lower
//! layers as a whole.
//!
//! There are no per-network files: the seed has no such notion, `--test`/`--local` and
//! `subtensor.network` already pick the well-known endpoints, and a file that changed
//! settings only when some other layer named a network would surprise. Per-network
//! settings go in a `--config` file.

mod layers;
mod miner;
mod runtime;
mod types;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use thiserror::Error;
use tracing::warn;

pub use self::layers::{ConfigSources, Origin};
pub use self::miner::{MINERS_DIR, MinerInstance};
pub use self::runtime::{RuntimeConfig, RuntimeSettings};
pub use self::types::{
    DataSourceSpec, KeyName, LogFormat, MinerName, Profile, Region, Secret, TildeError, expand_tilde,
};
use self::types::{Dataset, Hparams, Label, Listen, Netuid, NonEmptyPath, Positive, Seed, WsUrl};
use crate::chain::Network;
use crate::hparams::HparamsSource;
use crate::model::{AttentionKernel, ComputeOptions, Device, Precision};
use crate::storage::{AccessKeys, BucketName, CredentialSource, DEFAULT_REGION, Endpoint};

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
/// The shared slice cache, in the state directory, when `runtime.cache_dir` is unset.
pub const SLICE_CACHE_DIR: &str = "slice-cache";
/// What a secret's value is replaced with in printed configuration.
pub const REDACTED: &str = "<redacted>";
/// A key whose name contains one of these is a secret.
const SECRET_MARKERS: &[&str] = &["secret", "password", "token", "api_key", "access_key"];

/// `config/default.toml` as shipped: it documents every setting, those with a default on
/// a line `# key = value` (notes and examples on `## ` lines).
const DOCUMENTED_DEFAULTS: &str = include_str!("../../../config/default.toml");

/// The built-in defaults as TOML: the lowest layer, and what the command-line help shows
/// ([`default_of`]). They are the setting lines of `config/default.toml` uncommented, so
/// each default is stated once, where operators read it. Settings without a default
/// (`bucket`, the S3 keys, …) are absent.
pub fn defaults() -> &'static str {
    static DEFAULTS: LazyLock<String> = LazyLock::new(|| {
        DOCUMENTED_DEFAULTS.lines().filter_map(|l| l.strip_prefix("# ")).collect::<Vec<_>>().join("\n")
    });
    &DEFAULTS
}

/// The built-in default of `key` (dotted) as text, for help output; None when it has none.
pub fn default_of(key: &str) -> Option<String> {
    let tree: toml::Value = toml::from_str(defaults()).ok()?;
    Some(match key.split('.').try_fold(&tree, |value, part| value.get(part))? {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The miner's effective configuration.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinerConfig {
    /// Sequences per micro-batch (gradient accumulation step).
    #[serde_as(deserialize_as = "Positive")]
    pub actual_batch_size: u32,
    pub wallet: WalletConfig,
    /// This miner's S3 bucket (committed on chain). With `[[miners]]` entries that all set
    /// their own bucket and no top-level one, this is the first entry's (each instance uses
    /// its own).
    #[serde(default)]
    pub bucket: BucketName,
    /// Where `bucket` is served and how requests to it are signed.
    pub s3: S3Config,
    pub device: Device,
    /// Precision of the model's products on `device`.
    pub precision: Precision,
    /// The attention kernel on `device`.
    pub attention: AttentionKernel,
    /// Recompute decoder blocks in the backward pass: less activation memory, more compute.
    pub recompute_activations: bool,
    pub use_wandb: bool,
    /// Weights & Biases project.
    #[serde_as(deserialize_as = "Label")]
    pub project: String,
    #[serde_as(deserialize_as = "Netuid")]
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
    #[serde_as(deserialize_as = "Option<NonEmptyPath>")]
    pub checkpoint_path: Option<PathBuf>,
    /// The seed's pm2 process name; accepted, unused.
    #[serde_as(deserialize_as = "Option<Label>")]
    pub process_name: Option<String>,
    #[serde_as(deserialize_as = "Hparams")]
    pub hparams: HparamsSource,
    /// Local state: the hparams cache, later checkpoints and slice caches.
    #[serde_as(deserialize_as = "NonEmptyPath")]
    pub state_dir: PathBuf,
    /// Tunables of the miner runtime (`[runtime]`).
    pub runtime: RuntimeConfig,
    /// Where training text comes from (`[data]`).
    pub data: DataConfig,
    /// The miners of the `[[miners]]` entries (read apart: each entry is the top level with
    /// its keys merged over it). Empty: this process runs one miner, this configuration.
    #[serde(skip)]
    pub miners: Vec<MinerInstance>,
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletConfig {
    pub name: KeyName,
    pub hotkey: KeyName,
    #[serde_as(deserialize_as = "NonEmptyPath")]
    pub path: PathBuf,
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtensorConfig {
    pub network: Network,
    /// The configured endpoint, else (after loading, always set) the network's well-known one.
    #[serde_as(deserialize_as = "Option<WsUrl>")]
    pub chain_endpoint: Option<String>,
}

/// `[metrics]`: where the Prometheus and health endpoints listen.
#[serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port`, or `None` (written `"off"`) for no endpoint.
    #[serde_as(as = "Listen")]
    pub listen: Option<SocketAddr>,
}

/// Where training text comes from (`[data]`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub source: DataSourceSpec,
    /// Hugging Face dataset of the `huggingface` source; None = the data crate's default
    /// (the seed's).
    #[serde_as(deserialize_as = "Option<Dataset>")]
    pub dataset: Option<String>,
    /// Seed of the `synthetic` source.
    #[serde_as(deserialize_as = "Seed")]
    pub synthetic_seed: u64,
    /// Pages a window trains on; None = the hparams' `validator_window_eval_size`.
    #[serde_as(deserialize_as = "Option<Positive>")]
    pub pages_per_window: Option<u32>,
}

/// The own bucket's endpoint, region and credentials (`[s3]`). `Debug` and printed
/// configuration hide the keys and the session token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// S3-compatible endpoint for non-AWS providers; None = AWS.
    pub endpoint: Option<Endpoint>,
    /// Region requests are signed for (at the top level always set; default "us-east-1").
    pub region: Option<Region>,
    /// Explicit keys; when absent the usual places are used (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env,
    /// then the ~/.aws/credentials profile). Given together; `session_token` only with both.
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Profile name in ~/.aws/credentials (default profile when absent).
    pub profile: Option<Profile>,
}

impl S3Config {
    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        self.region.as_deref().map_or(DEFAULT_REGION, String::as_str)
    }

    /// The configured keys (with the session token, if any) when both keys are set, else
    /// the AWS environment variables and then `profile` in `~/.aws/credentials`.
    pub fn credentials(&self) -> CredentialSource {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => CredentialSource::Static(AccessKeys {
                access_key: id.expose().to_owned(),
                secret_key: secret.expose().to_owned(),
                session_token: self.session_token.as_ref().map(|t| t.expose().to_owned()),
            }),
            _ => CredentialSource::Environment { profile: self.profile.as_ref().map(|p| p.to_string()) },
        }
    }
}

/// Why the configuration is not usable.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid value {value} for {key} ({origin}): expected {expected}")]
    InvalidValue { key: String, value: String, expected: String, origin: Origin },
    #[error("unknown key \"{key}\" ({origin}){}", .suggestion.as_ref().map(|k| format!("; did you mean \"{k}\"?")).unwrap_or_default())]
    UnknownKey { key: String, origin: Origin, suggestion: Option<String> },
    #[error(
        "bucket is required: set bucket = \"NAME\" in a config file or {ENV_PREFIX}{ENV_SEPARATOR}BUCKET=NAME \
         in the environment"
    )]
    MissingBucket,
    #[error("test and local are both set: choose one network")]
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
    #[error("configuration file {} does not exist", .path.display())]
    FileNotFound { path: PathBuf },
    #[error("cannot read configuration file {path}: {cause}")]
    FileParse { path: String, cause: String },
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
        Ok(MinerConfig::read(sources)?.0.hparams_settings())
    }
}

impl MinerConfig {
    /// Merges the layers of `sources` and checks the result.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let (mut config, layers) = Self::read(sources)?;
        config.check(|key| layers.origin(key))?;
        if config.bucket.is_unset() {
            config.bucket = config.miners.first().ok_or(ConfigError::MissingBucket)?.config.bucket.clone();
        }
        if let Some(dataset) = &config.data.dataset
            && config.data.source != DataSourceSpec::HuggingFace
        {
            warn!(%dataset, source = %config.data.source, "data.dataset is unused: data.source is not \"huggingface\"");
        }
        config.check_miners(&layers)?;
        Ok(config)
    }

    /// Only the `log_format` setting (the rest checked, no bucket needed): the binary sets
    /// up logging with it before the configuration is loaded and its errors reported.
    pub fn load_log_format(sources: &ConfigSources) -> Result<LogFormat, ConfigError> {
        Ok(Self::read(sources)?.0.log_format)
    }

    /// The merged layers read, `~` expanded, the derived settings filled in and the
    /// `[[miners]]` entries read; and the layers, for the origins of cross-key errors.
    fn read(sources: &ConfigSources) -> Result<(Self, layers::Layers), ConfigError> {
        let layers = sources.layers()?;
        let mut config: Self = layers.figment.extract_lossy().map_err(|e| layers.error(&layers.figment, e, ""))?;
        if let Ok(toml::Value::Table(typed)) = toml::Value::try_from(&config) {
            layers.check_file_types(&typed, "")?;
        }
        config.expand_home(sources.home.as_deref(), &|key| (key.to_owned(), layers.origin(key)))?;
        if config.runtime.cache_dir.as_os_str().is_empty() {
            config.runtime.cache_dir = config.state_dir.join(SLICE_CACHE_DIR);
        }
        config.miners = layers.miners(&config, sources.home.as_deref())?;
        Ok((config, layers))
    }

    /// Expands a leading `~` in every path setting; `locate` gives the key and the layer
    /// of a setting for errors.
    fn expand_home(
        &mut self,
        home: Option<&Path>,
        locate: &dyn Fn(&str) -> (String, Origin),
    ) -> Result<(), ConfigError> {
        let expand = |key: &str, path: &mut PathBuf| {
            let text = path.to_string_lossy().into_owned();
            *path = expand_tilde(&text, home).map_err(|e| {
                let ((key, origin), expected) = (locate(key), format!("a path ({e})"));
                ConfigError::InvalidValue { key, value: format!("{text:?}"), expected, origin }
            })?;
            Ok::<_, ConfigError>(())
        };
        expand("wallet.path", &mut self.wallet.path)?;
        expand("state_dir", &mut self.state_dir)?;
        expand("runtime.cache_dir", &mut self.runtime.cache_dir)?;
        if let Some(path) = &mut self.checkpoint_path {
            expand("checkpoint_path", path)?;
        }
        if let HparamsSource::File(path) = &mut self.hparams {
            expand("hparams", path)?;
        }
        if let DataSourceSpec::Local(path) = &mut self.data.source {
            expand("data.source", path)?;
        }
        Ok(())
    }

    /// Rules across keys of one miner; `origin` finds where a key was set.
    fn check(&mut self, origin: impl Fn(&str) -> Origin) -> Result<(), ConfigError> {
        let (id, secret) = ("s3.access_key_id", "s3.secret_access_key");
        match (&self.s3.access_key_id, &self.s3.secret_access_key, &self.s3.session_token) {
            (Some(_), None, _) => {
                return Err(ConfigError::S3UnpairedKey { given: id, origin: origin(id), missing: secret });
            }
            (None, Some(_), _) => {
                return Err(ConfigError::S3UnpairedKey { given: secret, origin: origin(secret), missing: id });
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::S3TokenWithoutKeys { origin: origin("s3.session_token") });
            }
            (Some(_), Some(_), _) if self.s3.profile.is_some() => {
                let origin = origin("s3.profile");
                warn!(%origin, "s3.profile is unused: s3.access_key_id and s3.secret_access_key are set");
            }
            _ => {}
        }
        let (first, max) = (self.runtime.restart_backoff, self.runtime.restart_backoff_max);
        if max < first {
            let key = "runtime.restart_backoff_max_ms";
            let expected = format!(
                "a number of milliseconds at least runtime.restart_backoff_ms ({}, {})",
                first.as_millis(),
                origin("runtime.restart_backoff_ms")
            );
            let value = max.as_millis().to_string();
            return Err(ConfigError::InvalidValue { key: key.into(), value, expected, origin: origin(key) });
        }
        self.force_network(origin)
    }

    /// `--test`/`--local` force their network and its endpoint, as the seed did.
    fn force_network(&mut self, origin: impl Fn(&str) -> Origin) -> Result<(), ConfigError> {
        let (setting, network) = match (self.test, self.local) {
            (true, true) => return Err(ConfigError::TestAndLocal),
            (true, false) => ("test", Network::Test),
            (false, true) => ("local", Network::Local),
            (false, false) => {
                let sub = &mut self.subtensor;
                sub.chain_endpoint.get_or_insert_with(|| sub.network.default_endpoint().to_owned());
                return Ok(());
            }
        };
        let endpoint = network.default_endpoint().to_owned();
        let sub = &mut self.subtensor;
        if sub.network != network {
            let origin = origin("subtensor.network");
            warn!(configured = %sub.network, %origin, "{setting} overrides subtensor.network");
        }
        if let Some(configured) = sub.chain_endpoint.as_ref().filter(|c| **c != endpoint) {
            let origin = origin("subtensor.chain_endpoint");
            warn!(%configured, %origin, %endpoint, "{setting} overrides subtensor.chain_endpoint");
        }
        *sub = SubtensorConfig { network, chain_endpoint: Some(endpoint) };
        Ok(())
    }

    /// The node endpoint (always set in a loaded configuration).
    pub fn chain_endpoint(&self) -> &str {
        self.subtensor.chain_endpoint.as_deref().unwrap_or_else(|| self.subtensor.network.default_endpoint())
    }

    /// How the model is computed on `device`.
    pub fn compute(&self) -> ComputeOptions {
        ComputeOptions {
            precision: self.precision,
            attention: self.attention,
            recompute_activations: self.recompute_activations,
        }
    }

    /// Where hparams come from and where a fetched copy is cached.
    pub fn hparams_settings(&self) -> HparamsSettings {
        HparamsSettings { source: self.hparams.clone(), cache_path: self.state_dir.join(HPARAMS_CACHE_FILE) }
    }

    /// The runtime settings of this (resolved) miner: `[runtime]` with the top-level keys
    /// the runtime follows; `pages_per_window` falls back to the hparams' `default_pages`.
    pub fn runtime_settings(&self, default_pages: u32) -> RuntimeSettings {
        RuntimeSettings {
            remote: self.remote,
            baseline: self.baseline,
            random: self.random,
            sync_state: self.sync_state,
            batch_size: self.actual_batch_size as usize,
            pages_per_window: self.data.pages_per_window.unwrap_or(default_pages) as usize,
            ..self.runtime.clone().settings()
        }
    }

    /// The effective configuration as TOML (valid as a `--config` file), secrets redacted.
    pub fn effective_toml(&self) -> String {
        let rendered = self.to_toml().and_then(|mut value| {
            redact_secrets(&mut value);
            toml::to_string(&value)
        });
        match rendered {
            Ok(body) => format!("# tessera miner: effective configuration (secrets redacted)\n{body}"),
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

#[cfg(test)]
mod tests;
