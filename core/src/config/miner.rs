//! Several miners in one process. Each `[[miners]]` entry is read as the top-level tree
//! with the entry's keys merged over it, so a miner is one [`MinerConfig`] checked like
//! the top level; then the rules across miners.

use std::path::PathBuf;

use serde::Deserialize;
use toml::{Table, Value};

use super::layers::{Layers, merge, suggest, table_of};
use super::types::is_miner_name;
use super::{ConfigError, MinerConfig, MinerName, Origin};

/// Holds the state directories of the `[[miners]]` of a process (`<state_dir>/miners/<name>`).
pub const MINERS_DIR: &str = "miners";

/// The keys a `[[miners]]` entry may set: its `name`, and the top-level keys it overrides
/// for its miner (`wallet` and `s3` key by key). Everything else is the process's.
pub const MINER_KEYS: &[&str] = &[
    "actual_batch_size",
    "attention",
    "baseline",
    "bucket",
    "checkpoint_path",
    "device",
    "name",
    "precision",
    "random",
    "recompute_activations",
    "s3",
    "wallet",
];

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

impl Layers {
    /// The miners of `entries` (the value of `miners`), in entry order, each in
    /// `<top state_dir>/miners/<name>`; `runtime.cache_dir` is the same for all (the slice
    /// cache is shared by the miners of a host).
    pub(super) fn miners(&self, entries: Option<Value>, top: &MinerConfig) -> Result<Vec<MinerInstance>, ConfigError> {
        let entries = match entries {
            None => return Ok(Vec::new()),
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                let expected = "an array of tables: one [[miners]] table per entry".into();
                return Err(self.invalid("miners", Some(&other), expected));
            }
        };
        let read = |(index, entry): (usize, Value)| {
            let at = format!("miners[{index}]");
            let Value::Table(mut entry) = entry else {
                return Err(self.invalid(&at, Some(&entry), table_of(&at, MINER_KEYS)));
            };
            if let Some(key) = entry.keys().find(|k| !MINER_KEYS.contains(&k.as_str())) {
                let suggestion = suggest(key, MINER_KEYS);
                let key = format!("{at}.{key}");
                return Err(ConfigError::UnknownKey { origin: self.origin(&key), key, suggestion });
            }
            #[derive(Deserialize)]
            struct Named {
                name: Option<MinerName>,
            }
            let name = Table::from_iter(entry.remove("name").map(|name| ("name".to_owned(), name)));
            let named: Named = self.read(&name, &at)?;
            let mut tree = self.tree.clone();
            merge(&mut tree, entry, "", &mut |_, _| {});
            let mut config = MinerConfig::from_tree(self, &tree, &at)?;
            let name = named.name.map_or_else(|| config.wallet.hotkey.to_string(), |n| n.to_string());
            config.state_dir = top.state_dir.join(MINERS_DIR).join(&name);
            Ok(MinerInstance { name, state_dir: config.state_dir.clone(), config })
        };
        entries.into_iter().enumerate().map(read).collect()
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
            let at = format!("miners[{index}]");
            let origin = |key: &str| match layers.origin(&format!("{at}.{key}")) {
                Origin::Default => layers.origin(key),
                own => own,
            };
            miner.config.check(origin).map_err(|e| ConfigError::InMiner { index, cause: Box::new(e) })?;
            if miner.config.bucket.is_unset() {
                return Err(ConfigError::MinerWithoutBucket { index, origin: layers.origin(&at) });
            }
            if !is_miner_name(&miner.name) {
                return Err(ConfigError::InvalidValue {
                    key: format!("{at}.name"),
                    value: format!("{:?} (the default: its wallet.hotkey)", miner.name),
                    expected: format!("{}; set name", MinerName::EXPECTED),
                    origin: layers.origin(&at),
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
                let origin = layers.origin(&format!("miners[{second}]"));
                return Err(ConfigError::DuplicateMiner { first, second, what, origin });
            }
        }
        Ok(())
    }

    /// This configuration as TOML: the miners as `[[miners]]` entries, each with its name
    /// and the keys where it differs from the top level.
    pub(super) fn to_toml(&self) -> Result<Value, toml::ser::Error> {
        let mut top = Value::try_from(self)?;
        let mut entries = Vec::new();
        for miner in &self.miners {
            let mut entry = changed(Value::try_from(&miner.config)?, Some(&top)).unwrap_or(Value::Table(Table::new()));
            if let Value::Table(entry) = &mut entry {
                entry.remove("state_dir");
                entry.insert("name".into(), Value::String(miner.name.clone()));
            }
            entries.push(entry);
        }
        if let Value::Table(top) = &mut top
            && !entries.is_empty()
        {
            top.insert("miners".into(), Value::Array(entries));
        }
        Ok(top)
    }
}

/// What of `value` differs from `base`, tables key by key; `None` when nothing does.
fn changed(value: Value, base: Option<&Value>) -> Option<Value> {
    match (value, base) {
        (Value::Table(table), Some(Value::Table(base))) => {
            let table: Table =
                table.into_iter().filter_map(|(k, v)| Some((k.clone(), changed(v, base.get(&k))?))).collect();
            (!table.is_empty()).then_some(Value::Table(table))
        }
        (value, base) => (Some(&value) != base).then_some(value),
    }
}
