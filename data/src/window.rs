//! Everything a miner trains on in one window, from `(selection, window)` to micro-batches.

use futures::{StreamExt, TryStreamExt};
use tracing::debug;

use crate::batch::{Batch, build_batches};
use crate::error::DataError;
use crate::pages::{Page, PageSelection};
use crate::source::PageSource;
use crate::tokenizer::TextTokenizer;

/// What to load for a window.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub selection: PageSelection,
    pub window: u64,
    /// Pages per window (`hparams.validator_window_eval_size` in the seed).
    pub n_pages: usize,
    /// `hparams.sequence_length`.
    pub seq_len: usize,
    /// Sequences per micro-batch (`--actual_batch_size`).
    pub batch_size: usize,
    /// Pages fetched at once; at least 1.
    pub max_concurrent_fetches: usize,
}

/// A window's pages and micro-batches.
#[derive(Debug, Clone)]
pub struct WindowData {
    pub window: u64,
    pub pages: Vec<Page>,
    pub batches: Vec<Batch>,
    /// Rows (documents) fetched.
    pub documents: usize,
    /// Tokens that are not padding.
    pub tokens: usize,
}

impl WindowData {
    /// Chooses the window's pages from `source.info()` and loads them.
    pub async fn load(
        source: &dyn PageSource,
        tokenizer: &TextTokenizer,
        spec: &WindowSpec,
    ) -> Result<Self, DataError> {
        let info = source.info().await?;
        if info.total_rows() == 0 {
            return Err(DataError::EmptyDataset(source.describe()));
        }
        let pages = spec.selection.pages(spec.window, spec.n_pages, &info);
        Self::load_pages(source, tokenizer, spec, pages).await
    }

    /// Loads given pages (a validator re-checking a miner, or a resumed window): fetched concurrently,
    /// kept in page order, tokenized off the async threads.
    pub async fn load_pages(
        source: &dyn PageSource,
        tokenizer: &TextTokenizer,
        spec: &WindowSpec,
        pages: Vec<Page>,
    ) -> Result<Self, DataError> {
        if spec.seq_len == 0 || spec.batch_size == 0 {
            return Err(DataError::InvalidArgument(format!(
                "sequence length ({}) and batch size ({}) must be positive",
                spec.seq_len, spec.batch_size
            )));
        }
        // Owned pages keep this future `Send` for `tokio::spawn` (a closure over borrowed
        // pages trips rustc's higher-ranked Send inference).
        let per_page: Vec<Vec<String>> =
            futures::stream::iter(pages.clone().into_iter().map(|page| async move { source.rows(&page).await }))
                .buffered(spec.max_concurrent_fetches.max(1))
                .try_collect()
                .await?;
        let docs: Vec<String> = per_page.into_iter().flatten().collect();
        let documents = docs.len();
        let (tok, seq_len, batch_size) = (tokenizer.clone(), spec.seq_len, spec.batch_size);
        let batches = tokio::task::spawn_blocking(move || build_batches(&docs, &tok, seq_len, batch_size))
            .await
            .map_err(|e| DataError::Task(e.to_string()))??;
        let tokens = batches.iter().map(Batch::real_tokens).sum();
        debug!(
            window = spec.window,
            pages = pages.len(),
            documents,
            tokens,
            batches = batches.len(),
            "window data ready"
        );
        Ok(Self { window: spec.window, pages, batches, documents, tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::pages_for;
    use crate::source::SyntheticSource;
    use crate::tokenizer::BYTE_EOS_ID;

    fn spec(selection: PageSelection) -> WindowSpec {
        WindowSpec { selection, window: 42, n_pages: 3, seq_len: 64, batch_size: 4, max_concurrent_fetches: 2 }
    }

    #[tokio::test]
    async fn window_data_is_deterministic_per_uid_and_window() {
        let src = SyntheticSource::with_shape(3, 4, 10_000);
        let tok = TextTokenizer::Bytes;
        let a = WindowData::load(&src, &tok, &spec(PageSelection::Uid(5))).await.expect("window");
        let info = src.info().await.expect("info");
        assert_eq!(a.pages, pages_for(5, 42, 3, &info));
        assert_eq!(a.documents, 300);
        assert!(!a.batches.is_empty());
        assert!(a.batches.iter().all(|b| b.seq_len == 64 && b.batch_size <= 4 && b.tokens.len() == b.batch_size * 64));
        assert!(a.batches[..a.batches.len() - 1].iter().all(|b| b.batch_size == 4));
        let eos = a.batches.iter().flat_map(|b| &b.tokens).filter(|&&t| t == BYTE_EOS_ID).count();
        assert_eq!(eos, 300, "one EOS per document");
        assert_eq!(a.tokens, a.batches.iter().map(Batch::real_tokens).sum::<usize>());

        let again = WindowData::load(&src, &tok, &spec(PageSelection::Uid(5))).await.expect("again");
        assert_eq!(again.batches, a.batches);
        let other = WindowData::load(&src, &tok, &spec(PageSelection::Uid(6))).await.expect("other uid");
        assert_ne!(other.pages, a.pages);
    }

    #[tokio::test]
    async fn window_data_rejects_bad_shapes_and_propagates_source_errors() {
        let src = SyntheticSource::with_shape(3, 2, 1_000);
        let tok = TextTokenizer::Bytes;
        let mut bad = spec(PageSelection::Random);
        bad.batch_size = 0;
        assert!(matches!(WindowData::load(&src, &tok, &bad).await, Err(DataError::InvalidArgument(_))));
        let page = Page { config: "synthetic-09".into(), split: "train".into(), offset: 0, rows: 1 };
        let err = WindowData::load_pages(&src, &tok, &spec(PageSelection::Random), vec![page]).await;
        assert!(matches!(err, Err(DataError::BadPage { .. })), "{err:?}");
        let empty = SyntheticSource::with_shape(3, 0, 1_000);
        let err = WindowData::load(&empty, &tok, &spec(PageSelection::Uid(1))).await;
        assert!(matches!(err, Err(DataError::EmptyDataset(_))), "{err:?}");
    }
}
