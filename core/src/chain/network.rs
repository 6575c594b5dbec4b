//! Which subtensor network a node joins, and the well-known endpoints of the public ones.

use std::fmt;

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

pub fn is_ws_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some_and(|h| !h.is_empty()))
}
