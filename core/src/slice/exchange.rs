//! How peers combine their training, chosen by the network's hparams (`exchange`). Each
//! exchange has its own protocol version, written in every object key and slice header,
//! so slices of the two are never mixed.
//!
//! - [`Exchange::Seed`] (`"seed"`, protocol v1): the Python seed's. `delta-w` carries
//!   parameter *values* after training window `w`; after training window `w+1` the mean of
//!   the `delta-w` values is written over the positions `I(w)`, which replaces part of
//!   window `w+1`'s training with one-window-old values. Kept as the reference.
//! - [`Exchange::Update`] (`"update"`, protocol v2): `delta-w` carries the *update* a miner
//!   made in window `w` at `I(w)` (θ_end − θ_start). At the start of window `w+1` every
//!   miner adds `outer_lr · mean(updates) − own update` at `I(w)`: the mean update of the
//!   valid peers takes the place of the own one, additively, so no training is undone and
//!   a late correction commutes with the training since. `state` slices (values) keep the
//!   replicas from drifting apart, as in the seed.

use serde::{Deserialize, Serialize};

use super::key::PROTOCOL_VERSION;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exchange {
    /// The seed's exchange of parameter values (protocol v1).
    #[default]
    Seed,
    /// Updates averaged in place of the own one (protocol v2).
    Update,
}

impl Exchange {
    /// The protocol version of this exchange's object keys and slice headers.
    pub fn protocol_version(self) -> u16 {
        match self {
            Exchange::Seed => PROTOCOL_VERSION,
            Exchange::Update => PROTOCOL_VERSION + 1,
        }
    }

    /// The exchange a protocol version belongs to.
    pub fn from_protocol_version(version: u16) -> Option<Self> {
        [Exchange::Seed, Exchange::Update].into_iter().find(|e| e.protocol_version() == version)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Exchange::Seed => "seed",
            Exchange::Update => "update",
        }
    }

    pub fn is_seed(&self) -> bool {
        *self == Exchange::Seed
    }
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes one miner downloads per window: the `state` and `delta` slices of each of its
/// `peers` it reads, each `slice_bytes` long. `max_peers` is `exchange_max_peers`, which
/// counts the own slice (never downloaded: it is in the cache), so at most `max_peers − 1`
/// peers are read; `None` or 0 reads them all.
pub fn download_bytes_per_window(peers: u64, max_peers: Option<u64>, slice_bytes: u64) -> u64 {
    let read = match max_peers {
        Some(k) if k > 0 => peers.min(k - 1),
        _ => peers,
    };
    2 * read * slice_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exchange_has_its_own_version_and_name() {
        assert_eq!(Exchange::Seed.protocol_version(), 1);
        assert_eq!(Exchange::Update.protocol_version(), 2);
        for e in [Exchange::Seed, Exchange::Update] {
            assert_eq!(Exchange::from_protocol_version(e.protocol_version()), Some(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{e}\""));
            assert_eq!(serde_json::from_str::<Exchange>(&json).unwrap(), e);
        }
        assert_eq!(Exchange::from_protocol_version(9), None);
        assert!(serde_json::from_str::<Exchange>("\"gossip\"").is_err());
    }

    #[test]
    fn bandwidth_of_the_seed_shape() {
        // 1.2B parameters at compression 100 in bf16: 24 MB a slice.
        let slice = 1_200_000_000 / 100 * 2;
        assert_eq!(download_bytes_per_window(64, None, slice), 3_072_000_000);
        assert_eq!(download_bytes_per_window(64, Some(7), slice), 288_000_000);
        assert_eq!(download_bytes_per_window(3, Some(7), slice), 144_000_000);
        assert_eq!(download_bytes_per_window(3, Some(0), slice), 144_000_000);
    }
}
