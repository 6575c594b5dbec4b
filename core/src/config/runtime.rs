//! The `[runtime]` section as a file writes it ([`RuntimeConfig`]), and the settings one
//! miner's runtime takes ([`RuntimeSettings`]): those tunables plus what the binary derives
//! from top-level keys and the fixed values tests and the devnet change.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::types::{Millis, NonEmptyPath, Positive, Secs, Windows};
use crate::slice::Dtype;

/// `[runtime]`: durations in the unit their key names.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Write a checkpoint every this many windows (and always at shutdown).
    #[serde_as(deserialize_as = "Windows<1>")]
    pub checkpoint_every: u64,
    /// Peer slice downloads in flight.
    #[serde_as(deserialize_as = "Positive")]
    pub download_concurrency: u32,
    /// Deadline of one whole peer download.
    #[serde(rename = "peer_deadline_secs")]
    #[serde_as(as = "Secs<1>")]
    pub peer_deadline: Duration,
    /// A download that makes no progress this long is abandoned.
    #[serde(rename = "progress_timeout_secs")]
    #[serde_as(as = "Secs<1>")]
    pub progress_timeout: Duration,
    /// A peer whose downloads fail this many times in a row is skipped for `peer_skip`.
    #[serde_as(deserialize_as = "Positive")]
    pub peer_failures_before_skip: u32,
    #[serde(rename = "peer_skip_secs")]
    #[serde_as(as = "Secs<1>")]
    pub peer_skip: Duration,
    /// Period of the metagraph, peer bucket and hparams refresh.
    #[serde(rename = "refresh_secs")]
    #[serde_as(as = "Secs<1>")]
    pub refresh_period: Duration,
    /// More than this many restarts within `restart_period` stop the miner.
    #[serde_as(deserialize_as = "Positive")]
    pub max_restarts: u32,
    #[serde(rename = "restart_period_secs")]
    #[serde_as(as = "Secs<1>")]
    pub restart_period: Duration,
    /// First restart delay, doubling up to `restart_backoff_max` (checked to be no less).
    #[serde(rename = "restart_backoff_ms")]
    #[serde_as(as = "Millis")]
    pub restart_backoff: Duration,
    #[serde(rename = "restart_backoff_max_ms")]
    #[serde_as(as = "Millis")]
    pub restart_backoff_max: Duration,
    /// After SIGTERM/SIGINT the process exits within this long.
    #[serde(rename = "shutdown_timeout_secs")]
    #[serde_as(as = "Secs<1>")]
    pub shutdown_timeout: Duration,
    /// Tolerance when a slice's `LastModified` is checked against its window's bounds.
    #[serde(rename = "clock_skew_secs")]
    #[serde_as(as = "Secs<0>")]
    pub clock_skew: Duration,
    /// Evaluate on held-out pages every this many windows (0: never; it costs GPU time).
    #[serde_as(deserialize_as = "Windows<0>")]
    pub eval_every: u64,
    /// The slice cache shared by the miners of the host; after loading always set
    /// (default `<state_dir>/slice-cache`).
    #[serde(default)]
    #[serde_as(deserialize_as = "NonEmptyPath")]
    pub cache_dir: PathBuf,
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

    /// These tunables with the derived settings at their defaults (a single miner of the
    /// seed's batch size; see `MinerConfig::runtime_settings`).
    pub fn settings(self) -> RuntimeSettings {
        let Self {
            checkpoint_every,
            download_concurrency,
            peer_deadline,
            progress_timeout,
            peer_failures_before_skip,
            peer_skip,
            refresh_period,
            max_restarts,
            restart_period,
            restart_backoff,
            restart_backoff_max,
            shutdown_timeout,
            clock_skew,
            eval_every,
            cache_dir,
        } = self;
        RuntimeSettings {
            checkpoint_every,
            download_concurrency,
            peer_deadline,
            progress_timeout,
            peer_failures_before_skip,
            peer_skip,
            refresh_period,
            max_restarts,
            restart_period,
            restart_backoff,
            restart_backoff_max,
            shutdown_timeout,
            clock_skew,
            eval_every,
            cache_dir,
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

/// What one miner's runtime takes: the [`RuntimeConfig`] tunables (same names, same
/// meaning), then the values derived from top-level keys or fixed by whoever builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    pub checkpoint_every: u64,
    pub download_concurrency: u32,
    pub peer_deadline: Duration,
    pub progress_timeout: Duration,
    pub peer_failures_before_skip: u32,
    pub peer_skip: Duration,
    pub refresh_period: Duration,
    pub max_restarts: u32,
    pub restart_period: Duration,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub shutdown_timeout: Duration,
    pub clock_skew: Duration,
    pub eval_every: u64,
    pub cache_dir: PathBuf,
    /// Nominal block time, to extrapolate window bounds (12 s on subtensor).
    pub block_time: Duration,
    /// Read every peer's committed bucket (`remote`), else only the own one.
    pub remote: bool,
    /// No slices downloaded or applied (`baseline`).
    pub baseline: bool,
    /// Random pages instead of the UID's (`random`).
    pub random: bool,
    /// Replay state history at start (`sync_state`).
    pub sync_state: bool,
    /// Sequences per micro-batch (`actual_batch_size`).
    pub batch_size: usize,
    /// Pages a window trains on (`data.pages_per_window`, else the hparams').
    pub pages_per_window: usize,
    pub upload_dtype: Dtype,
    /// Block-stream stall detection.
    pub stall_timeout: Duration,
    /// Held-out pages evaluated, and at most this many micro-batches of them.
    pub eval_pages: usize,
    pub eval_batches: usize,
    /// Fixed compute (the devnet's fair comparison): train exactly this many micro-batches
    /// per window whatever the clock says; 0: train until the window ends, as the seed.
    pub fixed_micro_batches: usize,
}

impl Default for RuntimeSettings {
    /// The built-in `[runtime]` defaults, the slice cache unset, the derived values fixed.
    fn default() -> Self {
        RuntimeConfig::default().settings()
    }
}
