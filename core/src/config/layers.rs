//! The layers: each read into a TOML table, merged into one tree that remembers which
//! layer set each key, and deserialized into the typed settings. Every error is located
//! here, once: the dotted key, the value as given (secrets hidden), what the setting
//! expects, and the layer that set it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use toml::{Table, Value};
use tracing::{info, warn};

use super::{
    CONFIG_DIR_ENV, ConfigError, DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE, ENV_PREFIX, ENV_SEPARATOR, REDACTED,
    is_secret_key, types,
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

    /// Every layer merged, the built-in defaults lowest.
    pub(super) fn merged(&self) -> Result<Layers, ConfigError> {
        let mut layers = Layers { home: self.home.clone(), ..Layers::default() };
        let defaults = toml::from_str(super::defaults())
            .map_err(|e| ConfigError::FileParse { path: "(built-in defaults)".into(), cause: e.to_string() })?;
        layers.merge(defaults, &Origin::Default);
        if let Some(path) = self.config_file.as_ref().filter(|p| !p.is_file()) {
            return Err(ConfigError::FileNotFound { path: path.clone() });
        }
        let dir_file = self.config_dir.as_ref().map(|d| d.join(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file());
        for path in dir_file.iter().chain(&self.config_file) {
            info!(path = %path.display(), "configuration layer: file");
            let cause = |e: &dyn fmt::Display| ConfigError::FileParse {
                path: path.display().to_string(),
                cause: e.to_string(),
            };
            let text = std::fs::read_to_string(path).map_err(|e| cause(&e))?;
            layers.merge(toml::from_str(&text).map_err(|e| cause(&e))?, &Origin::File(path.display().to_string()));
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
                layers.set(&key, value, Origin::Env(var.clone()));
            }
        }
        for (key, value) in &self.cli_overrides {
            layers.set(key, value.clone(), Origin::Cli(format!("--{key}")));
        }
        Ok(layers)
    }
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

/// The merged layers: one tree, and the layer of every key set (dotted, `miners[0].device`).
#[derive(Debug, Default)]
pub(super) struct Layers {
    pub tree: Table,
    origins: BTreeMap<String, Origin>,
    home: Option<PathBuf>,
}

impl Layers {
    /// Where `key` was set: its own layer, else that of the first key set inside it.
    pub fn origin(&self, key: &str) -> Origin {
        let mut from_key = self.origins.range(key.to_owned()..).take_while(|(k, _)| k.starts_with(key));
        from_key.find(|(k, _)| within(k, key)).map_or(Origin::Default, |(_, origin)| origin.clone())
    }

    fn merge(&mut self, layer: Table, origin: &Origin) {
        merge(&mut self.tree, layer, "", &mut |key, value| {
            self.origins.retain(|k, _| !within(k, key));
            record(&mut self.origins, key, value, origin);
        });
    }

    /// Sets a dotted key to text (the environment and the command line have no types).
    fn set(&mut self, key: &str, text: String, origin: Origin) {
        let nested =
            key.rsplit('.').fold(Value::String(text), |v, part| Value::Table(Table::from_iter([(part.into(), v)])));
        if let Value::Table(layer) = nested {
            self.merge(layer, &origin);
        }
    }

    /// `tree` (a part of these layers at `at`, dotted, or all of them at "") as `T`.
    /// Text from the environment and the command line is read as the integer or boolean
    /// the setting expects when it spells one; files are taken as typed.
    pub fn read<T: DeserializeOwned>(&self, tree: &Table, at: &str) -> Result<T, ConfigError> {
        let deserialize = |typed: &Table| {
            types::with_home(self.home.as_deref(), || serde_path_to_error::deserialize(Value::Table(typed.clone())))
        };
        let mut typed = tree.clone();
        loop {
            let err = match deserialize(&typed) {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let path = err.path().to_string();
            let message = err.inner().message().trim().to_owned();
            let key = join(at, &path);
            // A miner's key was set in its entry, else at the top level.
            let origin = match self.origin(&key) {
                Origin::Default if !at.is_empty() => self.origin(&path),
                own => own,
            };
            if matches!(origin, Origin::Env(_) | Origin::Cli(_))
                && let Some(value) = get_mut(&mut typed, &path)
                && let Some(retyped) = retype(value, &message)
            {
                *value = retyped;
                continue;
            }
            // What a value of the wrong kind should have been is learnt from the error that a
            // value of the right kind which no setting takes gives: serde lists the names.
            let names_for = |probe: Value| {
                let mut probed = typed.clone();
                if let Some(value) = get_mut(&mut probed, &path) {
                    *value = probe;
                }
                deserialize(&probed).err().map_or_else(Vec::new, |e| expected_names(e.inner().message()))
            };
            return Err(if message.starts_with("unknown field") {
                let mut known = expected_names(&message);
                if !path.contains('.') && at.is_empty() {
                    known.push("miners".into()); // read apart from the top level's
                }
                let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
                let field = message.split('`').nth(1).unwrap_or_default();
                ConfigError::UnknownKey { suggestion: suggest(field, &known).map(|k| join(parent, &k)), origin, key }
            } else {
                let expected = if message.contains("expected struct") {
                    table_of(&key, &names_for(Value::Table(Table::from_iter([("\0".into(), Value::Integer(0))]))))
                } else if message.contains("variant") {
                    one_of(&names_for(Value::String("\0".into())))
                } else if message.starts_with("invalid type:") || message.starts_with("invalid value:") {
                    message.rsplit_once("expected ").map_or(message.clone(), |(_, e)| e.to_owned())
                } else {
                    message
                };
                ConfigError::InvalidValue { value: shown(&key, get(tree, &path)), key, expected, origin }
            });
        }
    }

    /// An invalid-value error at `key`, located.
    pub fn invalid(&self, key: &str, value: Option<&Value>, expected: String) -> ConfigError {
        ConfigError::InvalidValue { key: key.to_owned(), value: shown(key, value), expected, origin: self.origin(key) }
    }
}

/// Merges `layer` into `into`: tables key by key, anything else replaced; `set` sees each
/// replaced key (dotted) and its new value.
pub(super) fn merge(into: &mut Table, layer: Table, at: &str, set: &mut dyn FnMut(&str, &Value)) {
    for (name, value) in layer {
        let key = join(at, &name);
        match (into.get_mut(&name), value) {
            (Some(Value::Table(old)), Value::Table(new)) => merge(old, new, &key, set),
            (_, value) => {
                set(&key, &value);
                into.insert(name, value);
            }
        }
    }
}

fn record(origins: &mut BTreeMap<String, Origin>, key: &str, value: &Value, origin: &Origin) {
    origins.insert(key.to_owned(), origin.clone());
    match value {
        Value::Table(t) => t.iter().for_each(|(k, v)| record(origins, &join(key, k), v, origin)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| record(origins, &format!("{key}[{i}]"), v, origin)),
        _ => {}
    }
}

/// Whether dotted `key` is `table` or inside it.
fn within(key: &str, table: &str) -> bool {
    key.strip_prefix(table).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

pub(super) fn join(at: &str, key: &str) -> String {
    match (at, key) {
        ("", key) | (key, "." | "") => key.to_owned(),
        _ => format!("{at}.{key}"),
    }
}

fn get<'a>(tree: &'a Table, path: &str) -> Option<&'a Value> {
    let (first, rest) = path.split_once('.').unwrap_or((path, ""));
    match (tree.get(first)?, rest) {
        (value, "") => Some(value),
        (Value::Table(t), rest) => get(t, rest),
        _ => None,
    }
}

fn get_mut<'a>(tree: &'a mut Table, path: &str) -> Option<&'a mut Value> {
    let (first, rest) = path.split_once('.').unwrap_or((path, ""));
    match (tree.get_mut(first)?, rest) {
        (value, "") => Some(value),
        (Value::Table(t), rest) => get_mut(t, rest),
        _ => None,
    }
}

/// Text as the boolean or integer that `message`, the error it gave, says was expected.
fn retype(value: &Value, message: &str) -> Option<Value> {
    let Value::String(text) = value else { return None };
    if !message.contains("boolean") {
        return text.trim().parse().ok().map(Value::Integer);
    }
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(Value::Boolean(true)),
        "false" | "0" | "no" | "off" => Some(Value::Boolean(false)),
        _ => None,
    }
}

/// The names a serde message says were expected: the `quoted` ones after the first (the
/// field or variant given).
fn expected_names(message: &str) -> Vec<String> {
    message.split('`').skip(3).step_by(2).map(str::to_owned).collect()
}

/// The known key nearest to `field` (any case, `-` for `_`), when it is near.
pub(super) fn suggest(field: &str, known: &[impl AsRef<str>]) -> Option<String> {
    let field = field.to_ascii_lowercase().replace('-', "_");
    let nearest = known.iter().map(|k| (strsim::levenshtein(&field, k.as_ref()), k.as_ref())).min();
    nearest.filter(|(d, _)| *d <= 3).map(|(_, k)| k.to_owned())
}

/// "a table with keys" `key.name`, … for an expected table.
pub(super) fn table_of(key: &str, names: &[impl AsRef<str>]) -> String {
    let mut keys: Vec<String> = names.iter().map(|n| join(key, n.as_ref())).collect();
    keys.sort();
    format!("a table with keys {}", keys.join(", "))
}

/// `"a", "b" or "c"`.
fn one_of(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|k| format!("{k:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// A value as it appears in an error message: a secret's hidden unless it is empty or not a
/// scalar, a URL's password always.
pub(super) fn shown(key: &str, value: Option<&Value>) -> String {
    match value {
        None => "(nothing)".into(),
        Some(Value::Table(_)) => "(a table)".into(),
        Some(Value::Array(_)) => "(an array)".into(),
        Some(Value::String(s)) if s.is_empty() => "\"\"".into(),
        _ if is_secret_key(key.rsplit('.').next().unwrap_or(key)) => REDACTED.into(),
        Some(Value::String(s)) => format!("{:?}", hide_url_password(s)),
        Some(other) => other.to_string(),
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
