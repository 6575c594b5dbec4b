//! tessera's training data: which pages a miner trains on in a window (deterministic from uid and
//! window, so validators can recompute them), where their text comes from (HF datasets-server, local
//! shards, synthetic), how it is tokenized, and how it becomes fixed-shape micro-batches.

pub mod batch;
pub mod error;
pub mod hub;
pub mod pages;
pub mod source;
pub mod tokenizer;
pub mod window;

pub use batch::{Batch, build_batches, tokenize_documents};
pub use error::DataError;
pub use hub::{DEFAULT_HF_ENDPOINT, HubClient};
pub use pages::{
    ConfigInfo, DatasetInfo, PAGES_DOMAIN, Page, PageSelection, ROWS_PER_PAGE, pages_for, pages_from_seed, random_pages,
};
pub use source::{
    DEFAULT_DATASET, DEFAULT_HF_BASE_URL, HELD_OUT_DOMAIN, HfRowsConfig, HfRowsSource, LocalFilesSource, PageSource,
    SyntheticSource,
};
pub use tokenizer::{BYTE_EOS_ID, BYTE_PAD_ID, BYTE_VOCAB_SIZE, HfTokenizer, TextTokenizer, default_hub_dirs};
pub use window::{WindowData, WindowSpec};
