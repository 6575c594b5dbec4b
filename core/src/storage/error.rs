//! What can go wrong talking to a bucket, in terms a caller can act on: skip the peer
//! (`Unavailable`, `Timeout`, `Stalled`, `Forbidden`), drop the object (`NotFound`,
//! `TooLarge`), fix the configuration (`AccessDenied`, `Config`, `InvalidLocation`).

use std::time::Duration;

use thiserror::Error;

use super::location::LocationError;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("s3://{bucket}/{key}: not found")]
    NotFound { bucket: String, key: String },

    /// The object (or listing) is larger than the caller allows; nothing was kept.
    #[error("s3://{bucket}/{key}: larger than the limit of {limit} bytes (saw {seen})")]
    TooLarge { bucket: String, key: String, limit: u64, seen: u64 },

    /// One attempt ran past its deadline (after all retries).
    #[error("s3://{bucket}/{key}: timed out after {after:?}")]
    Timeout { bucket: String, key: String, after: Duration },

    /// A download received no bytes for the progress timeout.
    #[error("s3://{bucket}/{key}: stalled, no bytes for {after:?} after {received} bytes")]
    Stalled { bucket: String, key: String, after: Duration, received: u64 },

    /// Connection failures, resets and 5xx/429 answers, after all retries.
    #[error("s3://{bucket}/{key}: unavailable: {reason}")]
    Unavailable { bucket: String, key: String, reason: String },

    /// 401/403: wrong or missing credentials, or a bucket that is not public-read.
    #[error("s3://{bucket}/{key}: access denied: {reason}")]
    AccessDenied { bucket: String, key: String, reason: String },

    /// The address policy refuses the bucket's endpoint: a peer's bucket on a loopback,
    /// private or otherwise non-public address (see `TransferOptions::allow_private_endpoints`).
    /// Nothing was sent; another attempt would be refused the same way.
    #[error("{location}: refused: {reason}")]
    Forbidden { location: String, reason: String },

    #[error(transparent)]
    InvalidLocation(#[from] LocationError),

    /// Bad client configuration (credentials not found, unusable region).
    #[error("storage configuration: {0}")]
    Config(String),

    #[error("s3://{bucket}/{key}: {context}: {source}")]
    Io {
        bucket: String,
        key: String,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("s3://{bucket}/{key}: {reason}")]
    Other { bucket: String, key: String, reason: String },
}

impl StorageError {
    /// Whether another attempt may succeed: connection problems, timeouts, 5xx and 429.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. } | StorageError::Timeout { .. } | StorageError::Stalled { .. })
    }
}
