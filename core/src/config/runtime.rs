//! The `[runtime]` section as a file writes it ([`RuntimeConfig`]), and the settings one
//! miner's runtime takes ([`RuntimeSettings`]): those tunables plus the values derived from
//! top-level keys or fixed by whoever builds the miner (tests, the devnet).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::types::{Millis, NonEmptyPath, Positive, Secs, Windows};
use crate::slice::Dtype;

/// Declares both types from one list of the file's fields, so they cannot drift apart:
/// [`RuntimeConfig`] with the serde attributes, [`RuntimeSettings`] with the same fields
/// followed by the derived ones.
macro_rules! runtime_types {
    ($($(#[$attr:meta])* $field:ident: $ty:ty,)*) => {
        /// `[runtime]`, durations in the unit their key names.
        #[serde_as]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RuntimeConfig {
            $($(#[$attr])* pub $field: $ty,)*
        }

        /// What one miner's runtime takes: the [`RuntimeConfig`] fields, then the derived ones.
        #[derive(Debug, Clone, PartialEq)]
        pub struct RuntimeSettings {
            $(pub $field: $ty,)*
            /// Nominal block time, to extrapolate window bounds (12 s on subtensor).
            pub block_time: Duration,
            /// `remote`: read every peer's committed bucket, else only the own one.
            pub remote: bool,
            /// `baseline`: no slices downloaded or applied.
            pub baseline: bool,
            /// `random`: random pages instead of the UID's.
            pub random: bool,
            /// `sync_state`: replay state history at start.
            pub sync_state: bool,
            /// `actual_batch_size`: sequences per micro-batch.
            pub batch_size: usize,
            /// `data.pages_per_window`, else the hparams'.
            pub pages_per_window: usize,
            pub upload_dtype: Dtype,
            /// Block-stream stall detection.
            pub stall_timeout: Duration,
            /// Held-out pages evaluated, and at most this many micro-batches of them.
            pub eval_pages: usize,
            pub eval_batches: usize,
            /// Fixed compute (the devnet's fair comparison): train exactly this many
            /// micro-batches per window whatever the clock says; 0: until the window ends.
            pub fixed_micro_batches: usize,
        }

        impl RuntimeConfig {
            /// These tunables with the derived settings at their defaults (one miner of
            /// the seed's batch size; see `MinerConfig::runtime_settings`).
            pub fn settings(self) -> RuntimeSettings {
                RuntimeSettings {
                    $($field: self.$field,)*
                    block_time: Duration::from_secs(12),
                    remote: false,
                    baseline: false,
                    random: false,
                    sync_state: false,
                    batch_size: 8,
                    pages_per_window: 15,
                    upload_dtype: Dtype::F32,
                    stall_timeout: Duration::from_secs(60),
                    eval_pages: 1,
                    eval_batches: 16,
                    fixed_micro_batches: 0,
                }
            }
        }
    };
}

runtime_types! {
    /// Write a checkpoint every this many windows (and always at shutdown).
    #[serde_as(deserialize_as = "Windows<1>")]
    checkpoint_every: u64,
    /// Peer slice downloads in flight.
    #[serde_as(deserialize_as = "Positive")]
    download_concurrency: u32,
    /// Deadline of one whole peer download.
    #[serde(rename = "peer_deadline_secs")]
    #[serde_as(as = "Secs<1>")]
    peer_deadline: Duration,
    /// A download that makes no progress this long is abandoned.
    #[serde(rename = "progress_timeout_secs")]
    #[serde_as(as = "Secs<1>")]
    progress_timeout: Duration,
    /// A peer whose downloads fail this many times in a row is skipped for `peer_skip`.
    #[serde_as(deserialize_as = "Positive")]
    peer_failures_before_skip: u32,
    #[serde(rename = "peer_skip_secs")]
    #[serde_as(as = "Secs<1>")]
    peer_skip: Duration,
    /// Period of the metagraph, peer bucket and hparams refresh.
    #[serde(rename = "refresh_secs")]
    #[serde_as(as = "Secs<1>")]
    refresh_period: Duration,
    /// More than this many restarts within `restart_period` stop the miner.
    #[serde_as(deserialize_as = "Positive")]
    max_restarts: u32,
    #[serde(rename = "restart_period_secs")]
    #[serde_as(as = "Secs<1>")]
    restart_period: Duration,
    /// First restart delay, doubling up to `restart_backoff_max` (checked to be no less).
    #[serde(rename = "restart_backoff_ms")]
    #[serde_as(as = "Millis")]
    restart_backoff: Duration,
    #[serde(rename = "restart_backoff_max_ms")]
    #[serde_as(as = "Millis")]
    restart_backoff_max: Duration,
    /// After SIGTERM/SIGINT the process exits within this long.
    #[serde(rename = "shutdown_timeout_secs")]
    #[serde_as(as = "Secs<1>")]
    shutdown_timeout: Duration,
    /// Tolerance when a slice's `LastModified` is checked against its window's bounds.
    #[serde(rename = "clock_skew_secs")]
    #[serde_as(as = "Secs<0>")]
    clock_skew: Duration,
    /// Read peers' buckets at private, loopback or link-local addresses (refused by
    /// default: a peer's bucket location is the peer's choice).
    allow_private_endpoints: bool,
    /// Evaluate on held-out pages every this many windows (0: never; it costs GPU time).
    #[serde_as(deserialize_as = "Windows<0>")]
    eval_every: u64,
    /// The slice cache the miners of a host share; set after loading (default
    /// `<state_dir>/slice-cache`).
    #[serde(default)]
    #[serde_as(deserialize_as = "NonEmptyPath")]
    cache_dir: PathBuf,
}

impl Default for RuntimeConfig {
    /// The built-in defaults (`[runtime]` of [`super::defaults`]), the slice cache unset.
    fn default() -> Self {
        #[derive(Deserialize)]
        struct Defaults {
            runtime: RuntimeConfig,
        }
        // Built in and tested to load: this cannot fail.
        toml::from_str::<Defaults>(super::defaults())
            .map_or_else(|e| panic!("built-in [runtime] defaults: {e}"), |d| d.runtime)
    }
}

impl RuntimeConfig {
    /// The delay before restart number `attempt` (0 for the first): `restart_backoff`
    /// doubled per earlier restart, at most `restart_backoff_max`.
    pub fn restart_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.restart_backoff.saturating_mul(factor).min(self.restart_backoff_max)
    }
}

impl Default for RuntimeSettings {
    /// The built-in `[runtime]` defaults, the slice cache unset, the derived values fixed.
    fn default() -> Self {
        RuntimeConfig::default().settings()
    }
}
