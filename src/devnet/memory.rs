//! The process over a run, for soak runs: resident memory, the allocator's live and active
//! heap, open file descriptors, tokio tasks and the state directory's size, sampled whenever
//! the slowest exchanging miner completes a window, and their slopes after warm-up (with
//! the resident slope's standard error), which should be flat.
//!
//! The resident set swings by tens of MB from one sample to the next (which miner is
//! training, freed pages jemalloc returns on its decay timer), so its slope over 500
//! windows carries an error of a couple of KB per window; the allocator's active heap
//! leaves out the freed pages and shows a leak with less noise (docs/DESIGN.md §15).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

/// The non-memory series of one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    /// The allocator's live allocations (jemalloc `stats.allocated`; 0 where unknown).
    heap_allocated: f64,
    /// The allocator's pages holding live allocations (jemalloc `stats.active`).
    heap_active: f64,
    /// Freed small objects held in threads' caches, counted in `heap_allocated`
    /// (jemalloc `stats.arenas.<all>.tcache_bytes`).
    heap_thread_cached: f64,
    open_fds: f64,
    /// The process's threads (the runtime's blocking pool grows with bursts of work).
    threads: f64,
    tokio_tasks: f64,
    state_dir_bytes: f64,
}

/// The process whenever the slowest exchanging miner completed a window.
#[derive(Debug, Default)]
pub struct MemoryTrace {
    /// `(window, resident bytes)`, windows counted per miner from 1.
    points: Vec<(f64, f64)>,
    /// Beside each point: descriptors, tasks and the state directory.
    counts: Vec<Counts>,
    /// The slowest miner's windows at the last sample.
    window: u64,
    /// Whose size is sampled (the devnet's `--state-dir`).
    state_dir: Option<PathBuf>,
}

impl MemoryTrace {
    /// A trace that also samples the size of `state_dir`.
    pub fn with_state_dir(state_dir: PathBuf) -> Self {
        Self { state_dir: Some(state_dir), ..Self::default() }
    }

    /// Samples the process when the slowest miner has completed a window more.
    pub fn record(&mut self, slowest: u64) {
        if slowest > self.window {
            self.window = slowest;
            if let Some(rss) = resident_bytes() {
                self.points.push((slowest as f64, rss as f64));
                let heap = heap_bytes().unwrap_or_default();
                self.counts.push(Counts {
                    heap_allocated: heap.allocated as f64,
                    heap_active: heap.active as f64,
                    heap_thread_cached: heap.thread_cached as f64,
                    open_fds: open_fds().unwrap_or(0) as f64,
                    threads: threads().unwrap_or(0) as f64,
                    tokio_tasks: tokio_tasks() as f64,
                    state_dir_bytes: self.state_dir.as_deref().map_or(0, dir_bytes) as f64,
                });
            }
        }
    }

    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// Resident bytes at the last sample.
    pub fn last(&self) -> Option<f64> {
        self.points.last().map(|p| p.1)
    }

    /// Bytes per window over the second half of the samples (after warm-up).
    pub fn slope_after_warmup(&self) -> Option<f64> {
        self.resident_fit().map(|f| f.slope)
    }

    /// The resident slope over the second half with its standard error.
    fn resident_fit(&self) -> Option<Fit> {
        fit(&self.points[self.points.len() / 2..])
    }

    fn series(&self, of: impl Fn(&Counts) -> f64) -> Vec<(f64, f64)> {
        self.points.iter().zip(&self.counts).map(|(p, c)| (p.0, of(c))).collect()
    }

    fn fit_of(&self, of: impl Fn(&Counts) -> f64) -> Option<Fit> {
        let series = self.series(of);
        fit(&series[series.len() / 2..])
    }

    fn slope_of(&self, of: impl Fn(&Counts) -> f64) -> Option<f64> {
        self.fit_of(of).map(|f| f.slope)
    }

    /// The four series and their slopes after warm-up, for `summary.json`.
    pub fn to_json(&self) -> serde_json::Value {
        let column = |of: fn(&Counts) -> f64| self.counts.iter().map(of).collect::<Vec<_>>();
        json!({
            "window": self.points.iter().map(|p| p.0).collect::<Vec<_>>(),
            "resident_bytes": self.points.iter().map(|p| p.1).collect::<Vec<_>>(),
            "heap_allocated_bytes": column(|c| c.heap_allocated),
            "heap_active_bytes": column(|c| c.heap_active),
            "heap_thread_cached_bytes": column(|c| c.heap_thread_cached),
            "open_fds": column(|c| c.open_fds),
            "threads": column(|c| c.threads),
            "tokio_tasks": column(|c| c.tokio_tasks),
            "state_dir_bytes": column(|c| c.state_dir_bytes),
            "slopes_per_window": {
                "resident_bytes": self.slope_after_warmup(),
                "heap_allocated_bytes": self.slope_of(|c| c.heap_allocated),
                "heap_active_bytes": self.slope_of(|c| c.heap_active),
                "heap_thread_cached_bytes": self.slope_of(|c| c.heap_thread_cached),
                "heap_in_use_bytes": self.slope_of(|c| c.heap_allocated - c.heap_thread_cached),
                "open_fds": self.slope_of(|c| c.open_fds),
                "threads": self.slope_of(|c| c.threads),
                "tokio_tasks": self.slope_of(|c| c.tokio_tasks),
                "state_dir_bytes": self.slope_of(|c| c.state_dir_bytes),
            },
            "slope_standard_errors": {
                "resident_bytes": self.resident_fit().map(|f| f.std_error),
                "heap_active_bytes": self.fit_of(|c| c.heap_active).map(|f| f.std_error),
                "heap_in_use_bytes": self.fit_of(|c| c.heap_allocated - c.heap_thread_cached).map(|f| f.std_error),
            },
        })
    }

    /// The lines on memory, descriptors, tasks and the state directory, when there is a
    /// slope to show.
    pub fn print(&self, out: &mut impl Write) -> Result<()> {
        let (Some(resident), Some(last)) = (self.resident_fit(), self.last()) else { return Ok(()) };
        writeln!(
            out,
            "memory: {:.0} MB resident at the end; slope over the second half {:+.1} ± {:.1} KB per window (95%)",
            last / 1e6,
            resident.slope / 1e3,
            resident.interval_95() / 1e3
        )?;
        let (Some(first), Some(end)) = (self.counts.first(), self.counts.last()) else { return Ok(()) };
        let in_use = |c: &Counts| c.heap_allocated - c.heap_thread_cached;
        if let (Some(active), Some(used)) = (self.fit_of(|c| c.heap_active), self.fit_of(in_use))
            && end.heap_active > 0.0
        {
            writeln!(
                out,
                "heap: {:.0} MB active, {:.0} MB in use and {:.0} MB in threads' caches at the end; slopes over the second half: active {:+.1} ± {:.1}, in use {:+.1} ± {:.1} KB per window (95%)",
                end.heap_active / 1e6,
                in_use(end) / 1e6,
                end.heap_thread_cached / 1e6,
                active.slope / 1e3,
                active.interval_95() / 1e3,
                used.slope / 1e3,
                used.interval_95() / 1e3
            )?;
        }
        let per_window = |of: fn(&Counts) -> f64| self.slope_of(of).unwrap_or(0.0);
        writeln!(
            out,
            "open files: {:.0} at the first window, {:.0} at the end ({:+.3} per window); threads: {:.0}, {:.0} ({:+.3} per window); tokio tasks: {:.0}, {:.0} ({:+.3} per window)",
            first.open_fds,
            end.open_fds,
            per_window(|c| c.open_fds),
            first.threads,
            end.threads,
            per_window(|c| c.threads),
            first.tokio_tasks,
            end.tokio_tasks,
            per_window(|c| c.tokio_tasks)
        )?;
        if self.state_dir.is_some() {
            writeln!(
                out,
                "state directory: {:.1} MB at the end; slope over the second half {:+.1} KB per window",
                end.state_dir_bytes / 1e6,
                per_window(|c| c.state_dir_bytes) / 1e3
            )?;
        }
        Ok(())
    }
}

/// Resident memory of this process in bytes (Linux `/proc/self/status`), if known.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The allocator's own counters, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct HeapBytes {
    allocated: u64,
    active: u64,
    thread_cached: u64,
}

/// jemalloc's live and active heap, refreshed (its statistics are cached per epoch).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
fn heap_bytes() -> Option<HeapBytes> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()? as u64;
    let active = stats::active::read().ok()? as u64;
    // SAFETY: the control names a `size_t` statistic (jemalloc's ctl.c), read as `usize`;
    // 4096 is MALLCTL_ARENAS_ALL, the sum over arenas.
    let thread_cached = unsafe { tikv_jemalloc_ctl::raw::read::<usize>(b"stats.arenas.4096.tcache_bytes\0") }.ok()?;
    Some(HeapBytes { allocated, active, thread_cached: thread_cached as u64 })
}

/// Without jemalloc there are no allocator counters.
#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
fn heap_bytes() -> Option<HeapBytes> {
    None
}

/// This process's threads (Linux `/proc/self/status`), if known.
fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:"))?.trim().parse().ok()
}

/// This process's open file descriptors (Linux `/proc/self/fd`), if known.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Tasks alive on the current tokio runtime (0 outside one).
fn tokio_tasks() -> usize {
    tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks())
}

/// Bytes of the regular files under `dir` (what is unreadable counts as nothing).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// A least-squares line's slope and the slope's standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fit {
    slope: f64,
    /// From the residuals' spread; 0 with two points or a perfect line.
    std_error: f64,
}

impl Fit {
    /// Half-width of the slope's 95% interval (normal approximation: the soak's halves
    /// have hundreds of points, and their residuals are nearly uncorrelated).
    fn interval_95(&self) -> f64 {
        1.96 * self.std_error
    }
}

/// Least-squares fit of `y` over `x` (bytes per window for a memory trace); `None` with
/// fewer than two distinct `x`.
fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let squared_residuals: f64 = points.iter().map(|(x, y)| (y - my - slope * (x - mx)).powi(2)).sum();
    let std_error = if points.len() > 2 { (squared_residuals / (n - 2.0) / sxx).sqrt() } else { 0.0 };
    Some(Fit { slope, std_error })
}

/// Least-squares slope of `y` over `x`.
#[cfg(test)]
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    fit(points).map(|f| f.slope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_memory_trace() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 100.0)).collect();
        assert_eq!(slope(&flat), Some(0.0));
        let growing: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 100.0 + 37.0 * f64::from(i))).collect();
        assert!((slope(&growing).unwrap() - 37.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn the_slope_carries_its_standard_error() {
        // Slope 0.2, residuals ∓0.2, ±0.6: sqrt(0.8 / (4 − 2) / 5).
        let zigzag = fit(&[(0.0, 0.0), (1.0, 1.0), (2.0, 0.0), (3.0, 1.0)]).unwrap();
        assert!((zigzag.slope - 0.2).abs() < 1e-12, "{zigzag:?}");
        assert!((zigzag.std_error - 0.08f64.sqrt()).abs() < 1e-12, "{zigzag:?}");
        assert!((zigzag.interval_95() - 1.96 * 0.08f64.sqrt()).abs() < 1e-12);
        let line: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 3.0 * f64::from(i))).collect();
        assert_eq!(fit(&line).map(|f| f.std_error), Some(0.0));
    }

    #[test]
    fn the_slope_leaves_out_the_first_half() {
        // Warm-up doubles the memory; after it, flat.
        let points = (1..=10).map(|w| (f64::from(w), if w <= 5 { 1e8 * f64::from(w) } else { 5e8 })).collect();
        let trace = MemoryTrace { points, window: 10, ..MemoryTrace::default() };
        assert_eq!(trace.slope_after_warmup(), Some(0.0));
        assert_eq!(trace.last(), Some(5e8));
        let mut out = Vec::new();
        trace.print(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "memory: 500 MB resident at the end; slope over the second half +0.0 ± 0.0 KB per window (95%)\n"
        );
    }

    #[tokio::test]
    async fn a_sample_counts_descriptors_tasks_and_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("f"), vec![0u8; 3000]).unwrap();
        std::fs::write(dir.path().join("g"), vec![0u8; 1000]).unwrap();
        let mut trace = MemoryTrace::with_state_dir(dir.path().to_owned());
        trace.record(1);
        trace.record(1); // the same window: no second sample
        let parked = tokio::spawn(std::future::pending::<()>());
        trace.record(2);
        parked.abort();
        trace.record(3);
        trace.record(4);
        assert_eq!(trace.points().len(), 4);
        assert_eq!(trace.counts[0].state_dir_bytes, 4000.0);
        assert!(trace.counts[0].open_fds >= 3.0, "{:?}", trace.counts[0]);
        assert!(trace.counts[0].threads >= 1.0, "{:?}", trace.counts[0]);
        assert!(trace.counts[1].tokio_tasks > trace.counts[0].tokio_tasks, "{:?}", trace.counts);
        if cfg!(all(target_os = "linux", not(target_env = "musl"))) {
            // This binary allocates with jemalloc, whose counters the sample reads.
            let first = trace.counts[0];
            assert!(first.heap_allocated > 0.0 && first.heap_active >= first.heap_allocated, "{first:?}");
            assert!(first.heap_thread_cached <= first.heap_allocated, "{first:?}");
        }
        let json = trace.to_json();
        assert_eq!(json["state_dir_bytes"][1], 4000.0);
        assert_eq!(json["heap_active_bytes"].as_array().map(Vec::len), Some(4));
        let mut out = Vec::new();
        trace.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("open files:") && text.contains("state directory: 0.0 MB"), "{text}");
    }
}
