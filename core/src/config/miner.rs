//! Several miners in one process: the `[[miners]]` entries, each overriding a few
//! top-level settings for its miner, and the rules across them.

use std::path::PathBuf;

use config::Value;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::types::{BucketName, Device, KeyName, MinerName, is_miner_name, opt_path, positive};
use super::{ConfigError, MinerConfig, Origin, S3Config};
use crate::model::{AttentionKernel, Precision};

/// Holds the state directories of the `[[miners]]` of a process (`<state_dir>/miners/<name>`).
pub const MINERS_DIR: &str = "miners";

/// One `[[miners]]` entry as configured: each key it sets overrides the top-level one for
/// that miner; the rest are the top-level configuration's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinerEntry {
    /// Label in logs and metrics and the name of its state directory; None = its hotkey name.
    pub name: Option<MinerName>,
    #[serde(skip_serializing_if = "WalletOverrides::is_empty")]
    pub wallet: WalletOverrides,
    pub bucket: Option<BucketName>,
    pub device: Option<Device>,
    pub precision: Option<Precision>,
    pub attention: Option<AttentionKernel>,
    pub recompute_activations: Option<bool>,
    #[serde(deserialize_with = "positive::opt")]
    pub actual_batch_size: Option<u32>,
    #[serde(deserialize_with = "opt_path")]
    pub checkpoint_path: Option<PathBuf>,
    pub baseline: Option<bool>,
    pub random: Option<bool>,
    /// Each key set here overrides the top-level `[s3]` one.
    #[serde(skip_serializing_if = "S3Config::is_empty")]
    pub s3: S3Config,
}

/// The `wallet` keys of a `[[miners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletOverrides {
    pub name: Option<KeyName>,
    pub hotkey: Option<KeyName>,
    #[serde(deserialize_with = "opt_path")]
    pub path: Option<PathBuf>,
}

impl WalletOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
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

impl MinerConfig {
    /// The miners this process runs. Without `[[miners]]` entries, one: named after the
    /// hotkey, this configuration, in `state_dir`. Otherwise one per entry, in entry order:
    /// this configuration with the entry's keys applied, in `<state_dir>/miners/<name>`;
    /// `runtime.cache_dir` is the same for all (the slice cache is shared by the miners of a
    /// host).
    pub fn instances(&self) -> Vec<MinerInstance> {
        let top = MinerConfig { miners: Vec::new(), ..self.clone() };
        if self.miners.is_empty() {
            return vec![MinerInstance {
                name: self.wallet.hotkey.to_string(),
                config: top,
                state_dir: self.state_dir.clone(),
            }];
        }
        self.miners.iter().map(|entry| entry.apply_to(top.clone())).collect()
    }

    /// The bucket: the top-level one, else (when every `[[miners]]` entry sets its own)
    /// the first entry's.
    pub(super) fn resolve_bucket(&mut self, tree: &Value) -> Result<(), ConfigError> {
        if !self.bucket.is_unset() {
            return Ok(());
        }
        let Some(first) = self.miners.first().map(|m| m.bucket.clone()) else { return Err(ConfigError::MissingBucket) };
        if let Some(index) = self.miners.iter().position(|m| m.bucket.is_none()) {
            return Err(ConfigError::MinerWithoutBucket {
                index,
                origin: Origin::at(tree, &format!("miners[{index}]")),
            });
        }
        self.bucket = first.unwrap_or_default();
        Ok(())
    }

    /// Rules across the resolved `[[miners]]`: each entry's `[s3]` keys pair up, a default
    /// name (the hotkey) is a valid name, and no two miners share a name, a wallet or a
    /// checkpoint file.
    pub(super) fn check_miners(&self, tree: &Value) -> Result<(), ConfigError> {
        let instances = self.instances();
        for (index, (entry, instance)) in self.miners.iter().zip(&instances).enumerate() {
            let prefix = format!("miners[{index}].");
            let origin = |key: &str| {
                let own = format!("{prefix}{key}");
                if Origin::at(tree, &own) == Origin::Default { Origin::at(tree, key) } else { Origin::at(tree, &own) }
            };
            check_s3(&instance.config.s3, origin).map_err(|e| ConfigError::InMiner { index, cause: Box::new(e) })?;
            if entry.name.is_none() && !is_miner_name(&instance.name) {
                return Err(ConfigError::InvalidValue {
                    key: format!("miners[{index}].name"),
                    value: format!("{:?} (the default: its wallet.hotkey)", instance.name),
                    expected: format!("{}; set name", MinerName::EXPECTED),
                    origin: Origin::at(tree, &format!("miners[{index}]")),
                });
            }
        }
        for (second, b) in instances.iter().enumerate().skip(1) {
            for (first, a) in instances.iter().enumerate().take(second) {
                let (wa, wb) = (&a.config.wallet, &b.config.wallet);
                let what = if wa == wb {
                    format!("wallet (name {:?}, hotkey {:?}, path {})", *wa.name, *wa.hotkey, wa.path.display())
                } else if a.name.eq_ignore_ascii_case(&b.name) {
                    format!("name {:?}", b.name)
                } else if let (Some(pa), Some(pb)) = (&a.config.checkpoint_path, &b.config.checkpoint_path)
                    && pa == pb
                {
                    format!("checkpoint_path {}", pa.display())
                } else {
                    continue;
                };
                let origin = Origin::at(tree, &format!("miners[{second}]"));
                return Err(ConfigError::DuplicateMiner { first, second, what, origin });
            }
        }
        Ok(())
    }
}

/// The S3 keys go in pairs; a session token needs both. `origin` finds where a key was set.
pub(super) fn check_s3(s3: &S3Config, origin: impl Fn(&str) -> Origin) -> Result<(), ConfigError> {
    let (id, secret) = ("s3.access_key_id", "s3.secret_access_key");
    match (&s3.access_key_id, &s3.secret_access_key) {
        (Some(_), None) => Err(ConfigError::S3UnpairedKey { given: id, origin: origin(id), missing: secret }),
        (None, Some(_)) => Err(ConfigError::S3UnpairedKey { given: secret, origin: origin(secret), missing: id }),
        (None, None) if s3.session_token.is_some() => {
            Err(ConfigError::S3TokenWithoutKeys { origin: origin("s3.session_token") })
        }
        (Some(_), Some(_)) => {
            if let Some(profile) = &s3.profile {
                let origin = origin("s3.profile");
                warn!(%profile, %origin, "s3.profile is unused: s3.access_key_id and s3.secret_access_key are set");
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

impl MinerEntry {
    /// `top` with this entry's keys applied, in its own state directory.
    fn apply_to(&self, mut config: MinerConfig) -> MinerInstance {
        let wallet = &self.wallet;
        config.wallet.name = wallet.name.clone().unwrap_or(config.wallet.name);
        config.wallet.hotkey = wallet.hotkey.clone().unwrap_or(config.wallet.hotkey);
        config.wallet.path = wallet.path.clone().unwrap_or(config.wallet.path);
        config.bucket = self.bucket.clone().unwrap_or(config.bucket);
        config.device = self.device.unwrap_or(config.device);
        config.precision = self.precision.unwrap_or(config.precision);
        config.attention = self.attention.unwrap_or(config.attention);
        config.recompute_activations = self.recompute_activations.unwrap_or(config.recompute_activations);
        config.actual_batch_size = self.actual_batch_size.unwrap_or(config.actual_batch_size);
        config.checkpoint_path = self.checkpoint_path.clone().or(config.checkpoint_path);
        config.baseline = self.baseline.unwrap_or(config.baseline);
        config.random = self.random.unwrap_or(config.random);
        config.s3 = self.s3.over(&config.s3);
        let name = self.name.as_ref().map_or_else(|| config.wallet.hotkey.to_string(), |n| n.to_string());
        config.state_dir = config.state_dir.join(MINERS_DIR).join(&name);
        MinerInstance { state_dir: config.state_dir.clone(), name, config }
    }
}
