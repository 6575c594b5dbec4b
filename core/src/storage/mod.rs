//! S3 buckets: where they are ([`BucketLocation`], the on-chain commitment), clients for
//! the own bucket (signed) and peers' buckets (anonymous, public-read), and an embedded
//! S3 server for tests and the devnet ([`embedded`]).
//!
//! rust-s3 signs and speaks the protocol; this module adds what a hostile network needs:
//! per-attempt deadlines, retries with jittered backoff for transient failures only,
//! size caps enforced before and during downloads and listings, a progress timeout,
//! downloads that land atomically or not at all, no redirects, and peers' buckets only on
//! public addresses ([`is_public_address`]) unless `allow_private_endpoints` is set.

mod bucket;
pub mod cache;
mod client;
pub mod embedded;
mod error;
mod listing;
mod location;
mod policy;
mod retry;

pub use bucket::{BucketName, BucketNameError, Endpoint};
pub use cache::{
    CacheEntry, CacheError, CacheFetchError, CacheStats, CachedSlice, DEFAULT_LOCK_TIMEOUT, GcReport, SliceCache,
};
pub use client::{
    AccessKeys, BucketClient, CredentialSource, DEFAULT_MULTIPART_THRESHOLD, DEFAULT_REGION, ObjectInfo, PeerClients,
    TEMP_PREFIX, TransferOptions, parse_last_modified,
};
pub use embedded::{EmbeddedS3, sweep_orphans};
pub use error::StorageError;
pub use location::{BucketLocation, LocationError, MAX_LOCATION_LEN};
pub use policy::{is_public_address, non_public_kind};
pub use retry::RetryPolicy;
