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
/// One fetch (every listing and download of a window's slices) may take this share of a
/// window (tenths): a slow bucket costs the others at most this, once per fetch, and not
/// after it is skipped for slowness.
const FETCH_BUDGET_TENTHS: u32 = 3;
/// The least fetch budget, for very short windows (a devnet's).
const MIN_FETCH_BUDGET: Duration = Duration::from_millis(500);
/// A transfer that takes more than this share of the fetch budget (tenths) counts against
/// its peer like a failure: answering just before the deadline is not being healthy.
const SLOW_TENTHS: u32 = 5;
/// A delta is on time when the reader first saw it by its window's end plus this share of
/// a window (tenths), and at least [`MIN_DELTA_GRACE_MS`]: an honest miner's publish phase
/// (gather, encode, upload) and the reader's polling fit in it. (2/10 of the devnet's
/// one-second windows made every delta late on a loaded 2-core machine.) Copying within
/// it does not pay: copies are told by the first sighting's order, not by lateness.
const DELTA_GRACE_TENTHS: i64 = 5;
const MIN_DELTA_GRACE_MS: i64 = 2_000;
/// How many times a watcher lists the buckets per window.
const WATCH_POLLS_PER_WINDOW: u32 = 20;
const MIN_WATCH_POLL: Duration = Duration::from_millis(50);
const MAX_WATCH_POLL: Duration = Duration::from_secs(5);

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

    /// One fetch's budget in a window of `window`: a share of it, between
    /// [`MIN_FETCH_BUDGET`] and one transfer deadline. `None` (fixed compute, where the
    /// clock waits for the nodes): one transfer deadline.
    pub fn fetch_budget(&self, window: Option<Duration>) -> Duration {
        match window {
            Some(window) => {
                (window * FETCH_BUDGET_TENTHS / 10).clamp(MIN_FETCH_BUDGET, self.peer.max(MIN_FETCH_BUDGET))
            }
            None => self.peer,
        }
    }

    /// Whether a transfer that took `took` of a fetch with `budget` was slow.
    pub fn is_slow(took: Duration, budget: Duration) -> bool {
        took > budget * SLOW_TENTHS / 10
    }

    /// The time after a window's end in which its deltas are on time (unix ms).
    pub fn delta_grace_ms(start_ms: i64, end_ms: i64) -> i64 {
        ((end_ms - start_ms).max(0) * DELTA_GRACE_TENTHS / 10).max(MIN_DELTA_GRACE_MS)
    }

    /// Between a watcher's listings, in a window of `window`.
    pub fn watch_poll(window: Duration) -> Duration {
        (window / WATCH_POLLS_PER_WINDOW).clamp(MIN_WATCH_POLL, MAX_WATCH_POLL)
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
    fn a_fetch_budget_is_a_share_of_the_window_within_one_transfer() {
        let d = Deadlines::new(Duration::from_secs(30));
        assert_eq!(d.fetch_budget(Some(Duration::from_secs(60))), Duration::from_secs(18));
        assert_eq!(d.fetch_budget(Some(Duration::from_secs(600))), Duration::from_secs(30), "at most one transfer");
        assert_eq!(d.fetch_budget(Some(Duration::from_millis(100))), MIN_FETCH_BUDGET);
        assert_eq!(d.fetch_budget(None), Duration::from_secs(30));
        assert!(d.fetch_budget(Some(Duration::from_secs(60))) < d.fetch(), "inside the fetch call's deadline");
        assert!(Deadlines::is_slow(Duration::from_secs(10), Duration::from_secs(18)));
        assert!(!Deadlines::is_slow(Duration::from_secs(8), Duration::from_secs(18)));
        assert_eq!(Deadlines::delta_grace_ms(10_000, 30_000), 10_000);
        assert_eq!(Deadlines::delta_grace_ms(10_000, 11_000), 2_000, "at least two seconds");
    }

    #[test]
    fn scoring_stops_inside_its_window() {
        for (start, end) in [(0, 1_000), (10_000, 34_000), (5, 6)] {
            let cutoff = Deadlines::scoring_cutoff_ms(start, end);
            assert!(start <= cutoff && cutoff < end, "cutoff {cutoff} outside [{start}, {end})");
        }
    }
}
