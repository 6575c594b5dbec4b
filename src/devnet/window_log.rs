//! Every miner's window summaries, appended to the state directory as the live table sees
//! them: the report reads a run of any length back from here, while each miner keeps only
//! its bounded history in memory (`tessera_actors::bounds`), so a soak measures the
//! resident memory of what an operator runs.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tessera_actors::WindowSummary;

/// One file per miner, in the devnet's order.
pub struct WindowLog {
    dir: PathBuf,
    files: Vec<BufWriter<File>>,
}

impl WindowLog {
    /// A fresh log for `miners` miners under `dir` (a resumed devnet reports this run's
    /// windows, as its miners' in-memory histories did).
    pub fn create(dir: &Path, miners: usize) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = (0..miners)
            .map(|i| {
                let path = Self::path(dir, i);
                File::create(&path).map(BufWriter::new).with_context(|| format!("creating {}", path.display()))
            })
            .collect::<Result<_>>()?;
        Ok(Self { dir: dir.to_owned(), files })
    }

    fn path(dir: &Path, miner: usize) -> PathBuf {
        dir.join(format!("miner-{miner}.postcard"))
    }

    /// Appends miner `miner`'s summary of a window.
    pub fn append(&mut self, miner: usize, summary: &WindowSummary) -> Result<()> {
        let file = self.files.get_mut(miner).context("no window log for this miner")?;
        let bytes = postcard::to_allocvec(summary).context("encoding a window summary")?;
        file.write_all(&bytes).context("writing the window log")
    }

    /// Every summary appended for miner `miner`, in order.
    pub fn read(&mut self, miner: usize) -> Result<Vec<WindowSummary>> {
        let file = self.files.get_mut(miner).context("no window log for this miner")?;
        file.flush().context("writing the window log")?;
        let path = Self::path(&self.dir, miner);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut rest = bytes.as_slice();
        let mut summaries = Vec::new();
        while !rest.is_empty() {
            let (summary, tail) = postcard::take_from_bytes(rest)
                .with_context(|| format!("decoding {} after {} windows", path.display(), summaries.len()))?;
            summaries.push(summary);
            rest = tail;
        }
        Ok(summaries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_back_in_order_per_miner() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = WindowLog::create(dir.path(), 2).expect("log");
        let trained = WindowSummary { loss: 2.5, model_hash: Some(7), ..WindowSummary::untrained(3, 1, 2, "x".into()) };
        let idle = WindowSummary::untrained(4, 0, 0, "no pages".into());
        log.append(1, &trained).expect("append");
        log.append(1, &idle).expect("append");
        let back = log.read(1).expect("read");
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].window, back[0].loss, back[0].model_hash), (3, 2.5, Some(7)));
        assert_eq!((back[1].window, back[1].idle_reason.as_deref()), (4, Some("no pages")));
        assert!(back[1].loss.is_nan(), "an untrained window's loss stays NaN");
        assert!(log.read(0).expect("read").is_empty());
        assert!(log.append(2, &idle).is_err(), "no third miner");
    }
}
