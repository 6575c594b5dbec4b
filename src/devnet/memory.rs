//! Resident memory over a run, for soak runs: sampled whenever the slowest exchanging miner
//! completes a window, and its slope after warm-up, which should be flat.

use std::io::Write;

use anyhow::Result;

/// Resident memory whenever the slowest exchanging miner completed a window.
#[derive(Debug, Default)]
pub struct MemoryTrace {
    /// `(window, resident bytes)`, windows counted per miner from 1.
    points: Vec<(f64, f64)>,
    /// The slowest miner's windows at the last sample.
    window: u64,
}

impl MemoryTrace {
    /// Samples resident memory when the slowest miner has completed a window more.
    pub fn record(&mut self, slowest: u64) {
        if slowest > self.window {
            self.window = slowest;
            if let Some(rss) = resident_bytes() {
                self.points.push((slowest as f64, rss as f64));
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

    /// The line on memory, when there is a slope to show.
    pub fn print(&self, out: &mut impl Write) -> Result<()> {
        if let (Some(slope), Some(last)) = (self.slope_after_warmup(), self.last()) {
            writeln!(
                out,
                "memory: {:.0} MB resident at the end; slope over the second half {:+.1} KB per window",
                last / 1e6,
                slope / 1e3
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
        let trace = MemoryTrace { points, window: 10 };
        assert_eq!(trace.slope_after_warmup(), Some(0.0));
        assert_eq!(trace.last(), Some(5e8));
        let mut out = Vec::new();
        trace.print(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "memory: 500 MB resident at the end; slope over the second half +0.0 KB per window\n"
        );
    }
}
