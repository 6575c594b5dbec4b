//! How each kind of value reads: it checks itself and says what it expects; the loader
//! adds the key, the value and the layer.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::REDACTED;
use crate::chain::{Network, is_ws_url};
use crate::hparams::HparamsSource;
use crate::model::Device;
use crate::storage::{BucketName, BucketNameError, Endpoint};

/// Reads a value from text with `parse`; a value that is not text is refused with `expected`.
fn from_text<'de, D: Deserializer<'de>, T>(
    d: D,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let text = String::deserialize(d).map_err(|_| D::Error::custom(expected))?;
    parse(&text).map_err(D::Error::custom)
}

/// Text that is not blank and passes `ok`, else `expected`.
fn checked(text: &str, expected: &str, ok: fn(&str) -> bool) -> Result<String, String> {
    if !text.trim().is_empty() && ok(text) { Ok(text.to_owned()) } else { Err(expected.to_owned()) }
}

/// `Serialize` through `Display`, and `Deserialize` from text through a parser.
macro_rules! text_value {
    ($ty:ty, $expected:expr, $parse:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_text(d, $expected, $parse)
            }
        }
    };
}

text_value!(Device, Device::EXPECTED, |t| Device::parse(t).ok_or_else(|| Device::EXPECTED.to_owned()));
text_value!(Network, Network::EXPECTED, |t| Network::parse(t).ok_or_else(|| Network::EXPECTED.to_owned()));
text_value!(Endpoint, Endpoint::EXPECTED, |t| Endpoint::parse(t)
    .map_err(|why| format!("{} ({why})", Endpoint::EXPECTED)));
text_value!(BucketName, "an S3 bucket name", |t| BucketName::parse(t)
    .map_err(|why| format!("an S3 bucket name: {} ({why})", BucketNameError::RULES)));

/// A name-like setting: non-blank text that passes a rule.
macro_rules! name_value {
    ($(#[$doc:meta])* $name:ident, $expected:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const EXPECTED: &str = $expected;
        }

        impl Deref for $name {
            type Target = String;
            fn deref(&self) -> &String {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        text_value!($name, $expected, |t| checked(t, $expected, $ok).map(Self));
    };
}

name_value!(
    /// A wallet or hotkey name: a file name in the wallets directory.
    KeyName, "a non-empty name without '/'", |s| !s.contains(['/', '\\'])
);
name_value!(
    /// A `[[miners]]` name: a label in logs and metrics and a directory name.
    MinerName, "a miner name: 1-32 letters, digits, '_' or '-'", is_miner_name
);
name_value!(
    /// An S3 region name as the storage client accepts it.
    Region, "a region name: lowercase letters, digits and '-', e.g. \"us-east-1\"", |r| r.len() <= 64
        && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);
name_value!(
    /// A profile in `~/.aws/credentials`.
    Profile, "a non-empty profile name", |_| true
);

pub(super) fn is_miner_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn no_spaces(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `deserialize_with` for `project` and `process_name`.
pub(super) fn label<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let expected = "a non-empty project name or process name";
    from_text(d, expected, |t| checked(t, expected, |_| true))
}

pub(super) fn opt_label<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    label(d).map(Some)
}

/// `deserialize_with` for `data.dataset`.
pub(super) fn dataset<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let expected = "a Hugging Face dataset name without spaces, e.g. \"HuggingFaceFW/fineweb-edu-score-2\"";
    from_text(d, expected, |t| checked(t, expected, no_spaces)).map(Some)
}

/// `deserialize_with` for `subtensor.chain_endpoint`: a `ws://` or `wss://` URL.
pub(super) fn ws_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let expected = "a ws:// or wss:// URL";
    from_text(d, expected, |t| checked(t.trim(), expected, is_ws_url)).map(Some)
}

/// A key or token. `Debug` hides it; printed configuration replaces it with [`REDACTED`],
/// which therefore is refused when read back.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = "a key or token without spaces";
        from_text(d, expected, |t| match checked(t, expected, no_spaces)? {
            s if s == REDACTED => {
                Err(format!("the real key or token, not the {REDACTED} placeholder of printed configuration"))
            }
            s => Ok(Self(s)),
        })
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `metrics.listen`: `host:port`, or `None` (written `"off"`) for no endpoint.
pub(super) mod listen {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let expected = "host:port (e.g. \"0.0.0.0:9464\") or \"off\"";
        from_text(d, expected, |t| match t.trim() {
            "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| expected.to_owned()),
        })
    }

    pub fn serialize<S: Serializer>(listen: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match listen {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
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
    pub const EXPECTED: &str =
        "\"huggingface\", \"synthetic\" or the path of a local file or directory of jsonl/txt/parquet shards";

    /// `huggingface`, `synthetic` (any case), or any other non-blank text as a path (no `~`
    /// expansion here; the configuration does that).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" => None,
            "huggingface" => Some(Self::HuggingFace),
            "synthetic" => Some(Self::Synthetic),
            _ => Some(Self::Local(PathBuf::from(text))),
        }
    }
}

impl fmt::Display for DataSourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HuggingFace => f.write_str("huggingface"),
            Self::Synthetic => f.write_str("synthetic"),
            // A relative path spelled like a keyword reads back as the path.
            Self::Local(path) if !matches!(Self::parse(&path.to_string_lossy()), Some(Self::Local(_))) => {
                write!(f, "./{}", path.display())
            }
            Self::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

text_value!(DataSourceSpec, DataSourceSpec::EXPECTED, |t| {
    let text = home_path(t).map_err(|why| format!("{} ({why})", DataSourceSpec::EXPECTED))?;
    DataSourceSpec::parse(&text.to_string_lossy()).ok_or_else(|| DataSourceSpec::EXPECTED.to_owned())
});

thread_local! {
    /// The home directory `~` stands for while a configuration is being read.
    static HOME: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Runs `read` with `~` in path settings standing for `home`. Path values expand
/// themselves as they are read, so that a bad one is reported at its own key.
pub(super) fn with_home<T>(home: Option<&Path>, read: impl FnOnce() -> T) -> T {
    HOME.with(|h| h.replace(home.map(Path::to_owned)));
    let result = read();
    HOME.with(|h| h.replace(None));
    result
}

/// `text` as a path, a leading `~` expanded; refused when blank.
fn home_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err("a non-empty path".into());
    }
    HOME.with(|h| expand_tilde(text, h.borrow().as_deref())).map_err(|e| format!("a path ({e})"))
}

/// `deserialize_with` for a `~`-expanded path.
pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    from_text(d, "a non-empty path", home_path)
}

/// `deserialize_with` for an optional `~`-expanded path.
pub(super) fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

/// `deserialize_with` for `hparams`: "builtin", an http(s) URL, or a `~`-expanded file.
pub(super) fn hparams<'de, D: Deserializer<'de>>(d: D) -> Result<HparamsSource, D::Error> {
    let expected = "a file path, an http:// or https:// URL, or \"builtin\"";
    from_text(d, expected, |t| {
        let text = home_path(t).map_err(|why| format!("{expected} ({why})"))?;
        HparamsSource::parse(&text.to_string_lossy()).map_err(|e| format!("{expected} ({e})"))
    })
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

/// An integer in `min..=max` (at most TOML's largest, so printed configuration reads
/// back); `what` says what it counts.
fn integer<'de, D: Deserializer<'de>>(d: D, min: u64, max: u64, what: &str) -> Result<u64, D::Error> {
    let max = max.min(i64::MAX as u64);
    u64::deserialize(d)
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| D::Error::custom(format!("{what}an integer {min}..={max}")))
}

/// `deserialize_with` for a count of at least 1.
pub(super) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    integer(d, 1, u32::MAX.into(), "").map(|n| n as u32)
}

pub(super) fn opt_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    positive(d).map(Some)
}

pub(super) fn netuid<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    integer(d, 0, u16::MAX.into(), "").map(|n| n as u16)
}

pub(super) fn seed<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    integer(d, 0, u64::MAX, "a seed, ")
}

pub(super) fn windows<'de, D: Deserializer<'de>, const MIN: u64>(d: D) -> Result<u64, D::Error> {
    integer(d, MIN, u64::MAX, "a number of windows, ")
}

pub(super) fn secs<'de, D: Deserializer<'de>, const MIN: u64>(d: D) -> Result<Duration, D::Error> {
    integer(d, MIN, u64::MAX, "a number of seconds, ").map(Duration::from_secs)
}

pub(super) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    integer(d, 1, u64::MAX, "a number of milliseconds, ").map(Duration::from_millis)
}

pub(super) fn as_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

pub(super) fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
