//! One error type for the whole crate, naming the cause and where it happened (URL, file, field) so that
//! a miner's log line is enough to act on.

use std::path::PathBuf;

/// Everything that can go wrong while finding, fetching, tokenizing and batching training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The server answered with a non-success status (after retries where the status was retryable).
    #[error("HTTP {status} from {url}{}", body_hint(.body))]
    HttpStatus { status: u16, url: String, body: String },
    /// The request never produced a response (connect, timeout, reset), after all retries.
    #[error("request to {url} failed after {attempts} attempt(s): {message}")]
    Network { url: String, attempts: u32, message: String },
    /// The response body was larger than the configured cap.
    #[error("response from {url} exceeds the {limit}-byte cap")]
    ResponseTooLarge { url: String, limit: usize },
    /// The body or a line was not the JSON we expected; `field` names what was missing or wrong.
    #[error("malformed JSON from {origin} ({field}): {message}")]
    MalformedJson { origin: String, field: String, message: String },
    /// A configured base URL cannot have paths appended.
    #[error("invalid URL {url}: {message}")]
    InvalidUrl { url: String, message: String },
    /// A file or directory that should exist does not.
    #[error("{what} not found: {}", .path.display())]
    NotFound { what: &'static str, path: PathBuf },
    /// Reading a file or directory failed for another reason.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A parquet shard could not be decoded, or has no usable `text` column.
    #[error("parquet file {}: {message}", .path.display())]
    Parquet { path: PathBuf, message: String },
    /// No `tokenizer.json` was found; `tried` lists every path looked at.
    #[error("tokenizer {name:?} not found; looked at: {}", display_paths(.tried))]
    TokenizerNotFound { name: String, tried: Vec<PathBuf> },
    /// A `tokenizer.json` exists but could not be loaded, or lacks an EOS token.
    #[error("tokenizer {}: {message}", .path.display())]
    TokenizerLoad { path: PathBuf, message: String },
    /// Encoding or decoding text failed inside the tokenizer.
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    /// The dataset has no rows to draw pages from.
    #[error("dataset {0} has no rows")]
    EmptyDataset(String),
    /// A page names a config the source does not have, or reaches past its end.
    #[error("page {config}/{split} @{offset}+{rows} is outside the dataset: {message}")]
    BadPage { config: String, split: String, offset: u64, rows: u32, message: String },
    /// A caller passed a value that cannot work (zero sequence length, zero batch size, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A blocking helper task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

fn body_hint(body: &str) -> String {
    if body.is_empty() { String::new() } else { format!(": {body}") }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(no candidate locations)".to_owned();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
