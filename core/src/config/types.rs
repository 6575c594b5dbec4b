//! How each kind of value reads: it checks itself and says what it expects; the loader
//! adds the key, the value and the layer.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::{DeserializeAs, SerializeAs};

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
text_value!(DataSourceSpec, DataSourceSpec::EXPECTED, |t| DataSourceSpec::parse(t)
    .ok_or_else(|| DataSourceSpec::EXPECTED.to_owned()));

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

/// A `serde_with` adapter reading a setting whose Rust type alone does not say what it
/// accepts (`Option<Adapter>` then reads the optional setting).
macro_rules! adapter {
    ($(#[$doc:meta])* $name:ident $(<const $c:ident: u64>)?: $ty:ty = |$d:ident| $read:expr) => {
        $(#[$doc])*
        pub(super) struct $name$(<const $c: u64>)?;

        impl<'de $(, const $c: u64)?> DeserializeAs<'de, $ty> for $name$(<$c>)? {
            fn deserialize_as<D: Deserializer<'de>>($d: D) -> Result<$ty, D::Error> {
                $read
            }
        }
    };
}

const LABEL: &str = "a non-empty project name or process name";
const DATASET: &str = "a Hugging Face dataset name without spaces, e.g. \"HuggingFaceFW/fineweb-edu-score-2\"";
const HPARAMS: &str = "a file path, an http:// or https:// URL, or \"builtin\"";

adapter!(Label: String = |d| from_text(d, LABEL, |t| checked(t, LABEL, |_| true)));
adapter!(Dataset: String = |d| from_text(d, DATASET, |t| checked(t, DATASET, no_spaces)));
adapter!(
    /// `subtensor.chain_endpoint`.
    WsUrl: String = |d| from_text(d, "a ws:// or wss:// URL", |t| checked(t.trim(), "a ws:// or wss:// URL", is_ws_url))
);
adapter!(
    /// A path, `~` not yet expanded (see `MinerConfig::expand_home`).
    NonEmptyPath: PathBuf = |d| from_text(d, "a non-empty path", |t| checked(t, "a non-empty path", |_| true).map(PathBuf::from))
);
adapter!(Hparams: HparamsSource = |d| from_text(d, HPARAMS, |t| HparamsSource::parse(t).map_err(|e| format!("{HPARAMS} ({e})"))));
adapter!(Positive: u32 = |d| integer(d, 1, u32::MAX.into(), "").map(|n| n as u32));
adapter!(Netuid: u16 = |d| integer(d, 0, u16::MAX.into(), "").map(|n| n as u16));
adapter!(Seed: u64 = |d| integer(d, 0, u64::MAX, "a seed, "));
adapter!(Windows<const MIN: u64>: u64 = |d| integer(d, MIN, u64::MAX, "a number of windows, "));
adapter!(
    /// A duration in whole seconds, at least `MIN`.
    Secs<const MIN: u64>: Duration = |d| integer(d, MIN, u64::MAX, "a number of seconds, ").map(Duration::from_secs)
);
adapter!(Millis: Duration = |d| integer(d, 1, u64::MAX, "a number of milliseconds, ").map(Duration::from_millis));
adapter!(
    /// `metrics.listen`: `host:port`, or `None` (written `"off"`) for no endpoint.
    Listen: Option<SocketAddr> = |d| {
        let expected = "host:port (e.g. \"0.0.0.0:9464\") or \"off\"";
        from_text(d, expected, |t| match t.trim() {
            "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| expected.to_owned()),
        })
    }
);

impl<const MIN: u64> SerializeAs<Duration> for Secs<MIN> {
    fn serialize_as<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl SerializeAs<Duration> for Millis {
    fn serialize_as<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl SerializeAs<Option<SocketAddr>> for Listen {
    fn serialize_as<S: Serializer>(listen: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match listen {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }
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
