//! The process over a run, for soak runs: resident memory, open file descriptors, tokio
//! tasks and the state directory's size, sampled whenever the slowest exchanging miner
//! completes a window, and their slopes after warm-up, which should be flat.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

/// The non-memory series of one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    open_fds: f64,
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
                self.counts.push(Counts {
                    open_fds: open_fds().unwrap_or(0) as f64,
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
        slope(&self.points[self.points.len() / 2..])
    }

    fn series(&self, of: impl Fn(&Counts) -> f64) -> Vec<(f64, f64)> {
        self.points.iter().zip(&self.counts).map(|(p, c)| (p.0, of(c))).collect()
    }

    fn slope_of(&self, of: impl Fn(&Counts) -> f64) -> Option<f64> {
        let series = self.series(of);
        slope(&series[series.len() / 2..])
    }

    /// The four series and their slopes after warm-up, for `summary.json`.
    pub fn to_json(&self) -> serde_json::Value {
        let column = |of: fn(&Counts) -> f64| self.counts.iter().map(of).collect::<Vec<_>>();
        json!({
            "window": self.points.iter().map(|p| p.0).collect::<Vec<_>>(),
            "resident_bytes": self.points.iter().map(|p| p.1).collect::<Vec<_>>(),
            "open_fds": column(|c| c.open_fds),
            "tokio_tasks": column(|c| c.tokio_tasks),
            "state_dir_bytes": column(|c| c.state_dir_bytes),
            "slopes_per_window": {
                "resident_bytes": self.slope_after_warmup(),
                "open_fds": self.slope_of(|c| c.open_fds),
                "tokio_tasks": self.slope_of(|c| c.tokio_tasks),
                "state_dir_bytes": self.slope_of(|c| c.state_dir_bytes),
            },
        })
    }

    /// The lines on memory, descriptors, tasks and the state directory, when there is a
    /// slope to show.
    pub fn print(&self, out: &mut impl Write) -> Result<()> {
        let (Some(slope), Some(last)) = (self.slope_after_warmup(), self.last()) else { return Ok(()) };
        writeln!(
            out,
            "memory: {:.0} MB resident at the end; slope over the second half {:+.1} KB per window",
            last / 1e6,
            slope / 1e3
        )?;
        let (Some(first), Some(end)) = (self.counts.first(), self.counts.last()) else { return Ok(()) };
        let per_window = |of: fn(&Counts) -> f64| self.slope_of(of).unwrap_or(0.0);
        writeln!(
            out,
            "open files: {:.0} at the first window, {:.0} at the end ({:+.3} per window); tokio tasks: {:.0}, {:.0} ({:+.3} per window)",
            first.open_fds,
            end.open_fds,
            per_window(|c| c.open_fds),
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

/// Least-squares slope of `y` over `x` (bytes per window for a memory trace); `None` with
/// fewer than two distinct `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
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
    (sxx > 0.0).then(|| sxy / sxx)
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
            "memory: 500 MB resident at the end; slope over the second half +0.0 KB per window\n"
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
        assert!(trace.counts[1].tokio_tasks > trace.counts[0].tokio_tasks, "{:?}", trace.counts);
        let json = trace.to_json();
        assert_eq!(json["state_dir_bytes"][1], 4000.0);
        let mut out = Vec::new();
        trace.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("open files:") && text.contains("state directory: 0.0 MB"), "{text}");
    }
}
