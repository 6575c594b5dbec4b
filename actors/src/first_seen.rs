//! When this node first saw each peer object in a listing, by its own clock. A peer's
//! `LastModified` comes from its own server and may be anything; the first-seen time is
//! the reader's, so a delta counts as on time (and as the original of a copy) by what the
//! reader observed, never by what the peer claims.
//!
//! A delta window is *watched* when this node listed it while it was still open (a
//! watcher polls the buckets through the window and its grace). For a watched window an
//! object first seen after the window's end plus [`crate::deadlines::Deadlines::delta_grace`]
//! is late; for one it did not watch (after a restart) the reader falls back to the peers'
//! `LastModified`, as it has nothing better.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tessera_core::slice::SliceKind;
use tessera_core::window::Window;

use crate::bounds::FIRST_SEEN_WINDOWS_KEPT as WINDOWS_KEPT;

/// First-seen times of the delta objects of recent windows.
#[derive(Debug, Default)]
pub struct FirstSeen {
    /// window → (bucket, key) → first seen (unix ms).
    seen: BTreeMap<Window, HashMap<(String, String), i64>>,
    /// Windows a watcher listed before they closed.
    watched: BTreeSet<Window>,
}

impl FirstSeen {
    /// Records a listed object, keeping the earliest time; returns its first-seen time.
    /// Only deltas are tracked (state slices are not scored nor copied for pay).
    pub fn record(&mut self, kind: SliceKind, window: Window, bucket: &str, key: &str, now_ms: i64) -> Option<i64> {
        if kind != SliceKind::Delta {
            return None;
        }
        let objects = self.seen.entry(window).or_default();
        let at = *objects.entry((bucket.to_owned(), key.to_owned())).or_insert(now_ms);
        Some(at)
    }

    pub fn get(&self, window: Window, bucket: &str, key: &str) -> Option<i64> {
        self.seen.get(&window)?.get(&(bucket.to_owned(), key.to_owned())).copied()
    }

    /// Marks `window` as listed while open, and forgets windows long past.
    pub fn mark_watched(&mut self, window: Window) {
        self.watched.insert(window);
        let oldest = window.saturating_sub(WINDOWS_KEPT);
        self.seen.retain(|w, _| *w >= oldest);
        self.watched.retain(|w| *w >= oldest);
    }

    pub fn is_watched(&self, window: Window) -> bool {
        self.watched.contains(&window)
    }

    /// Windows with first-seen times kept (at most [`WINDOWS_KEPT`] + 1 past the newest).
    pub fn windows(&self) -> usize {
        self.seen.len()
    }
}

/// Whether a delta of a watched window, first seen at `first_seen_ms`, is on time for a
/// window ending at `end_ms` with `grace_ms` to publish.
pub fn on_time(first_seen_ms: i64, end_ms: i64, grace_ms: i64) -> bool {
    first_seen_ms <= end_ms + grace_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sighting_is_kept_and_only_deltas_are_tracked() {
        let mut book = FirstSeen::default();
        assert_eq!(book.record(SliceKind::Delta, 3, "b", "k", 1_000), Some(1_000));
        assert_eq!(book.record(SliceKind::Delta, 3, "b", "k", 2_000), Some(1_000), "a later listing changes nothing");
        assert_eq!(book.record(SliceKind::Delta, 3, "b2", "k", 2_000), Some(2_000), "per bucket");
        assert_eq!(book.record(SliceKind::State, 3, "b", "s", 2_000), None);
        assert_eq!(book.get(3, "b", "k"), Some(1_000));
        assert_eq!(book.get(4, "b", "k"), None);
    }

    #[test]
    fn watched_windows_are_remembered_and_old_ones_forgotten() {
        let mut book = FirstSeen::default();
        book.record(SliceKind::Delta, 1, "b", "k", 5);
        book.mark_watched(1);
        assert!(book.is_watched(1) && !book.is_watched(2));
        book.mark_watched(1 + WINDOWS_KEPT + 1);
        assert!(!book.is_watched(1), "forgotten");
        assert_eq!(book.get(1, "b", "k"), None);
    }

    #[test]
    fn on_time_means_by_the_end_plus_the_grace() {
        assert!(on_time(10_000, 9_000, 1_000));
        assert!(!on_time(10_001, 9_000, 1_000));
    }
}
