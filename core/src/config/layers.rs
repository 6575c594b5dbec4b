//! The layers and how they are read: the `config` crate merges them into one tree whose
//! values remember their layer, and a serde deserializer over that tree turns it into the
//! typed settings. Every error is located here, once: the dotted key, the value as given
//! (secrets hidden), what the setting's type expects, and the layer that set it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Source, Value, ValueKind};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use tracing::{debug, info, warn};

use super::{
    CONFIG_DIR_ENV, ConfigError, DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE, ENV_PREFIX, ENV_SEPARATOR, REDACTED,
    is_secret_key,
};

/// Origin tag of command-line values (a NUL cannot appear in a file path).
const CLI_ORIGIN: &str = "\0command line";
/// Origin tag the `config` crate gives environment values.
const ENV_ORIGIN: &str = "the environment";
/// The name by which a path setting asks the deserializer to expand a leading `~` (the
/// `serde(rename)` of `types::HomePath`).
pub(super) const HOME_PATH: &str = "\0tessera home path";

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

    /// The merged tree of every layer, the built-in defaults lowest.
    pub(super) fn merged(&self) -> Result<Value, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(super::defaults(), config::FileFormat::Toml));
        if let Some(dir) = &self.config_dir {
            let path = dir.join(DEFAULT_CONFIG_FILE);
            if path.is_file() {
                info!(path = %path.display(), "configuration layer: defaults file");
                builder = builder.add_source(Layer::toml(&path)?);
            } else {
                debug!(path = %path.display(), "no defaults file");
            }
        }
        if let Some(path) = &self.config_file {
            if !path.is_file() {
                return Err(ConfigError::FileNotFound { path: path.clone() });
            }
            info!(path = %path.display(), "configuration layer: --config file");
            builder = builder.add_source(Layer::toml(path)?);
        }
        let env = config::Environment::with_prefix(ENV_PREFIX).separator(ENV_SEPARATOR).ignore_empty(true);
        builder = builder.add_source(env.source(self.env.clone())).add_source(Layer::cli(&self.cli_overrides));
        Ok(Value::new(None, ValueKind::Table(builder.build()?.collect()?)))
    }
}

/// The layer a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(String),
    /// The variable name (reconstructed from the key).
    Env(String),
    /// The command line; the binary's flag for a key is `--key`.
    Cli(String),
}

impl Origin {
    pub(super) fn of(key: &str, value: &Value) -> Self {
        // Merging layers rebuilds tables without an origin; their values keep theirs.
        fn tag(value: &Value) -> Option<&str> {
            value.origin().or_else(|| match &value.kind {
                ValueKind::Table(t) => t.values().find_map(tag),
                ValueKind::Array(a) => a.iter().find_map(tag),
                _ => None,
            })
        }
        match tag(value) {
            None => Self::Default,
            Some(CLI_ORIGIN) => Self::Cli(format!("--{key}")),
            Some(ENV_ORIGIN) => {
                let var = key.to_ascii_uppercase().replace('.', ENV_SEPARATOR);
                Self::Env(format!("{ENV_PREFIX}{ENV_SEPARATOR}{var}"))
            }
            Some(file) => Self::File(file.to_owned()),
        }
    }

    /// Where `key` (dotted, `miners[1].s3.region`) was set in `tree`; the built-in default
    /// when it was not.
    pub(super) fn at(tree: &Value, key: &str) -> Self {
        let mut value = tree;
        for part in key.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let found = match &value.kind {
                ValueKind::Table(t) => t.get(name),
                _ => None,
            };
            value = match (found, index) {
                (Some(v), None) => v,
                (Some(Value { kind: ValueKind::Array(a), .. }), Some(i)) if i < a.len() => &a[i],
                _ => return Self::Default,
            };
        }
        Self::of(key, value)
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

/// A layer whose values all carry their origin: [`CLI_ORIGIN`], or a file's path *as
/// given* (the config crate's own file source records a path relative to the working
/// directory, which makes messages depend on where the miner was started).
#[derive(Debug, Clone)]
struct Layer(config::Map<String, Value>);

impl Layer {
    fn cli(overrides: &[(String, String)]) -> Self {
        let origin = CLI_ORIGIN.to_owned();
        Self(overrides.iter().map(|(k, v)| (k.clone(), Value::new(Some(&origin), v.clone()))).collect())
    }

    fn toml(path: &Path) -> Result<Self, ConfigError> {
        let uri = path.display().to_string();
        let parse_error = |cause: String| ConfigError::FileParse { path: uri.clone(), cause };
        let text = std::fs::read_to_string(path).map_err(|e| parse_error(e.to_string()))?;
        let table = config::File::from_str(&text, config::FileFormat::Toml).collect().map_err(|e| match e {
            config::ConfigError::FileParse { cause, .. } => parse_error(cause.to_string()),
            other => other.into(),
        })?;
        fn retag(value: Value, origin: &String) -> Value {
            let kind = match value.kind {
                ValueKind::Table(t) => ValueKind::Table(t.into_iter().map(|(k, v)| (k, retag(v, origin))).collect()),
                ValueKind::Array(a) => ValueKind::Array(a.into_iter().map(|v| retag(v, origin)).collect()),
                other => other,
            };
            Value::new(Some(origin), kind)
        }
        Ok(Self(table.into_iter().map(|(k, v)| (k, retag(v, &uri))).collect()))
    }
}

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// A deserialization error: what a setting expects until the key that holds it locates it.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeError {
    #[error("expected {0}")]
    Expected(String),
    #[error("unknown key {field:?}")]
    UnknownField { field: String, known: &'static [&'static str] },
    #[error(transparent)]
    Located(ConfigError),
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Expected(msg.to_string())
    }

    fn unknown_field(field: &str, known: &'static [&'static str]) -> Self {
        Self::UnknownField { field: field.to_owned(), known }
    }

    fn unknown_variant(_: &str, known: &'static [&'static str]) -> Self {
        let quoted: Vec<String> = known.iter().map(|k| format!("{k:?}")).collect();
        Self::Expected(match quoted.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => quoted.concat(),
        })
    }
}

impl DeError {
    /// This error of the value at `key`, located.
    fn at(self, key: &str, value: &Value) -> Self {
        let origin = || Origin::of(key, value);
        match self {
            Self::Located(_) => self,
            Self::Expected(expected) => Self::Located(ConfigError::InvalidValue {
                key: key.to_owned(),
                value: shown(key, &value.kind),
                expected,
                origin: origin(),
            }),
            Self::UnknownField { field, known } => {
                let key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
                // Suggested relative to the table the user is in: a [[miners]] entry or the top.
                let prefix = key[..key.len() - field.len()]
                    .rsplit_once("].")
                    .map_or(&key[..key.len() - field.len()], |(_, p)| p);
                let norm = field.to_ascii_lowercase().replace('-', "_");
                let suggestion = known
                    .iter()
                    .map(|k| (strsim::levenshtein(&norm, k), k))
                    .filter(|(d, _)| *d <= 3)
                    .min_by_key(|(d, _)| *d)
                    .map(|(_, k)| format!("{prefix}{k}"));
                let value = match value_at(value, &field) {
                    Some(v) => Origin::of(&key, v),
                    None => origin(),
                };
                Self::Located(ConfigError::UnknownKey { key, origin: value, suggestion })
            }
        }
    }

    pub(super) fn into_config(self) -> ConfigError {
        match self {
            Self::Located(e) => e,
            other => ConfigError::Layers(other.to_string()),
        }
    }
}

fn value_at<'a>(table: &'a Value, field: &str) -> Option<&'a Value> {
    match &table.kind {
        ValueKind::Table(t) => t.get(field),
        _ => None,
    }
}

/// A value as it appears in an error message: a secret's hidden unless it is empty or not a
/// scalar, a URL's password always.
fn shown(key: &str, kind: &ValueKind) -> String {
    match kind {
        ValueKind::Nil => "(nothing)".into(),
        ValueKind::Table(_) => "(a table)".into(),
        ValueKind::Array(_) => "(an array)".into(),
        ValueKind::String(s) if s.is_empty() => "\"\"".into(),
        _ if is_secret_key(key.rsplit('.').next().unwrap_or(key)) => REDACTED.into(),
        ValueKind::String(s) => format!("{:?}", hide_url_password(s)),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(v) => v.to_string(),
        ValueKind::I128(v) => v.to_string(),
        ValueKind::U64(v) => v.to_string(),
        ValueKind::U128(v) => v.to_string(),
        ValueKind::Float(v) => v.to_string(),
    }
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

/// Expands a leading `~` (alone or followed by `/`) to `home`.
pub fn expand_tilde(path: &str, home: Option<&Path>) -> Result<PathBuf, TildeError> {
    let Some(rest) = path.strip_prefix('~') else { return Ok(PathBuf::from(path)) };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(TildeError::OtherUser);
    }
    Ok(home.ok_or(TildeError::NoHome)?.join(rest.trim_start_matches('/')))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TildeError {
    #[error("HOME is not set, so a leading ~ in the path cannot be expanded")]
    NoHome,
    #[error("~user paths are not supported")]
    OtherUser,
}

/// Deserializes the typed settings from the merged tree: strict about types in files (a
/// string is not a number), while the environment and the command line, which only have
/// strings, may spell numbers and booleans as text.
pub(super) struct De<'a> {
    pub value: &'a Value,
    pub key: String,
    pub home: Option<&'a Path>,
}

impl<'a> De<'a> {
    fn child(&self, key: String, value: &'a Value) -> Self {
        Self { value, key, home: self.home }
    }

    fn uint(&self, max: u64) -> Result<u64, DeError> {
        let n = match &self.value.kind {
            ValueKind::I64(v) => u64::try_from(*v).ok(),
            ValueKind::U64(v) => Some(*v),
            ValueKind::I128(v) => u64::try_from(*v).ok(),
            ValueKind::U128(v) => u64::try_from(*v).ok(),
            ValueKind::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.filter(|n| *n <= max).ok_or_else(|| DeError::Expected(format!("an integer 0..={max}")))
    }

    fn text(&self, expected: &str) -> Result<&'a str, DeError> {
        match &self.value.kind {
            ValueKind::String(s) => Ok(s),
            _ => Err(DeError::Expected(expected.to_owned())),
        }
    }
}

/// The largest integer a setting may hold: TOML integers are signed 64-bit, and the printed
/// configuration must read back.
pub(super) const MAX_INTEGER: u64 = i64::MAX as u64;

macro_rules! uints {
    ($($method:ident: $max:expr),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.visit_u64(self.uint($max)?)
        }
    )*};
}

impl<'de, 'a> Deserializer<'de> for De<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value.kind {
            ValueKind::Nil => visitor.visit_unit(),
            ValueKind::Boolean(b) => visitor.visit_bool(*b),
            ValueKind::I64(v) => visitor.visit_i64(*v),
            ValueKind::I128(v) => visitor.visit_i128(*v),
            ValueKind::U64(v) => visitor.visit_u64(*v),
            ValueKind::U128(v) => visitor.visit_u128(*v),
            ValueKind::Float(v) => visitor.visit_f64(*v),
            ValueKind::String(s) => visitor.visit_str(s),
            ValueKind::Table(_) => self.deserialize_map(visitor),
            ValueKind::Array(_) => self.deserialize_seq(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let b = match &self.value.kind {
            ValueKind::Boolean(b) => Some(*b),
            ValueKind::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            },
            _ => None,
        };
        visitor.visit_bool(b.ok_or_else(|| DeError::Expected("a boolean (true or false)".into()))?)
    }

    uints!(deserialize_u8: u8::MAX.into(), deserialize_u16: u16::MAX.into(), deserialize_u32: u32::MAX.into(), deserialize_u64: MAX_INTEGER);

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.text("a string")?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value.kind {
            ValueKind::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &str, visitor: V) -> Result<V::Value, DeError> {
        if name != HOME_PATH {
            return visitor.visit_newtype_struct(self);
        }
        let expected = "a non-empty path";
        let text = self.text(expected)?;
        if text.trim().is_empty() {
            return Err(DeError::Expected(expected.into()));
        }
        let path = expand_tilde(text, self.home).map_err(|e| DeError::Expected(format!("a path ({e})")))?;
        visitor.visit_newtype_struct(path.to_string_lossy().into_owned().into_deserializer())
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let ValueKind::Array(items) = &self.value.kind else {
            return Err(DeError::Expected(format!("an array of tables: one [[{}]] table per entry", self.key)));
        };
        visitor.visit_seq(Items { de: &self, items: items.iter().enumerate() })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_struct("", &[], visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let ValueKind::Table(table) = &self.value.kind else {
            let prefix = if self.key.is_empty() { String::new() } else { format!("{}.", self.key) };
            let mut keys: Vec<String> = fields.iter().map(|f| format!("{prefix}{f}")).collect();
            keys.sort();
            return Err(DeError::Expected(format!("a table with keys {}", keys.join(", "))));
        };
        let mut entries: Vec<(&String, &Value)> = table.iter().collect();
        entries.sort_by_key(|(k, _)| *k);
        let access = Entries { de: &self, entries: entries.into_iter(), current: None };
        visitor.visit_map(access).map_err(|e| e.at(&self.key, self.value))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let text = self.text("a string")?.trim().to_owned();
        visitor.visit_enum(text.into_deserializer())
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char bytes byte_buf unit unit_struct tuple tuple_struct identifier
    }
}

/// The entries of a table, in key order, each deserialized at its own key.
struct Entries<'b, 'a, I> {
    de: &'b De<'a>,
    entries: I,
    current: Option<(&'a String, &'a Value)>,
}

impl<'de, 'a, I: Iterator<Item = (&'a String, &'a Value)>> MapAccess<'de> for Entries<'_, 'a, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.current = Some((key, value));
        seed.deserialize(key.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let (key, value) = self.current.ok_or_else(|| DeError::Expected("a value".into()))?;
        let key = if self.de.key.is_empty() { key.clone() } else { format!("{}.{key}", self.de.key) };
        seed.deserialize(self.de.child(key.clone(), value)).map_err(|e| e.at(&key, value))
    }
}

/// The items of an array, each deserialized at `key[index]`.
struct Items<'b, 'a, I> {
    de: &'b De<'a>,
    items: I,
}

impl<'de, 'a, I: Iterator<Item = (usize, &'a Value)>> SeqAccess<'de> for Items<'_, 'a, I> {
    type Error = DeError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, DeError> {
        let Some((index, value)) = self.items.next() else { return Ok(None) };
        let key = format!("{}[{index}]", self.de.key);
        seed.deserialize(self.de.child(key.clone(), value)).map(Some).map_err(|e| e.at(&key, value))
    }
}
