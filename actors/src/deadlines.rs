//! Every wait of the window loop, in one place, derived from the two durations an operator
//! sets: `peer_deadline` (one peer transfer) and the window's length. They nest: one
//! object's transfer inside the downloader's whole fetch, the fetch inside the averaging
//! call that waits for it, and the validator's scoring inside its window.
//!
//! The call deadlines are fallbacks for an actor that stopped answering, not a schedule:
//! a healthy fetch ends when its slowest object does.

use std::time::Duration;

/// Slack added to a nested call's deadline over the work it waits for (scheduling,
/// validation and the mean of the slices).
const FETCH_SLACK: Duration = Duration::from_secs(5);
const AVERAGE_SLACK: Duration = Duration::from_secs(10);
/// A fetch lists every bucket, then fetches objects in parallel: a few transfers' worth.
const TRANSFERS_PER_FETCH: u32 = 4;
/// The averaging call waits for a fetch and the mean, plus headroom for a slow fold.
const TRANSFERS_PER_AVERAGE: u32 = 6;
/// The validator stops scoring this far into the window (tenths), so the window's own work
/// (the model one window forward) fits in what is left.
const SCORING_TENTHS: i64 = 7;

/// The waits of one node, from its `peer_deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    peer: Duration,
}

impl Deadlines {
    pub fn new(peer_deadline: Duration) -> Self {
        Self { peer: peer_deadline }
    }

    /// One listing or one object from one peer.
    pub fn transfer(&self) -> Duration {
        self.peer
    }

    /// A whole `Fetch` of the SliceDownloader: every bucket listed, every object fetched.
    pub fn fetch(&self) -> Duration {
        self.peer * TRANSFERS_PER_FETCH + FETCH_SLACK
    }

    /// A window task's wait for the StateSyncer's mean (which waits for a fetch).
    pub fn average(&self) -> Duration {
        self.peer * TRANSFERS_PER_AVERAGE + AVERAGE_SLACK
    }

    /// When the validator stops scoring, in a window spanning `[start_ms, end_ms)`.
    pub fn scoring_cutoff_ms(start_ms: i64, end_ms: i64) -> i64 {
        start_ms + (end_ms - start_ms) * SCORING_TENTHS / 10
    }
}

/// Concurrent page downloads when a window's (or the held-out) data is loaded.
pub const PAGE_FETCH_CONCURRENCY: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_wait_ends_before_the_one_that_waits_for_it() {
        for secs in [1, 5, 30, 120, 600] {
            let d = Deadlines::new(Duration::from_secs(secs));
            assert!(d.transfer() < d.fetch(), "peer_deadline {secs}s: a transfer outlasts the fetch");
            // The fetch and the fold after it both fit in the averaging call.
            assert!(d.fetch() + d.transfer() <= d.average(), "peer_deadline {secs}s: the fetch outlasts the average");
        }
    }

    #[test]
    fn scoring_stops_inside_its_window() {
        for (start, end) in [(0, 1_000), (10_000, 34_000), (5, 6)] {
            let cutoff = Deadlines::scoring_cutoff_ms(start, end);
            assert!(start <= cutoff && cutoff < end, "cutoff {cutoff} outside [{start}, {end})");
        }
    }
}
