//! Where pages of text come from: the HF datasets-server (as the seed), local shards, or a synthetic
//! generator for offline devnets and tests. All sit behind [`PageSource`] so the window loop does not care.

mod hf;
mod local;
mod synthetic;

pub use hf::{DEFAULT_DATASET, DEFAULT_HF_BASE_URL, HfRowsConfig, HfRowsSource};
pub use local::LocalFilesSource;
pub use synthetic::SyntheticSource;

use crate::error::DataError;
use crate::pages::{DatasetInfo, Page, pages_from_seed};

/// A dataset that can say what configs it has and hand out the text of a page's rows.
#[async_trait::async_trait]
pub trait PageSource: Send + Sync {
    /// Configs, splits and row counts; page selection runs over this.
    async fn info(&self) -> Result<DatasetInfo, DataError>;
    /// The text of each row of `page`, in row order.
    async fn rows(&self, page: &Page) -> Result<Vec<String>, DataError>;
    /// A short name for logs and errors (dataset name, directory, …).
    fn describe(&self) -> String {
        "page source".to_owned()
    }
    /// `n_pages` pages for held-out evaluation, the same on every node. This default
    /// draws them from the training rows with a reserved seed ([`HELD_OUT_DOMAIN`]), so a
    /// miner may in principle be assigned one of them (rare on a large dataset); sources
    /// that can reserve rows no miner is ever assigned override it.
    async fn held_out_pages(&self, n_pages: usize) -> Result<Vec<Page>, DataError> {
        let info = self.info().await?;
        Ok(pages_from_seed(blake3::derive_key(HELD_OUT_DOMAIN, b"held-out pages"), n_pages, &info))
    }
}

/// BLAKE3 `derive_key` context of the held-out pages.
pub const HELD_OUT_DOMAIN: &str = "tessera-data 2026-12 held-out pages v1";

/// Chain of `source()` messages, because reqwest's and std's top-level messages omit the useful part.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = e.source();
    }
    out
}
