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
//! - [`Exchange::SparseLoco`] (`"sparseloco"`, protocol v3): SparseLoCo
//!   ([`crate::sparseloco`]). `delta-w` carries the window's whole update (θ_end − θ_start,
//!   every parameter) compressed with error feedback: each chunk's top-k, 2-bit values.
//!   At the start of window `w+1` every miner sets its model to θ_start(w) plus the outer
//!   step of the peers' aggregate (median-norm clip, contributor mean), so honest miners
//!   that read the same payloads hold the same model to the bit. `state-w` carries values
//!   at `I(w)` *after* that step: what a joining or resynchronising node replays.
//! - [`Exchange::Gradient`] (`"gradient"`, protocol v4): `delta-w` carries the window's
//!   accumulated *gradient* (no step taken), compressed as SparseLoCo's payloads with error
//!   feedback. At the start of window `w+1` every miner takes one AdamW step on the peers'
//!   aggregate gradient: data parallelism over a compressed all-reduce, so honest miners
//!   hold the same model and the same optimizer state. `state-w` as SparseLoCo's.

use serde::{Deserialize, Serialize};

use super::key::PROTOCOL_VERSION;
use crate::window::Window;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exchange {
    /// The seed's exchange of parameter values (protocol v1).
    #[default]
    Seed,
    /// Updates averaged in place of the own one (protocol v2).
    Update,
    /// Whole updates, top-k compressed with error feedback, and one outer step (protocol v3).
    SparseLoco,
    /// Whole gradients, compressed as SparseLoCo's; one AdamW step on the aggregate (protocol v4).
    Gradient,
}

impl Exchange {
    pub const ALL: [Exchange; 4] = [Exchange::Seed, Exchange::Update, Exchange::SparseLoco, Exchange::Gradient];

    /// The protocol version of this exchange's object keys and slice headers.
    pub fn protocol_version(self) -> u16 {
        match self {
            Exchange::Seed => PROTOCOL_VERSION,
            Exchange::Update => PROTOCOL_VERSION + 1,
            Exchange::SparseLoco => PROTOCOL_VERSION + 2,
            Exchange::Gradient => PROTOCOL_VERSION + 3,
        }
    }

    /// The exchange a protocol version belongs to.
    pub fn from_protocol_version(version: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.protocol_version() == version)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Exchange::Seed => "seed",
            Exchange::Update => "update",
            Exchange::SparseLoco => "sparseloco",
            Exchange::Gradient => "gradient",
        }
    }

    pub fn is_seed(&self) -> bool {
        *self == Exchange::Seed
    }

    /// Whether `delta` objects carry updates (added) rather than values (written over).
    pub fn exchanges_updates(self) -> bool {
        matches!(self, Exchange::Update | Exchange::SparseLoco)
    }

    /// Whether `delta` objects are compressed payloads over the whole model (SparseLoCo's
    /// format), averaged by its aggregate, after which every reader holds the same model.
    pub fn is_compressed(self) -> bool {
        matches!(self, Exchange::SparseLoco | Exchange::Gradient)
    }
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Peers whose state slices a compressed-exchange miner reads each window, besides its
/// own, to tell whether it is in step: enough for a majority, few enough to cost little.
pub const IN_STEP_SAMPLE: u64 = 4;
/// About how many values a compressed exchange's state slice holds, whatever the model's
/// size: such a slice only tells whether its writer is in step (every node in step holds
/// the same model, so the same values; a model out of step differs nearly everywhere).
pub const IN_STEP_STATE_VALUES: u64 = 4096;

/// The compression of slices at `I(w)` on a network: the hparams', except under a compressed
/// exchange, where it gives state slices of about [`IN_STEP_STATE_VALUES`] values (the
/// hparams' 1/100 of a 1.2B model would be 24 MB a slice, for a yes or no).
pub fn state_compression(exchange: Exchange, compression: u32, total_numel: u64) -> u32 {
    if !exchange.is_compressed() {
        return compression;
    }
    compression.max(u32::try_from(total_numel / IN_STEP_STATE_VALUES).unwrap_or(u32::MAX))
}

/// How often a snapshot of the whole model is published under a compressed exchange: every
/// half of `max_history` windows (at least every window), so that a joiner always finds one
/// whose following payloads the peers still keep, even when its writer lags a window or two.
pub fn snapshot_every(max_history: u64) -> u64 {
    (max_history / 2).max(1)
}

/// Whether `window`'s model is one a snapshot is published of.
pub fn is_snapshot_window(window: Window, max_history: u64) -> bool {
    window.is_multiple_of(snapshot_every(max_history))
}

/// The snapshot windows a joiner at `window` looks for, newest first: those whose payloads
/// since are still kept (`max_history` windows back).
pub fn snapshot_candidates(window: Window, max_history: u64) -> Vec<Window> {
    let every = snapshot_every(max_history);
    let oldest = window.saturating_sub(max_history.max(1));
    let newest = window - window % every;
    (0..).map(|i| newest.saturating_sub(i * every)).take_while(|&s| s >= oldest && s > 0).take(8).collect::<Vec<_>>()
}

/// What one object of each kind weighs on the wire, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectBytes {
    pub state: u64,
    pub delta: u64,
}

/// Bytes one miner downloads per window from its `peers`. Seed and update exchanges: the
/// `state` and `delta` slices of each peer it reads; `max_peers` is `exchange_max_peers`
/// (update exchange), which counts the own slice (never downloaded: it is in the cache), so
/// at most `max_peers − 1` peers are read; `None` or 0 reads them all. SparseLoCo: every
/// peer's delta (all must be read for all miners to take the same step), and the state
/// slices of [`IN_STEP_SAMPLE`] of them: linear in the peers, bounded by the registered UIDs.
pub fn download_bytes_per_window(exchange: Exchange, peers: u64, max_peers: Option<u64>, bytes: ObjectBytes) -> u64 {
    if exchange.is_compressed() {
        return peers * bytes.delta + peers.min(IN_STEP_SAMPLE) * bytes.state;
    }
    let read = match max_peers {
        Some(k) if k > 0 && exchange == Exchange::Update => peers.min(k - 1),
        _ => peers,
    };
    read * (bytes.state + bytes.delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_come_often_enough_to_catch_up_from_within_the_history() {
        assert_eq!(snapshot_every(6), 3);
        assert_eq!(snapshot_every(1), 1);
        assert_eq!(snapshot_every(0), 1);
        assert!(is_snapshot_window(9, 6) && !is_snapshot_window(10, 6));
        assert_eq!(snapshot_candidates(10, 6), vec![9, 6]);
        assert_eq!(snapshot_candidates(9, 6), vec![9, 6, 3]);
        assert_eq!(snapshot_candidates(5, 3), vec![5, 4, 3, 2]);
        // The model at window 0 is everyone's initialisation: nothing to fetch.
        assert_eq!(snapshot_candidates(2, 6), Vec::<Window>::new());
        assert_eq!(snapshot_candidates(0, 6), Vec::<Window>::new());
    }

    #[test]
    fn each_exchange_has_its_own_version_and_name() {
        assert_eq!(Exchange::Seed.protocol_version(), 1);
        assert_eq!(Exchange::Update.protocol_version(), 2);
        assert_eq!(Exchange::SparseLoco.protocol_version(), 3);
        assert_eq!(Exchange::Gradient.protocol_version(), 4);
        for e in Exchange::ALL {
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
        let bytes = ObjectBytes { state: slice, delta: slice };
        let update = |peers, max| download_bytes_per_window(Exchange::Update, peers, max, bytes);
        assert_eq!(update(64, None), 3_072_000_000);
        assert_eq!(update(64, Some(7)), 288_000_000);
        assert_eq!(update(3, Some(7)), 144_000_000);
        assert_eq!(update(3, Some(0)), 144_000_000);
        assert_eq!(download_bytes_per_window(Exchange::Seed, 64, Some(7), bytes), 3_072_000_000, "seed: all");
        // SparseLoCo: every delta, and 4 peers' in-step state slices (about 4,096 values).
        let sparse = ObjectBytes { state: 17_000, delta: 4_000_000 };
        assert_eq!(download_bytes_per_window(Exchange::SparseLoco, 63, Some(7), sparse), 252_068_000);
        assert_eq!(download_bytes_per_window(Exchange::SparseLoco, 2, None, sparse), 8_034_000);
        assert_eq!(state_compression(Exchange::SparseLoco, 100, 1_200_000_000), 292_968);
        assert_eq!(state_compression(Exchange::SparseLoco, 100, 100_000), 100, "never below the hparams'");
        assert_eq!(state_compression(Exchange::Update, 100, 1_200_000_000), 100);
    }
}
