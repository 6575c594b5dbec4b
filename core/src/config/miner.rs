//! Several miners in one process. Each `[[miners]]` entry is read as [`MinerOverrides`],
//! which knows only the keys an entry may set, and applied over the top level, so a miner
//! is one [`MinerConfig`] checked like the top level; then the rules across miners.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::value::Value;
use serde::Deserialize;
use serde_with::serde_as;
use toml::Table;

use super::layers::{Layer, Layers, keys_of, shown, table_of};
use super::types::{NonEmptyPath, Positive, is_miner_name};
use super::{ConfigError, KeyName, MinerConfig, MinerName, Origin, S3Config};
use crate::model::{AttentionKernel, Device, Precision};
use crate::storage::BucketName;

/// Holds the state directories of the `[[miners]]` of a process (`<state_dir>/miners/<name>`).
pub const MINERS_DIR: &str = "miners";

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

/// A `[[miners]]` entry: its name and the top-level keys it overrides for its miner
/// (`wallet` and `s3` key by key); everything else is the process's.
#[serde_as]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MinerOverrides {
    name: Option<MinerName>,
    #[serde_as(deserialize_as = "Option<Positive>")]
    actual_batch_size: Option<u32>,
    attention: Option<AttentionKernel>,
    baseline: Option<bool>,
    bucket: Option<BucketName>,
    #[serde_as(deserialize_as = "Option<NonEmptyPath>")]
    checkpoint_path: Option<PathBuf>,
    device: Option<Device>,
    precision: Option<Precision>,
    random: Option<bool>,
    recompute_activations: Option<bool>,
    s3: Option<S3Config>,
    wallet: Option<WalletOverrides>,
}

/// `[miners.wallet]`.
#[serde_as]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WalletOverrides {
    name: Option<KeyName>,
    hotkey: Option<KeyName>,
    #[serde_as(deserialize_as = "Option<NonEmptyPath>")]
    path: Option<PathBuf>,
}

impl MinerOverrides {
    /// `top` with this entry's keys set.
    fn apply(self, top: &MinerConfig) -> MinerConfig {
        let mut c = MinerConfig { miners: Vec::new(), ..top.clone() };
        c.actual_batch_size = self.actual_batch_size.unwrap_or(c.actual_batch_size);
        c.attention = self.attention.unwrap_or(c.attention);
        c.baseline = self.baseline.unwrap_or(c.baseline);
        c.bucket = self.bucket.unwrap_or(c.bucket);
        c.checkpoint_path = self.checkpoint_path.or(c.checkpoint_path);
        c.device = self.device.unwrap_or(c.device);
        c.precision = self.precision.unwrap_or(c.precision);
        c.random = self.random.unwrap_or(c.random);
        c.recompute_activations = self.recompute_activations.unwrap_or(c.recompute_activations);
        if let Some(w) = self.wallet {
            c.wallet.name = w.name.unwrap_or(c.wallet.name);
            c.wallet.hotkey = w.hotkey.unwrap_or(c.wallet.hotkey);
            c.wallet.path = w.path.unwrap_or(c.wallet.path);
        }
        if let Some(s3) = self.s3 {
            c.s3 = S3Config {
                endpoint: s3.endpoint.or(c.s3.endpoint),
                region: s3.region.or(c.s3.region),
                access_key_id: s3.access_key_id.or(c.s3.access_key_id),
                secret_access_key: s3.secret_access_key.or(c.s3.secret_access_key),
                session_token: s3.session_token.or(c.s3.session_token),
                profile: s3.profile.or(c.s3.profile),
            };
        }
        c
    }
}

impl Layers {
    /// The miners of the `[[miners]]` entries, in entry order, each in
    /// `<state_dir>/miners/<name>`, all sharing the top level's `runtime.cache_dir`.
    pub(super) fn miners(&self, top: &MinerConfig, home: Option<&Path>) -> Result<Vec<MinerInstance>, ConfigError> {
        let Some(Layer { origin, data }) = &self.miners else { return Ok(Vec::new()) };
        let invalid = |key: &str, value: Option<&Value>, expected: String| ConfigError::InvalidValue {
            value: shown(key, value),
            key: key.to_owned(),
            expected,
            origin: origin.clone(),
        };
        let entries = match data.get("miners") {
            Some(Value::Array(_, entries)) => entries,
            other => return Err(invalid("miners", other, "an array of tables: one [[miners]] table per entry".into())),
        };
        let mut miners = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let at = format!("miners[{index}]");
            let Value::Dict(_, entry) = entry else {
                return Err(invalid(&at, Some(entry), table_of(&at, keys_of::<MinerOverrides>())));
            };
            // Entries come from files only, so they are read strictly.
            let figment = Figment::from(Layer { origin: origin.clone(), data: entry.clone() });
            let overrides: MinerOverrides = figment.extract().map_err(|e| self.error(&figment, e, &at))?;
            let name = overrides.name.clone();
            let mut config = overrides.apply(top);
            config.expand_home(home, &|key| self.in_miner(index, key))?;
            let name = name.map_or_else(|| config.wallet.hotkey.to_string(), |n| n.to_string());
            config.state_dir = top.state_dir.join(MINERS_DIR).join(&name);
            miners.push(MinerInstance { name, state_dir: config.state_dir.clone(), config });
        }
        Ok(miners)
    }

    /// The key and layer of `key` in miner `index`: in its entry when the entry sets it,
    /// else at the top level.
    pub(super) fn in_miner(&self, index: usize, key: &str) -> (String, Origin) {
        let entry = |m: &Layer| m.data.get("miners")?.as_array()?.get(index)?.find_ref(key).map(|_| m.origin.clone());
        match self.miners.as_ref().and_then(entry) {
            Some(origin) => (format!("miners[{index}].{key}"), origin),
            None => (key.to_owned(), self.origin(key)),
        }
    }

    fn miners_origin(&self) -> Origin {
        self.miners.as_ref().map_or(Origin::Default, |m| m.origin.clone())
    }
}

impl MinerConfig {
    /// The miners this process runs: one per `[[miners]]` entry, else this configuration,
    /// named after its hotkey, in `state_dir`.
    pub fn instances(&self) -> Vec<MinerInstance> {
        if !self.miners.is_empty() {
            return self.miners.clone();
        }
        vec![MinerInstance {
            name: self.wallet.hotkey.to_string(),
            config: self.clone(),
            state_dir: self.state_dir.clone(),
        }]
    }

    /// Rules across the `[[miners]]`: each miner's own rules as at the top level, a bucket
    /// for each, a valid default name (the hotkey), and no two miners sharing a name, a
    /// wallet or a checkpoint file.
    pub(super) fn check_miners(&mut self, layers: &Layers) -> Result<(), ConfigError> {
        for (index, miner) in self.miners.iter_mut().enumerate() {
            let origin = |key: &str| layers.in_miner(index, key).1;
            miner.config.check(origin).map_err(|e| ConfigError::InMiner { index, cause: Box::new(e) })?;
            if miner.config.bucket.is_unset() {
                return Err(ConfigError::MinerWithoutBucket { index, origin: layers.miners_origin() });
            }
            if !is_miner_name(&miner.name) {
                return Err(ConfigError::InvalidValue {
                    key: format!("miners[{index}].name"),
                    value: format!("{:?} (the default: its wallet.hotkey)", miner.name),
                    expected: format!("{}; set name", MinerName::EXPECTED),
                    origin: layers.miners_origin(),
                });
            }
        }
        for (second, b) in self.miners.iter().enumerate().skip(1) {
            for (first, a) in self.miners.iter().enumerate().take(second) {
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
                return Err(ConfigError::DuplicateMiner { first, second, what, origin: layers.miners_origin() });
            }
        }
        Ok(())
    }

    /// This configuration as TOML: the miners as `[[miners]]` entries, each with its name
    /// and the keys where it differs from the top level.
    pub(super) fn to_toml(&self) -> Result<toml::Value, toml::ser::Error> {
        let mut top = toml::Value::try_from(self)?;
        let mut entries = Vec::new();
        for miner in &self.miners {
            let config = toml::Value::try_from(&miner.config)?;
            let mut entry = changed(config, Some(&top)).unwrap_or(toml::Value::Table(Table::new()));
            if let toml::Value::Table(entry) = &mut entry {
                entry.remove("state_dir");
                entry.insert("name".into(), toml::Value::String(miner.name.clone()));
            }
            entries.push(entry);
        }
        if let toml::Value::Table(top) = &mut top
            && !entries.is_empty()
        {
            top.insert("miners".into(), toml::Value::Array(entries));
        }
        Ok(top)
    }
}

/// What of `value` differs from `base`, tables key by key; `None` when nothing does.
fn changed(value: toml::Value, base: Option<&toml::Value>) -> Option<toml::Value> {
    match (value, base) {
        (toml::Value::Table(table), Some(toml::Value::Table(base))) => {
            let table: Table =
                table.into_iter().filter_map(|(k, v)| Some((k.clone(), changed(v, base.get(&k))?))).collect();
            (!table.is_empty()).then_some(toml::Value::Table(table))
        }
        (value, base) => (Some(&value) != base).then_some(value),
    }
}
