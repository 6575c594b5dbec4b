//! Bucket clients on rust-s3: the own bucket (signed) and peers' buckets (anonymous).
//!
//! Every operation runs under a per-attempt deadline and is retried with backoff only for
//! failures another attempt may cure. Downloads are streamed to disk under a size cap and
//! a progress timeout, because a peer decides what it serves us. GETs and listings
//! ([`super::listing`]) are signed by rust-s3 but sent through our own HTTP client, which
//! follows no redirect and, for peers, reaches only public addresses ([`super::policy`]).

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use s3::command::Command;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::request::Request as _;
use s3::request::tokio_backend::ReqwestRequest;
use s3::{Bucket, Region};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug, warn};

use super::error::StorageError;
use super::location::BucketLocation;
use super::policy;
use super::retry::RetryPolicy;
use crate::slice::{ObjectKey, SliceKind};
use crate::window::Window;

/// Objects at least this large are uploaded in parts.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 16 << 20;

/// Region used to sign for S3-compatible endpoints when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Prefix of in-progress download files; never a valid slice name.
pub const TEMP_PREFIX: &str = ".tessera-dl-";

/// Timeouts, retries and limits shared by the operations of a client.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Deadline of one attempt of a small request (list page, delete).
    pub request_timeout: Duration,
    /// Deadline of one attempt of an upload or download, body included.
    pub transfer_timeout: Duration,
    /// A download that receives no bytes (headers included) for this long is `Stalled`.
    pub progress_timeout: Duration,
    /// Uploads of at least this many bytes use multipart (parts of 8 MiB, rust-s3's size).
    pub multipart_threshold: usize,
    /// Parts of one multipart upload in flight at once.
    pub max_concurrent_parts: usize,
    pub retry: RetryPolicy,
    /// `max-keys` per list page; `None` lets the server choose (1000 on AWS).
    pub list_page_size: Option<usize>,
    /// A listing with more entries fails as `TooLarge` (a hostile peer's bucket). Entries
    /// outside the prefix, which a hostile server may send, count too.
    pub max_list_entries: usize,
    /// A list page whose body is longer fails as `TooLarge`, checked while it arrives, so
    /// no more than this is ever buffered. A 1000-key page of slice names is ~300 KB.
    pub max_list_page_bytes: u64,
    /// A listing whose pages add up to more bytes fails as `TooLarge`: a hostile server
    /// could otherwise answer with endless small pages (100 000 slice names are ~30 MB).
    pub max_list_bytes: u64,
    /// Whether peers' buckets may be on loopback, private, link-local and other non-public
    /// addresses (see [`super::is_public_address`]). Off by default: a peer chooses its
    /// endpoint, and could otherwise aim our requests at our own network. The devnet and
    /// tests, whose servers listen on 127.0.0.1, turn it on. The own bucket
    /// ([`BucketClient::new`]) comes from our configuration and is not checked.
    pub allow_private_endpoints: bool,
    /// Deletes in flight at once in [`BucketClient::delete_slices_before`].
    pub delete_concurrency: usize,
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            transfer_timeout: Duration::from_secs(300),
            progress_timeout: Duration::from_secs(20),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            max_concurrent_parts: 4,
            retry: RetryPolicy::default(),
            list_page_size: None,
            max_list_entries: 100_000,
            max_list_page_bytes: 4 << 20,
            max_list_bytes: 64 << 20,
            allow_private_endpoints: false,
            delete_concurrency: 8,
        }
    }
}

/// An access key pair. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKeys {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl AccessKeys {
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self { access_key: access_key.into(), secret_key: secret_key.into(), session_token: None }
    }

    /// Fresh random keys, for an embedded server and its owner.
    pub fn random() -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        let access: [u8; 10] = rng.random();
        let secret: [u8; 20] = rng.random();
        Self::new(format!("TESSERA{}", hex::encode_upper(access)), hex::encode(secret))
    }

    pub fn to_credentials(&self) -> Result<Credentials, StorageError> {
        Credentials::new(Some(&self.access_key), Some(&self.secret_key), None, self.session_token.as_deref(), None)
            .map_err(|e| StorageError::Config(format!("credentials: {e}")))
    }
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeys")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the own bucket's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Keys given in the configuration.
    Static(AccessKeys),
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the
    /// profile (default `default`) in `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`).
    /// Instance metadata and STS are not consulted: they would block on the network.
    Environment { profile: Option<String> },
    /// No signing: only public-read buckets.
    Anonymous,
}

impl CredentialSource {
    pub fn resolve(&self) -> Result<Credentials, StorageError> {
        match self {
            CredentialSource::Static(keys) => keys.to_credentials(),
            CredentialSource::Environment { profile } => {
                Credentials::from_env().or_else(|_| Credentials::from_profile(profile.as_deref())).map_err(|e| {
                    StorageError::Config(format!(
                        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add \
                         profile {:?} to ~/.aws/credentials ({e})",
                        profile.as_deref().unwrap_or("default")
                    ))
                })
            }
            CredentialSource::Anonymous => anonymous(),
        }
    }
}

fn anonymous() -> Result<Credentials, StorageError> {
    Credentials::anonymous().map_err(|e| StorageError::Config(format!("credentials: {e}")))
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The bucket's `LastModified` in unix milliseconds; `None` when the server sent a
    /// date that does not parse (such an object cannot pass the copying defence).
    pub last_modified_ms: Option<i64>,
}

/// A client of one bucket. Cloning is a reference-count bump.
#[derive(Clone)]
pub struct BucketClient {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Bucket,
    location: BucketLocation,
    opts: TransferOptions,
    /// Sends GETs and listings: never follows redirects and, for peers, resolves names
    /// under the address policy ([`policy::http_client`]). rust-s3's own client, which
    /// cannot be configured so, only sends puts and deletes: the own bucket's business.
    http: reqwest::Client,
    /// Why the address policy refuses this bucket, found when the client was made; every
    /// operation then fails as `Forbidden` without sending anything.
    refused: Option<String>,
}

impl fmt::Debug for BucketClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketClient").field("location", &self.inner.location.to_string()).finish_non_exhaustive()
    }
}

/// Makes anonymous clients for peers' buckets. They all share one HTTP connection pool,
/// so a client per peer costs a few small allocations. The address policy
/// (`opts.allow_private_endpoints`) applies to every client made.
#[derive(Clone)]
pub struct PeerClients {
    template: Bucket,
    http: reqwest::Client,
    aws_region: String,
    opts: TransferOptions,
}

impl fmt::Debug for PeerClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClients").field("aws_region", &self.aws_region).finish_non_exhaustive()
    }
}

impl PeerClients {
    /// `aws_region` picks the endpoint for `s3://` peers. `us-east-1` gives the global
    /// virtual-host name `bucket.s3.amazonaws.com`, which AWS routes to the bucket's own
    /// region; another region gives `bucket.s3.REGION.amazonaws.com`, right only for
    /// buckets there.
    pub fn new(aws_region: &str, opts: TransferOptions) -> Result<Self, StorageError> {
        check_region(aws_region)?;
        let template = new_bucket("template-bucket", Region::UsEast1, anonymous()?)?;
        let http = policy::http_client(!opts.allow_private_endpoints)?;
        Ok(Self { template, http, aws_region: aws_region.to_owned(), opts })
    }

    /// An anonymous client for `location`. A location the address policy refuses still
    /// gets a client, whose every operation fails as [`StorageError::Forbidden`]: a peer
    /// with such a bucket is skipped like one whose bucket is down.
    pub fn client(&self, location: &BucketLocation) -> BucketClient {
        let mut bucket = self.template.clone();
        bucket.name = location.bucket().as_str().to_owned();
        bucket.region = region_for(location, &self.aws_region);
        configure(&mut bucket, location, &self.opts);
        let refused = peer_refusal(location, &self.opts);
        BucketClient {
            inner: Arc::new(Inner {
                bucket,
                location: location.clone(),
                opts: self.opts.clone(),
                http: self.http.clone(),
                refused,
            }),
        }
    }
}

/// Why the address policy refuses a peer's `location` outright, if it does (and applies).
fn peer_refusal(location: &BucketLocation, opts: &TransferOptions) -> Option<String> {
    if opts.allow_private_endpoints {
        return None;
    }
    let refused = policy::check_location(location).err();
    if let Some(reason) = &refused {
        warn!(%location, reason, "refusing a peer's bucket");
    }
    refused
}

fn check_region(region: &str) -> Result<(), StorageError> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(StorageError::Config(format!("region {region:?} is not a region name"))) }
}

fn region_for(location: &BucketLocation, region: &str) -> Region {
    match location {
        BucketLocation::Aws { .. } => match region.parse::<Region>() {
            Ok(Region::Custom { .. }) | Err(_) => {
                Region::Custom { region: region.to_owned(), endpoint: format!("https://s3.{region}.amazonaws.com") }
            }
            Ok(known) => known,
        },
        BucketLocation::Endpoint { .. } => {
            Region::Custom { region: region.to_owned(), endpoint: location.endpoint_origin().unwrap_or_default() }
        }
    }
}

fn new_bucket(name: &str, region: Region, credentials: Credentials) -> Result<Bucket, StorageError> {
    // This layer retries with its own policy and deadlines; rust-s3's built-in retry
    // (1 retry after 1 s, process-wide) would only stretch them.
    s3::set_retries(0);
    Bucket::new(name, region, credentials)
        .map(|b| *b)
        .map_err(|e| StorageError::Config(format!("building the S3 client: {e}")))
}

fn configure(bucket: &mut Bucket, location: &BucketLocation, opts: &TransferOptions) {
    // Virtual-host names fail for IP endpoints and, under TLS, for bucket names with dots.
    if matches!(location, BucketLocation::Endpoint { .. }) || location.bucket().as_str().contains('.') {
        bucket.set_path_style();
    } else {
        bucket.set_subdomain_style();
    }
    // A backstop: each operation also runs under its own tokio deadline.
    bucket.set_request_timeout(Some(opts.transfer_timeout.max(opts.request_timeout)));
}

impl BucketClient {
    /// A signed client (the own bucket). `region` signs requests and, for `s3://`,
    /// picks the AWS endpoint. The own bucket's location comes from our configuration,
    /// not from a peer, so it is trusted: the address policy does not apply to it (it may
    /// be on 127.0.0.1 or a private network whatever `allow_private_endpoints` says).
    pub fn new(
        location: &BucketLocation,
        region: &str,
        credentials: Credentials,
        opts: TransferOptions,
    ) -> Result<Self, StorageError> {
        Self::build(location, region, credentials, opts, None, policy::http_client(false)?)
    }

    /// An unsigned client of one public-read bucket, a peer's, under the address policy
    /// (see [`PeerClients`] for many).
    pub fn anonymous(location: &BucketLocation, region: &str, opts: TransferOptions) -> Result<Self, StorageError> {
        let http = policy::http_client(!opts.allow_private_endpoints)?;
        let refused = peer_refusal(location, &opts);
        Self::build(location, region, anonymous()?, opts, refused, http)
    }

    fn build(
        location: &BucketLocation,
        region: &str,
        credentials: Credentials,
        opts: TransferOptions,
        refused: Option<String>,
        http: reqwest::Client,
    ) -> Result<Self, StorageError> {
        check_region(region)?;
        let mut bucket = new_bucket(location.bucket().as_str(), region_for(location, region), credentials)?;
        configure(&mut bucket, location, &opts);
        Ok(Self { inner: Arc::new(Inner { bucket, location: location.clone(), opts, http, refused }) })
    }

    pub fn location(&self) -> &BucketLocation {
        &self.inner.location
    }

    pub fn options(&self) -> &TransferOptions {
        &self.inner.opts
    }

    pub(super) fn name(&self) -> &str {
        self.inner.location.bucket().as_str()
    }

    /// `Forbidden` if the address policy refused this bucket when the client was made.
    pub(super) fn check_allowed(&self) -> Result<(), StorageError> {
        match &self.inner.refused {
            Some(reason) => Err(self.forbidden(reason.clone())),
            None => Ok(()),
        }
    }

    /// Uploads `bytes` to `key`, in parts when at least `multipart_threshold` bytes.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let opts = &self.inner.opts;
        let multipart = bytes.len() >= opts.multipart_threshold;
        let span = tracing::debug_span!("s3_put", bucket = %self.name(), key, len = bytes.len(), multipart);
        self.check_allowed()?;
        async {
            opts.retry
                .run(|_| {
                    self.deadline(key, opts.transfer_timeout, async {
                        let bucket = &self.inner.bucket;
                        let result = if multipart {
                            let mut reader: &[u8] = &bytes;
                            bucket
                                .put_object_stream_builder(key)
                                .with_max_concurrent_chunks(opts.max_concurrent_parts.max(1))
                                .execute_stream(&mut reader)
                                .await
                                .map(drop)
                        } else {
                            bucket.put_object(key, &bytes).await.map(drop)
                        };
                        result.map_err(|e| self.map_s3(key, e))
                    })
                })
                .await
        }
        .instrument(span)
        .await
    }

    /// Downloads `key` into memory; fails with `TooLarge` past `max_bytes`.
    pub async fn get_bytes(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let opts = &self.inner.opts;
        let span = tracing::debug_span!("s3_get", bucket = %self.name(), key, max_bytes);
        self.check_allowed()?;
        async {
            opts.retry
                .run(|_| {
                    self.deadline(key, opts.transfer_timeout, async {
                        let response = self.open_get(key, max_bytes).await?;
                        let hint = response.content_length().unwrap_or(0).min(max_bytes).min(64 << 20);
                        let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
                        self.copy_body(key, response, max_bytes, &mut buf, &|_| {}).await?;
                        Ok(Bytes::from(buf))
                    })
                })
                .await
        }
        .instrument(span)
        .await
    }

    /// Streams `key` into `dest`: a temp file beside it, fsync, rename. On any error
    /// (including cancellation) neither `dest` nor a temp file is left behind. Returns
    /// the object's size.
    pub async fn get_to_file(&self, key: &str, dest: &Path, max_bytes: u64) -> Result<u64, StorageError> {
        self.get_to_file_with_progress(key, dest, max_bytes, |_| {}).await
    }

    /// [`get_to_file`](Self::get_to_file), calling `progress` with the bytes received so
    /// far after each chunk is written (for metrics, and for tests that act mid-download).
    pub async fn get_to_file_with_progress(
        &self,
        key: &str,
        dest: &Path,
        max_bytes: u64,
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<u64, StorageError> {
        let opts = &self.inner.opts;
        let span = tracing::debug_span!("s3_get_file", bucket = %self.name(), key, dest = %dest.display(), max_bytes);
        self.check_allowed()?;
        async {
            opts.retry
                .run(|_| self.deadline(key, opts.transfer_timeout, self.download_once(key, dest, max_bytes, &progress)))
                .await
        }
        .instrument(span)
        .await
    }

    async fn download_once(
        &self,
        key: &str,
        dest: &Path,
        max_bytes: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, StorageError> {
        let io = |context: &'static str| move |source| self.io(key, context, source);
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        tokio::fs::create_dir_all(dir).await.map_err(io("creating the destination directory"))?;
        // Dropped (and so deleted) on every error path and on cancellation.
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io("creating the temp file"))?;
        let file = tmp.as_file().try_clone().map_err(io("opening the temp file"))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));

        let response = self.open_get(key, max_bytes).await?;
        let size = self.copy_body(key, response, max_bytes, &mut out, progress).await?;
        out.flush().await.map_err(io("writing the temp file"))?;
        out.get_ref().sync_all().await.map_err(io("syncing the temp file"))?;
        drop(out);
        // Synchronous on purpose: once the body is complete, no cancellation point may
        // separate the rename from the caller learning of it.
        tmp.persist(dest).map_err(|e| self.io(key, "renaming into place", e.error))?;
        #[cfg(unix)]
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            warn!(error = %e, dir = %dir.display(), "could not fsync the download directory");
        }
        debug!(size, "downloaded");
        Ok(size)
    }

    /// Sends a GET and checks status and announced size. Built on rust-s3's signing but
    /// sent here, so that headers and body stay in our hands: rust-s3 would read a whole
    /// error body into memory and hides `Content-Length` from streams.
    async fn open_get(&self, key: &str, max_bytes: u64) -> Result<reqwest::Response, StorageError> {
        let after = self.inner.opts.progress_timeout;
        let response = match tokio::time::timeout(after, self.send_signed(key, key, Command::GetObject)).await {
            Err(_) => return Err(self.stalled(key, 0)),
            Ok(result) => self.check_status(key, result?).await?,
        };
        if let Some(len) = response.content_length()
            && len > max_bytes
        {
            return Err(self.too_large(key, max_bytes, len));
        }
        Ok(response)
    }

    /// Signs `command` on `path` as rust-s3 would and sends it through our own client
    /// (no redirects, the address policy); `key` names the request in errors.
    pub(super) async fn send_signed(
        &self,
        key: &str,
        path: &str,
        command: Command<'_>,
    ) -> Result<reqwest::Response, StorageError> {
        self.check_allowed()?;
        let request = ReqwestRequest::new(&self.inner.bucket, path, command).await.map_err(|e| self.map_s3(key, e))?;
        let url = request.url().map_err(|e| self.map_s3(key, e))?;
        let headers = request.headers().await.map_err(|e| self.map_s3(key, e))?;
        self.inner.http.get(url.as_str()).headers(headers).send().await.map_err(|e| self.map_reqwest(key, e))
    }

    /// Passes a 2xx answer; any other is an error. A redirect is not followed and fails
    /// naming its status and target; other error bodies are read only up to 4 KiB.
    pub(super) async fn check_status(
        &self,
        key: &str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, StorageError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status.is_redirection() {
            let target = response.headers().get(reqwest::header::LOCATION).map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.chars().filter(|c| !c.is_control()).take(200).collect::<String>()
            });
            let to = target.map(|t| format!(" to {t:?}")).unwrap_or_default();
            return Err(self.other(key, format!("HTTP {status}: the redirect{to} is not followed")));
        }
        let body = read_prefix(response, 4096, self.inner.opts.progress_timeout).await;
        Err(self.map_status(key, status.as_u16(), &body))
    }

    /// Copies the body to `out`, enforcing the cap and the progress timeout.
    async fn copy_body<W: AsyncWrite + Unpin>(
        &self,
        key: &str,
        mut response: reqwest::Response,
        max_bytes: u64,
        out: &mut W,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, StorageError> {
        let announced = response.content_length();
        let after = self.inner.opts.progress_timeout;
        let mut received = 0u64;
        loop {
            let chunk = match tokio::time::timeout(after, response.chunk()).await {
                Err(_) => return Err(self.stalled(key, received)),
                Ok(Err(e)) => return Err(self.map_reqwest(key, e)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            received = received.saturating_add(chunk.len() as u64);
            if received > max_bytes {
                return Err(self.too_large(key, max_bytes, received));
            }
            out.write_all(&chunk).await.map_err(|e| self.io(key, "writing the download", e))?;
            progress(received);
        }
        if let Some(len) = announced
            && len != received
        {
            return Err(self.unavailable(key, format!("body ended after {received} of {len} announced bytes")));
        }
        Ok(received)
    }

    /// Deletes `key`; deleting an absent object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let opts = &self.inner.opts;
        let span = tracing::debug_span!("s3_delete", bucket = %self.name(), key);
        self.check_allowed()?;
        let result = opts
            .retry
            .run(|_| {
                self.deadline(key, opts.request_timeout, async {
                    self.inner.bucket.delete_object(key).await.map(drop).map_err(|e| self.map_s3(key, e))
                })
            })
            .instrument(span)
            .await;
        match result {
            Err(StorageError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Deletes every slice object (any kind, any protocol version) whose window is before
    /// `window`; objects whose names are not slice names are left alone. Returns how many
    /// were deleted; on failure, the first error (the other deletes still ran).
    pub async fn delete_slices_before(&self, window: Window) -> Result<usize, StorageError> {
        self.delete_kinds_before(SliceKind::ALL, window).await
    }

    /// [`Self::delete_slices_before`] for the objects of `kinds` only.
    pub async fn delete_kinds_before(&self, kinds: &[SliceKind], window: Window) -> Result<usize, StorageError> {
        let span = tracing::debug_span!("s3_delete_before", bucket = %self.name(), window);
        async {
            let mut doomed = Vec::new();
            for kind in kinds {
                for object in self.list(&format!("{kind}-")).await? {
                    if object.key.parse::<ObjectKey>().is_ok_and(|k| k.window < window) {
                        doomed.push(object.key);
                    }
                }
            }
            // Owned keys and a clone per delete keep the future `Send` for `tokio::spawn`
            // (a closure over borrowed keys trips rustc's higher-ranked Send inference).
            let results: Vec<Result<(), StorageError>> = futures::stream::iter(doomed.clone())
                .map(|key| {
                    let client = self.clone();
                    async move { client.delete(&key).await }
                })
                .buffer_unordered(self.inner.opts.delete_concurrency.max(1))
                .collect()
                .await;
            let deleted = results.iter().filter(|r| r.is_ok()).count();
            debug!(deleted, candidates = doomed.len(), "deleted old slices");
            match results.into_iter().find_map(Result::err) {
                Some(e) => {
                    warn!(deleted, error = %e, "some old slices could not be deleted");
                    Err(e)
                }
                None => Ok(deleted),
            }
        }
        .instrument(span)
        .await
    }

    pub(super) async fn deadline<T>(
        &self,
        key: &str,
        after: Duration,
        op: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(after, op).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Timeout { bucket: self.name().to_owned(), key: key.to_owned(), after }),
        }
    }

    fn map_s3(&self, key: &str, error: S3Error) -> StorageError {
        match error {
            S3Error::HttpFailWithBody(status, body) => self.map_status(key, status, body.as_bytes()),
            S3Error::Reqwest(e) => self.map_reqwest(key, e),
            S3Error::Credentials(e) => StorageError::Config(format!("credentials: {e}")),
            S3Error::Io(e) => self.io(key, "request", e),
            other => self.other(key, other.to_string()),
        }
    }

    fn map_status(&self, key: &str, status: u16, body: &[u8]) -> StorageError {
        let reason = format!("HTTP {status}{}", error_summary(body));
        match status {
            404 => StorageError::NotFound { bucket: self.name().to_owned(), key: key.to_owned() },
            401 | 403 => StorageError::AccessDenied { bucket: self.name().to_owned(), key: key.to_owned(), reason },
            408 | 429 | 500..=599 => self.unavailable(key, reason),
            _ => self.other(key, reason),
        }
    }

    pub(super) fn map_reqwest(&self, key: &str, error: reqwest::Error) -> StorageError {
        if error.is_timeout() {
            let after = self.inner.bucket.request_timeout.unwrap_or(self.inner.opts.transfer_timeout);
            return StorageError::Timeout { bucket: self.name().to_owned(), key: key.to_owned(), after };
        }
        if error.is_builder() {
            return self.other(key, error_chain(&error));
        }
        if let Some(refused) = policy::refusal(&error) {
            return self.forbidden(refused.to_string());
        }
        // Connect failures, resets, truncated bodies: the transport, worth another try.
        self.unavailable(key, error_chain(&error))
    }

    fn forbidden(&self, reason: String) -> StorageError {
        StorageError::Forbidden { location: self.inner.location.to_string(), reason }
    }

    fn unavailable(&self, key: &str, reason: String) -> StorageError {
        StorageError::Unavailable { bucket: self.name().to_owned(), key: key.to_owned(), reason }
    }

    pub(super) fn other(&self, key: &str, reason: String) -> StorageError {
        StorageError::Other { bucket: self.name().to_owned(), key: key.to_owned(), reason }
    }

    fn io(&self, key: &str, context: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Io { bucket: self.name().to_owned(), key: key.to_owned(), context, source }
    }

    pub(super) fn too_large(&self, key: &str, limit: u64, seen: u64) -> StorageError {
        StorageError::TooLarge { bucket: self.name().to_owned(), key: key.to_owned(), limit, seen }
    }

    fn stalled(&self, key: &str, received: u64) -> StorageError {
        StorageError::Stalled {
            bucket: self.name().to_owned(),
            key: key.to_owned(),
            after: self.inner.opts.progress_timeout,
            received,
        }
    }
}

/// Reads at most `limit` bytes of an error body, so a hostile server cannot make us
/// buffer an endless one.
async fn read_prefix(mut response: reqwest::Response, limit: usize, after: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match tokio::time::timeout(after, response.chunk()).await {
            Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())]),
            _ => break,
        }
    }
    out
}

/// `": Code: Message"` from an S3 XML error body, or a short printable prefix of it.
fn error_summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find("</")? + start;
        Some(text[start..end].chars().take(200).collect::<String>())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!(": {code}: {message}"),
        (Some(code), None) => format!(": {code}"),
        _ => {
            let short: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            if short.trim().is_empty() { String::new() } else { format!(": {}", short.trim()) }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// An S3 `LastModified` (RFC 3339, e.g. `2024-11-05T12:00:00.000Z`) in unix milliseconds.
pub fn parse_last_modified(text: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_modified_parses_s3_dates_to_unix_ms() {
        assert_eq!(parse_last_modified("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_last_modified("2024-11-05T12:00:00.250Z"), Some(1_730_808_000_250));
        assert_eq!(parse_last_modified("2024-11-05T12:00:00Z"), Some(1_730_808_000_000));
        assert_eq!(parse_last_modified("2024-11-05T13:00:00+01:00"), Some(1_730_808_000_000));
        for bad in ["", "yesterday", "2024-13-05T12:00:00Z", "Tue, 05 Nov 2024 12:00:00 GMT"] {
            assert_eq!(parse_last_modified(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_bodies_are_summarised_briefly() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        assert_eq!(error_summary(xml), ": AccessDenied: no");
        assert_eq!(error_summary(b""), "");
        let junk = vec![b'x'; 10_000];
        assert_eq!(error_summary(&junk).len(), 202);
    }

    #[test]
    fn regions_are_checked_and_aws_endpoints_derived() {
        assert!(check_region("us-east-1").is_ok());
        assert!(check_region("auto").is_ok());
        for bad in ["", "US", "a/b", "x.y"] {
            assert!(matches!(check_region(bad), Err(StorageError::Config(_))), "{bad}");
        }
        let aws: BucketLocation = "s3://bucket".parse().unwrap();
        assert_eq!(region_for(&aws, "us-east-1"), Region::UsEast1);
        assert_eq!(
            region_for(&aws, "mars-north-9"),
            Region::Custom { region: "mars-north-9".into(), endpoint: "https://s3.mars-north-9.amazonaws.com".into() }
        );
        let ep: BucketLocation = "http://127.0.0.1:9000/bucket".parse().unwrap();
        assert_eq!(
            region_for(&ep, "us-east-1"),
            Region::Custom { region: "us-east-1".into(), endpoint: "http://127.0.0.1:9000".into() }
        );
    }

    #[test]
    fn clients_pick_the_addressing_style_and_peer_clients_are_cheap() {
        let peers = PeerClients::new("us-east-1", TransferOptions::default()).unwrap();
        let ep = peers.client(&"http://127.0.0.1:9000/bucket".parse().unwrap());
        assert!(ep.inner.bucket.is_path_style());
        assert_eq!(ep.inner.bucket.url(), "http://127.0.0.1:9000/bucket");
        let aws = peers.client(&"s3://bucket".parse().unwrap());
        assert!(aws.inner.bucket.is_subdomain_style());
        assert_eq!(aws.inner.bucket.url(), "https://bucket.s3.amazonaws.com");
        let dotted = peers.client(&"s3://a.b.c".parse().unwrap());
        assert!(dotted.inner.bucket.is_path_style());
        assert_eq!(dotted.location().to_string(), "s3://a.b.c");
    }

    #[test]
    fn static_and_anonymous_credentials_resolve() {
        let keys = AccessKeys { session_token: Some("tok".into()), ..AccessKeys::new("AKID", "secret") };
        let creds = CredentialSource::Static(keys).resolve().unwrap();
        assert_eq!(creds.access_key.as_deref(), Some("AKID"));
        assert_eq!(creds.secret_key.as_deref(), Some("secret"));
        assert_eq!(creds.session_token.as_deref(), Some("tok"));
        let anon = CredentialSource::Anonymous.resolve().unwrap();
        assert!(anon.access_key.is_none() && anon.secret_key.is_none());
    }

    #[test]
    fn access_keys_debug_hides_the_secret() {
        let keys = AccessKeys::new("AKID", "very-secret");
        let text = format!("{keys:?}");
        assert!(text.contains("AKID") && !text.contains("very-secret"), "{text}");
        let random = AccessKeys::random();
        assert_ne!(random, AccessKeys::random());
        assert_eq!(random.to_credentials().unwrap().secret_key.as_deref(), Some(random.secret_key.as_str()));
    }
}
