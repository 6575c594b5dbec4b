//! The runtime settings of one miner: the `[runtime]` tunables as configured, plus what
//! the binary derives from top-level keys and the fixed values tests and the devnet change.
//! The actors take this type as it is; there is no second copy to map into.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::{as_millis, as_secs, millis, path, positive, secs, windows};
use crate::slice::Dtype;

/// Tunables of one miner's runtime. The configured ones are `[runtime]` keys (durations in
/// the unit their key names); the `serde(skip)` ones are set by whoever builds the miner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Write a checkpoint every this many windows (and always at shutdown).
    #[serde(deserialize_with = "windows::<_, 1>")]
    pub checkpoint_every: u64,
    /// Peer slice downloads in flight.
    #[serde(deserialize_with = "positive")]
    pub download_concurrency: u32,
    /// Deadline of one whole peer download.
    #[serde(rename = "peer_deadline_secs", deserialize_with = "secs::<_, 1>", serialize_with = "as_secs")]
    pub peer_deadline: Duration,
    /// A download that makes no progress this long is abandoned.
    #[serde(rename = "progress_timeout_secs", deserialize_with = "secs::<_, 1>", serialize_with = "as_secs")]
    pub progress_timeout: Duration,
    /// A peer whose downloads fail this many times in a row is skipped for `peer_skip`.
    #[serde(deserialize_with = "positive")]
    pub peer_failures_before_skip: u32,
    #[serde(rename = "peer_skip_secs", deserialize_with = "secs::<_, 1>", serialize_with = "as_secs")]
    pub peer_skip: Duration,
    /// Period of the metagraph, peer bucket and hparams refresh.
    #[serde(rename = "refresh_secs", deserialize_with = "secs::<_, 1>", serialize_with = "as_secs")]
    pub refresh_period: Duration,
    /// More than this many restarts of one miner's actors within `restart_period`
    /// escalate: the miner stops.
    #[serde(deserialize_with = "positive")]
    pub max_restarts: u32,
    #[serde(rename = "restart_period_secs", deserialize_with = "secs::<_, 1>", serialize_with = "as_secs")]
    pub restart_period: Duration,
    /// First restart delay, doubling per restart up to `restart_backoff_max` (which is at
    /// least this; the loader checks).
    #[serde(rename = "restart_backoff_ms", deserialize_with = "millis", serialize_with = "as_millis")]
    pub restart_backoff: Duration,
    #[serde(rename = "restart_backoff_max_ms", deserialize_with = "millis", serialize_with = "as_millis")]
    pub restart_backoff_max: Duration,
    /// After SIGTERM/SIGINT the process exits within this long.
    #[serde(rename = "shutdown_timeout_secs", deserialize_with = "secs::<_, 1>", serialize_with = "as_secs")]
    pub shutdown_timeout: Duration,
    /// Tolerance when a slice object's bucket `LastModified` is checked against its
    /// window's time bounds.
    #[serde(rename = "clock_skew_secs", deserialize_with = "secs::<_, 0>", serialize_with = "as_secs")]
    pub clock_skew: Duration,
    /// Evaluate the model's loss on the held-out pages every this many windows (0: never;
    /// it costs compute on the critical GPU).
    #[serde(deserialize_with = "windows::<_, 0>")]
    pub eval_every: u64,
    /// The slice cache shared by all miners of the host: the configured directory, else
    /// `<state_dir>/slice-cache` (always set after loading).
    #[serde(default, deserialize_with = "path")]
    pub cache_dir: PathBuf,

    /// Nominal block time, to extrapolate window bounds (12 s on subtensor).
    #[serde(skip, default = "seconds::<12>")]
    pub block_time: Duration,
    /// Read every peer's committed bucket (`remote`), else only the own one.
    #[serde(skip)]
    pub remote: bool,
    /// No slices downloaded or applied (`baseline`).
    #[serde(skip)]
    pub baseline: bool,
    /// Random pages instead of the UID's (`random`).
    #[serde(skip)]
    pub random: bool,
    /// Replay state history at start (`sync_state`).
    #[serde(skip)]
    pub sync_state: bool,
    /// Sequences per micro-batch (`actual_batch_size`).
    #[serde(skip, default = "count::<8>")]
    pub batch_size: usize,
    /// Pages a window trains on (`data.pages_per_window`, else the hparams').
    #[serde(skip, default = "count::<15>")]
    pub pages_per_window: usize,
    #[serde(skip, default = "f32_slices")]
    pub upload_dtype: Dtype,
    /// Block-stream stall detection.
    #[serde(skip, default = "seconds::<60>")]
    pub stall_timeout: Duration,
    /// Held-out pages evaluated, and at most this many micro-batches of them.
    #[serde(skip, default = "count::<1>")]
    pub eval_pages: usize,
    #[serde(skip, default = "count::<16>")]
    pub eval_batches: usize,
    /// Fixed compute (the devnet's fair comparison): train exactly this many micro-batches
    /// per window whatever the clock says, and let the clock wait; 0: train until the
    /// window ends, as the seed.
    #[serde(skip)]
    pub fixed_micro_batches: usize,
}

/// `serde(default)` of a fixed count, stated at its field.
fn count<const N: usize>() -> usize {
    N
}
/// `serde(default)` of a fixed duration in seconds, stated at its field.
fn seconds<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
fn f32_slices() -> Dtype {
    Dtype::F32
}

impl Default for RuntimeSettings {
    /// The built-in defaults (`[runtime]` of [`super::defaults`]), the slice cache unset.
    fn default() -> Self {
        #[derive(Deserialize)]
        struct Defaults {
            runtime: RuntimeSettings,
        }
        // The defaults are tested to load; this cannot fail.
        toml::from_str::<Defaults>(super::defaults())
            .map_or_else(|e| panic!("built-in [runtime] defaults: {e}"), |d| d.runtime)
    }
}

impl RuntimeSettings {
    /// The delay before restart number `attempt` (0 for the first): `restart_backoff`
    /// doubled per earlier restart, at most `restart_backoff_max`.
    pub fn restart_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.restart_backoff.saturating_mul(factor).min(self.restart_backoff_max)
    }
}
