//! The layers as figment providers, and figment's errors as [`ConfigError`]s: the dotted
//! key, the value (secrets hidden), what the setting expects, and the layer that set it.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::{DeserializeOwned, Visitor};
use tracing::{info, warn};

use super::{
    CONFIG_DIR_ENV, ConfigError, DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE, DataConfig, ENV_PREFIX, ENV_SEPARATOR,
    MetricsConfig, REDACTED, RuntimeConfig, S3Config, SubtensorConfig, WalletConfig, is_secret_key,
    miner::{MinerOverrides, WalletOverrides},
};

/// The inputs of [`super::MinerConfig::load`]; explicit so tests need not touch the process.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Directory whose `default.toml`, if present, is the lowest file layer.
    pub config_dir: Option<PathBuf>,
    /// `--config FILE`: must exist.
    pub config_file: Option<PathBuf>,
    /// Variables to read `TESSERA__*` from; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
    /// Settings given on the command line: (key, value), e.g. `("wallet.name", "miner1")`;
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
            warn!(dir = %dir.display(), "{CONFIG_DIR_ENV} is set but holds no {DEFAULT_CONFIG_FILE}; that layer is skipped");
        }
        Self {
            config_dir: Some(explicit.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))),
            config_file,
            env: None,
            cli_overrides,
            home: std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from),
        }
    }

    /// Every layer, the built-in defaults lowest.
    pub(super) fn layers(&self) -> Result<Layers, ConfigError> {
        let mut layers = Layers { figment: Figment::new(), miners: None, origins: Vec::new() };
        layers.add(Origin::Default, toml_layer(super::defaults(), "(built-in defaults)")?);
        if let Some(path) = self.config_file.as_ref().filter(|p| !p.is_file()) {
            return Err(ConfigError::FileNotFound { path: path.clone() });
        }
        let dir_file = self.config_dir.as_ref().map(|d| d.join(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file());
        for path in dir_file.iter().chain(&self.config_file) {
            info!(path = %path.display(), "configuration layer: file");
            let (shown, text) = (path.display().to_string(), std::fs::read_to_string(path));
            let text = text.map_err(|e| ConfigError::FileParse { path: shown.clone(), cause: e.to_string() })?;
            layers.add(Origin::File(shown.clone()), toml_layer(&text, &shown)?);
        }
        let mut vars: Vec<(String, String)> = match &self.env {
            Some(env) => env.clone().into_iter().collect(),
            None => {
                std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
            }
        };
        vars.sort();
        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
        for (var, value) in vars {
            let key = var.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(&prefix)).map(|_| &var[prefix.len()..]);
            if let Some(key) = key.filter(|_| !value.is_empty()) {
                let key = key.to_ascii_lowercase().replace(ENV_SEPARATOR, ".");
                layers.add(Origin::Env(var.clone()), text_layer(&key, value));
            }
        }
        for (key, value) in &self.cli_overrides {
            layers.add(Origin::Cli(format!("--{key}")), text_layer(key, value.clone()));
        }
        Ok(layers)
    }
}

/// A file's text as a layer.
fn toml_layer(text: &str, path: &str) -> Result<Dict, ConfigError> {
    let cause = |e: &dyn fmt::Display| ConfigError::FileParse { path: path.to_owned(), cause: e.to_string() };
    let table: toml::Table = toml::from_str(text).map_err(|e| cause(&e))?;
    Value::serialize(table).map_err(|e| cause(&e))?.into_dict().ok_or_else(|| cause(&"not a table"))
}

/// One variable or flag: a dotted key set to text.
fn text_layer(key: &str, text: String) -> Dict {
    figment::util::nest(key, Value::from(text)).into_dict().unwrap_or_default()
}

/// The layer a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(String),
    /// The variable's name.
    Env(String),
    /// The flag; the binary's flag for a key is `--key`.
    Cli(String),
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

/// One layer as a figment provider, named after its [`Origin`].
pub(super) struct Layer {
    pub origin: Origin,
    pub data: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        match &self.origin {
            Origin::File(path) => Metadata::from(self.origin.to_string(), Source::File(path.into())),
            other => Metadata::named(other.to_string()),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// The layers merged by figment, and the `[[miners]]` of the highest layer that has them:
/// read apart, per entry, and replaced as a whole by a higher layer.
pub(super) struct Layers {
    pub figment: Figment,
    pub miners: Option<Layer>,
    origins: Vec<Origin>,
}

impl Layers {
    fn add(&mut self, origin: Origin, mut data: Dict) {
        if let Some(miners) = data.remove("miners") {
            self.miners = Some(Layer { origin: origin.clone(), data: Dict::from([("miners".into(), miners)]) });
        }
        self.origins.push(origin.clone());
        self.figment = std::mem::take(&mut self.figment).merge(Layer { origin, data });
    }

    /// Where the value at dotted `key` was set.
    pub fn origin(&self, key: &str) -> Origin {
        self.origin_of(self.figment.find_metadata(key))
    }

    fn origin_of(&self, metadata: Option<&Metadata>) -> Origin {
        let named = |m: &Metadata| self.origins.iter().find(|o| o.to_string() == m.name).cloned();
        metadata.and_then(named).unwrap_or(Origin::Default)
    }

    /// Files are typed. figment's lossy reading takes a number or boolean from the text of
    /// a variable or flag (`"5"`, `"yes"`), and so would from a file (`netuid = "3"`,
    /// `remote = 1`): the values a file set are checked against `typed`, the loaded tree.
    pub fn check_file_types(&self, typed: &toml::Table, at: &str) -> Result<(), ConfigError> {
        for (name, typed) in typed {
            let key = join(at, name);
            let expected = match typed {
                toml::Value::Table(table) => {
                    self.check_file_types(table, &key)?;
                    continue;
                }
                toml::Value::Integer(_) => "an integer",
                toml::Value::Boolean(_) => "a boolean",
                _ => continue,
            };
            let from_file = self.figment.find_metadata(&key).is_some_and(|m| matches!(m.source, Some(Source::File(_))));
            let value = self.figment.find_value(&key).ok();
            let same = matches!(
                (&value, typed),
                (Some(Value::Num(..)), toml::Value::Integer(_)) | (Some(Value::Bool(..)), toml::Value::Boolean(_))
            );
            if from_file && !same {
                let (value, origin) = (shown(&key, value.as_ref()), self.origin(&key));
                return Err(ConfigError::InvalidValue { key, value, expected: expected.into(), origin });
            }
        }
        Ok(())
    }

    /// figment's error as ours; `at` (`miners[0]`) prefixes the key, `figment` holds the value.
    pub fn error(&self, figment: &Figment, e: figment::Error, at: &str) -> ConfigError {
        let path = e.path.join(".");
        let key = join(at, &path);
        let origin = self.origin_of(figment.find_metadata(&path).or(e.metadata.as_ref()));
        let expected = match e.kind {
            Kind::UnknownField(field, known) => {
                let mut known = known.to_vec();
                if path == field && at.is_empty() {
                    known.push("miners"); // read apart from the top level's keys
                }
                let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
                let suggestion = suggest(&field, &known).map(|k| join(parent, &k));
                return ConfigError::UnknownKey { key, origin, suggestion };
            }
            Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => match table_keys(&expected) {
                Some(keys) => table_of(&key, keys),
                None => expected,
            },
            Kind::UnknownVariant(_, names) => one_of(names),
            Kind::Message(message) => message,
            other => other.to_string(),
        };
        let value = figment.find_value(&path).ok();
        ConfigError::InvalidValue { value: shown(&key, value.as_ref()), key, expected, origin }
    }
}

/// Dotted `key` under `at`.
pub(super) fn join(at: &str, key: &str) -> String {
    match (at, key) {
        ("", key) | (key, "") => key.to_owned(),
        _ => format!("{at}.{key}"),
    }
}

/// The known key nearest to `field` (any case, `-` for `_`), when it is near.
fn suggest(field: &str, known: &[&str]) -> Option<String> {
    let field = field.to_ascii_lowercase().replace('-', "_");
    let nearest = known.iter().map(|k| (strsim::levenshtein(&field, k), *k)).min();
    nearest.filter(|(d, _)| *d <= 3).map(|(_, k)| k.to_owned())
}

/// "a table with keys" `key.name`, … for an expected table.
pub(super) fn table_of(key: &str, names: &[&str]) -> String {
    let mut keys: Vec<String> = names.iter().map(|n| join(key, n)).collect();
    keys.sort();
    format!("a table with keys {}", keys.join(", "))
}

/// The keys of the table serde expected (its `expecting` is "struct Name").
fn table_keys(expected: &str) -> Option<&'static [&'static str]> {
    Some(match expected.strip_prefix("struct ")? {
        "WalletConfig" => keys_of::<WalletConfig>(),
        "SubtensorConfig" => keys_of::<SubtensorConfig>(),
        "MetricsConfig" => keys_of::<MetricsConfig>(),
        "S3Config" => keys_of::<S3Config>(),
        "RuntimeConfig" => keys_of::<RuntimeConfig>(),
        "DataConfig" => keys_of::<DataConfig>(),
        "MinerOverrides" => keys_of::<MinerOverrides>(),
        "WalletOverrides" => keys_of::<WalletOverrides>(),
        _ => return None,
    })
}

/// The keys a derived `Deserialize` declares, asked of it with a deserializer that only
/// listens to `deserialize_struct`.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Keys(&'static [&'static str]);
    impl fmt::Display for Keys {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0.join(", "))
        }
    }
    impl std::error::Error for Keys {}
    impl serde::de::Error for Keys {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Self(&[])
        }
    }
    struct Probe;
    impl<'de> serde::Deserializer<'de> for Probe {
        type Error = Keys;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Keys> {
            Err(Keys(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &str,
            keys: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Keys> {
            Err(Keys(keys))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    T::deserialize(Probe).err().map_or(&[], |k| k.0)
}

/// `"a", "b" or "c"`.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|k| format!("{k:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// A value as an error message shows it: a secret's hidden unless it is empty or not a
/// scalar, a URL's password always.
pub(super) fn shown(key: &str, value: Option<&Value>) -> String {
    match value.and_then(|v| toml::Value::try_from(v).ok()) {
        None => "(nothing)".into(),
        Some(toml::Value::Table(_)) => "(a table)".into(),
        Some(toml::Value::Array(_)) => "(an array)".into(),
        Some(toml::Value::String(s)) if s.is_empty() => "\"\"".into(),
        _ if is_secret_key(key.rsplit('.').next().unwrap_or(key)) => REDACTED.into(),
        Some(toml::Value::String(s)) => format!("{:?}", hide_url_password(&s)),
        Some(other) => other.to_string(),
    }
}

/// `text` with the password of a `scheme://user:password@host` prefix replaced.
fn hide_url_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else { return text.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return text.to_owned() };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
        None => text.to_owned(),
    }
}
