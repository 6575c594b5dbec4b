//! The value types of settings. Each checks itself when deserialized, and its error says
//! what it expects; the loader adds the key, the value and the layer.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::REDACTED;
use crate::hparams::HparamsSource;

/// Text that passes `ok` and is not blank, else `expected`.
pub(super) fn text<'de, D: Deserializer<'de>>(d: D, expected: &str, ok: fn(&str) -> bool) -> Result<String, D::Error> {
    String::deserialize(d).ok().filter(|s| !s.trim().is_empty() && ok(s)).ok_or_else(|| D::Error::custom(expected))
}

/// Implements `Serialize` and `Deserialize` through `Display` and a parser.
macro_rules! via_text {
    ($ty:ty, $expected:expr, $parse:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let parse: fn(&str) -> Result<$ty, String> = $parse;
                let text = text(d, $expected, |_| true)?;
                parse(&text).map_err(|why| D::Error::custom(why))
            }
        }
    };
}

fn no_spaces(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A path setting, `~`-expanded from `$HOME` by the loader, which knows it by its name
/// (`layers::HOME_PATH`; a NUL cannot clash with a real type's name).
#[derive(Deserialize)]
#[serde(rename = "\0tessera home path")]
struct HomePath(String);

/// `deserialize_with` for a `~`-expanded path.
pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    HomePath::deserialize(d).map(|p| PathBuf::from(p.0))
}

/// `deserialize_with` for an optional `~`-expanded path.
pub(super) fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

/// `deserialize_with` for `hparams`: "builtin", an http(s) URL, or a `~`-expanded file.
pub(super) fn hparams<'de, D: Deserializer<'de>>(d: D) -> Result<HparamsSource, D::Error> {
    let expected = "a file path, an http:// or https:// URL, or \"builtin\"";
    let text = HomePath::deserialize(d).map_err(|e| D::Error::custom(format!("{expected} ({e})")))?.0;
    HparamsSource::parse(&text).map_err(|e| D::Error::custom(format!("{expected} ({e})")))
}

/// An integer setting within `MIN..=MAX` with what it counts, for messages.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident: $ty:ty, $min:expr, $what:expr) => {
        $(#[$doc])*
        pub(super) mod $name {
            use serde::de::Error as _;
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let max = (<$ty>::MAX as u64).min(super::super::layers::MAX_INTEGER);
                let what: &str = $what;
                let expected = if what.is_empty() {
                    format!("an integer {}..={max}", $min)
                } else {
                    format!("{what}, an integer {}..={max}", $min)
                };
                u64::deserialize(d)
                    .ok()
                    .filter(|n| (($min)..=max).contains(n))
                    .and_then(|n| <$ty>::try_from(n).ok())
                    .ok_or_else(|| D::Error::custom(expected))
            }

            pub fn serialize<S: Serializer>(n: &$ty, s: S) -> Result<S::Ok, S::Error> {
                n.serialize(s)
            }

            #[allow(dead_code)]
            pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
                deserialize(d).map(Some)
            }
        }
    };
}

bounded!(positive: u32, 1, "");
bounded!(netuid: u16, 0, "");
bounded!(seed: u64, 0, "a seed");
bounded!(windows: u64, 1, "a number of windows");
bounded!(windows_or_never: u64, 0, "a number of windows (0: never)");

/// A duration setting in whole `$unit`s, at least `$min`.
macro_rules! duration {
    ($name:ident, $min:expr, $what:expr, $from:ident, $as:ident) => {
        pub(super) mod $name {
            use std::time::Duration;

            use serde::de::Error as _;
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                let max = super::super::layers::MAX_INTEGER;
                let expected = format!("{}, an integer {}..={max}", $what, $min);
                let min: u64 = $min;
                let n = u64::deserialize(d).ok().filter(|n| *n >= min).ok_or_else(|| D::Error::custom(expected))?;
                Ok(Duration::$from(n))
            }

            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u64(u64::try_from(d.$as()).unwrap_or(u64::MAX))
            }
        }
    };
}

duration!(secs, 1, "a number of seconds", from_secs, as_secs);
duration!(secs_or_zero, 0, "a number of seconds", from_secs, as_secs);
duration!(millis, 1, "a number of milliseconds", from_millis, as_millis);

/// A text setting checked by a rule, with what it must be.
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $expected:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const EXPECTED: &str = $expected;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                text(d, $expected, $ok).map(Self)
            }
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
    };
}

checked_text!(
    /// A wallet or hotkey name: a file name in the wallets directory.
    KeyName, "a non-empty name without '/'", |s| !s.contains(['/', '\\'])
);
checked_text!(
    /// A `[[miners]]` name: a label in logs and metrics and a directory name.
    MinerName, "a miner name: 1-32 letters, digits, '_' or '-'", is_miner_name
);
checked_text!(
    /// An S3 region name as the storage client accepts it.
    Region, "a region name: lowercase letters, digits and '-', e.g. \"us-east-1\"", |r| r.len() <= 64
        && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);
checked_text!(
    /// A profile in `~/.aws/credentials`.
    Profile, "a non-empty profile name", |_| true
);

pub(super) fn is_miner_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `deserialize_with` for `project` and `process_name`.
pub(super) fn label<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(d, "a non-empty project name or process name", |_| true)
}

/// `deserialize_with` for `data.dataset`.
pub(super) fn dataset<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let expected = "a Hugging Face dataset name without spaces, e.g. \"HuggingFaceFW/fineweb-edu-score-2\"";
    text(d, expected, no_spaces).map(Some)
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
        let s = text(d, "a key or token without spaces", no_spaces)?;
        if s == REDACTED {
            let expected = format!("the real key or token, not the {REDACTED} placeholder of printed configuration");
            return Err(D::Error::custom(expected));
        }
        Ok(Self(s))
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

/// An S3-compatible endpoint: `http(s)://host[:port]`, nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(pub url::Url);

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Endpoint {
    pub const EXPECTED: &str = "an http:// or https:// URL of an S3-compatible endpoint, scheme://host[:port] with no path, query or user name";

    /// Checks an endpoint; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
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
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

via_text!(Endpoint, Endpoint::EXPECTED, |t| Endpoint::parse(t)
    .map_err(|why| format!("{} ({why})", Endpoint::EXPECTED)));

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
        match text(d, expected, |_| true)?.trim() {
            "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| D::Error::custom(expected)),
        }
    }

    pub fn serialize<S: Serializer>(listen: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match listen {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
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
    pub const EXPECTED: &str = "\"cpu\", \"cuda\" or \"cuda:N\"";

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

via_text!(Device, Device::EXPECTED, |t| Device::parse(t).ok_or_else(|| Device::EXPECTED.to_owned()));

pub const FINNEY_ENDPOINT: &str = "wss://entrypoint-finney.opentensor.ai:443";
pub const TEST_ENDPOINT: &str = "wss://test.finney.opentensor.ai:443/";
pub const LOCAL_ENDPOINT: &str = "ws://127.0.0.1:9944";

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
    pub const EXPECTED: &str = "\"finney\", \"test\", \"local\" or a ws:// or wss:// URL";

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

via_text!(Network, Network::EXPECTED, |t| Network::parse(t).ok_or_else(|| Network::EXPECTED.to_owned()));

fn is_ws_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// `deserialize_with` for `subtensor.chain_endpoint`: a `ws://` or `wss://` URL.
pub(super) fn ws_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    text(d, "a ws:// or wss:// URL", |t| is_ws_url(t.trim())).map(|t| Some(t.trim().to_owned()))
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
    pub const EXPECTED: &str =
        "\"huggingface\", \"synthetic\" or the path of a local file or directory of jsonl/txt/parquet shards";

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

impl<'de> Deserialize<'de> for DataSourceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = HomePath::deserialize(d).map_err(|e| D::Error::custom(format!("{} ({e})", Self::EXPECTED)))?.0;
        Self::parse(&text).ok_or_else(|| D::Error::custom(Self::EXPECTED))
    }
}

/// An S3 bucket name that follows AWS's naming rules (as the seed checked at start).
/// `Default` is the empty name of a configuration whose bucket is not resolved yet; a
/// loaded configuration always has a valid one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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

    pub(super) fn is_unset(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

via_text!(BucketName, "an S3 bucket name", |t| BucketName::parse(t)
    .map_err(|why| format!("an S3 bucket name: {} ({why})", BucketNameError::RULES)));
