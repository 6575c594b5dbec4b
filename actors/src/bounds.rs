//! What a long run keeps, and how much: every in-memory history of the runtime is bounded
//! here, so a process that runs for weeks holds the same amount after a month as after an
//! hour (docs/DESIGN.md §15). Each bound's current fill is exported as
//! `tessera_retained{what}` on `/metrics` ([`Retained`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::context::{MinerContext, lock};

/// Window summaries a miner keeps (readiness, `/metrics`, the devnet's table): about 1.7
/// hours of 24-s windows, ~35 KB. The devnet writes every window to its report as it
/// completes, so a longer run loses nothing.
pub const WINDOW_SUMMARIES_KEPT: usize = 256;

/// Scored windows a validator keeps for its display and `/metrics` (each names every UID).
pub const SCORED_WINDOWS_KEPT: usize = 256;

/// Windows of slice positions kept (state of `w+1` at the end of `w`, again at the start of
/// `w+1`).
pub const SLICE_INDEX_WINDOWS_KEPT: usize = 4;

/// Own updates (update exchange) or window start values (SparseLoCo) kept for the windows
/// that read them back.
pub const OWN_UPDATES_KEPT: usize = 3;

/// Windows of first-seen times kept: enough for the validator's offset and the seed
/// exchange's reading of the previous window, with room to spare.
pub const FIRST_SEEN_WINDOWS_KEPT: u64 = 16;

/// Windows of state verdicts a validator keeps until it scores them.
pub const STATE_VERDICT_WINDOWS_KEPT: usize = 8;

/// A gauge's label set not set again for this long leaves `/metrics`: the per-UID series
/// of miners that left the subnet (a new hotkey on a UID is a new label set), which the
/// exporter would otherwise keep for the life of the process. Every live gauge is set at
/// each scrape, so any scrape interval keeps them.
pub const STALE_SERIES_AFTER: Duration = Duration::from_secs(15 * 60);

/// Threads the async runtime may start for blocking work (file I/O through `tokio::fs`,
/// slice encoding, scoring, folding). tokio's default is 512, and an idle one lives 10 s:
/// each burst of concurrent file operations raised the pool's high-water mark for good,
/// since the next burst came within 10 s, and each thread holds its stack and the
/// allocator's thread cache. A devnet of 8 miners grew to 160 threads on 2 cores, its
/// resident set stepping up ~8 MB with each new high (docs/DESIGN.md §15). The work is
/// short and never waits on another blocking task, so beyond this it queues.
pub const BLOCKING_THREADS_MAX: usize = 32;

/// The last `CAP` entries of a stream, numbered from the stream's start, so a reader that
/// remembers how many it has seen gets each new entry once even after old ones left.
/// Its storage is allocated once, at the first entry.
#[derive(Debug)]
pub struct History<T, const CAP: usize> {
    entries: VecDeque<T>,
    /// Entries that left (the number of the oldest kept).
    dropped: u64,
}

impl<T, const CAP: usize> Default for History<T, CAP> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), dropped: 0 }
    }
}

impl<T: Clone, const CAP: usize> History<T, CAP> {
    pub fn push(&mut self, entry: T) {
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(CAP);
        }
        if self.entries.len() == CAP {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(entry);
    }

    /// Every entry kept, oldest first.
    pub fn kept(&self) -> Vec<T> {
        self.entries.iter().cloned().collect()
    }

    pub fn last(&self) -> Option<&T> {
        self.entries.back()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries pushed since the start.
    pub fn total(&self) -> u64 {
        self.dropped + self.entries.len() as u64
    }

    /// The entries numbered `seen` and later that are still kept, and the number to ask
    /// from next time ([`Self::total`]). A reader more than `CAP` behind skips the lost ones.
    pub fn since(&self, seen: u64) -> (Vec<T>, u64) {
        let skip = seen.saturating_sub(self.dropped);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        (self.entries.iter().skip(skip).cloned().collect(), self.total())
    }
}

/// The fill of the bounds that live outside the shared context (in an actor's own state),
/// published by their owners for `/metrics`.
#[derive(Debug, Default)]
pub struct Retained {
    /// The downloader's per-bucket health records.
    pub peer_records: AtomicU64,
    /// Windows of first-seen times the downloader holds.
    pub first_seen_windows: AtomicU64,
    /// Files and bytes in the slice cache after its last collection.
    pub slice_cache_files: AtomicU64,
    pub slice_cache_bytes: AtomicU64,
    /// Uploads waiting in the uploader's queue.
    pub upload_queue: AtomicU64,
}

impl Retained {
    pub fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Ordering::Relaxed);
    }

    /// `(what, value)` of each published fill, for the gauge's `what` label.
    pub fn fills(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("peer_records", get(&self.peer_records)),
            ("first_seen_windows", get(&self.first_seen_windows)),
            ("slice_cache_files", get(&self.slice_cache_files)),
            ("slice_cache_bytes", get(&self.slice_cache_bytes)),
            ("upload_queue", get(&self.upload_queue)),
        ]
    }
}

/// `(what, entries)` of every bounded collection of a node, for `tessera_retained`.
pub fn retained(ctx: &MinerContext) -> Vec<(&'static str, u64)> {
    let stats = &ctx.telemetry.stats;
    let mut fills = vec![
        ("window_summaries", stats.windows_kept() as u64),
        ("slice_index_windows", lock(&ctx.model.index_cache).len() as u64),
        ("own_updates", lock(&ctx.model.own_updates).len() as u64),
    ];
    fills.extend(stats.retained.fills());
    if let Some(v) = &ctx.validator {
        fills.push(("scored_windows", v.stats.windows_kept() as u64));
        fills.push(("state_verdict_windows", lock(&v.state_verdicts).len() as u64));
    }
    fills
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_keeps_the_last_entries_and_numbers_them_from_the_start() {
        let mut h: History<u32, 3> = History::default();
        assert_eq!(h.since(0), (vec![], 0));
        for i in 0..5 {
            h.push(i);
        }
        assert_eq!(h.kept(), vec![2, 3, 4]);
        assert_eq!(h.total(), 5);
        assert_eq!(h.last(), Some(&4));
        // A reader that saw 4 entries gets the fifth only; one far behind gets what is kept.
        assert_eq!(h.since(4), (vec![4], 5));
        assert_eq!(h.since(0), (vec![2, 3, 4], 5));
        assert_eq!(h.since(5), (vec![], 5));
        assert_eq!(h.since(9), (vec![], 5));
    }

    #[test]
    fn a_history_allocates_once() {
        let mut h: History<u64, 8> = History::default();
        h.push(0);
        let capacity = h.entries.capacity();
        assert!(capacity >= 8);
        for i in 0..100 {
            h.push(i);
        }
        assert_eq!(h.entries.capacity(), capacity, "no growth after the first entry");
        assert_eq!(h.len(), 8);
    }
}
