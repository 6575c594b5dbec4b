//! An S3 server in-process (s3s + s3s-fs over a directory), so tests and the devnet speak
//! real HTTP S3 with no external service.
//!
//! Path-style, on 127.0.0.1. Signed requests must carry the owner's keys (SigV4, wrong
//! secret → 403). Unsigned requests may read — GET/HEAD object, list, head bucket — like a
//! public-read AWS bucket, and nothing else. [`EmbeddedS3::stop`] stops accepting and
//! aborts in-flight connections (a test can kill it mid-download);
//! [`EmbeddedS3::start_on`] brings it back on the same address and directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Result, s3_error};
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, info, warn};
use url::Url;

use super::BucketName;
use super::client::AccessKeys;
use super::location::BucketLocation;

#[derive(Debug, Error)]
pub enum EmbeddedError {
    #[error("embedded S3: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded S3: root directory {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded S3: bucket name {name:?}: {reason}")]
    BucketName { name: String, reason: String },
}

/// A running embedded S3 server. Dropping it shuts it down too (without waiting).
#[derive(Debug)]
pub struct EmbeddedS3 {
    addr: SocketAddr,
    endpoint: Url,
    root: PathBuf,
    keys: AccessKeys,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
}

/// How often the server removes what s3s-fs leaves of deleted objects.
const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);
/// A side file is only removed once this old, so a put in flight (which may write its
/// side files before the object's rename) never loses them.
const SWEEP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Lets unsigned requests read and nothing more; signed ones were already verified by
/// `SimpleAuth` (a bad signature never reaches this check).
struct PublicRead;

/// Operations an anonymous client may perform.
const ANONYMOUS_OPS: [&str; 5] = ["GetObject", "HeadObject", "ListObjects", "ListObjectsV2", "HeadBucket"];

#[async_trait::async_trait]
impl S3Access for PublicRead {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_some() {
            return Ok(());
        }
        let op = cx.s3_op().name();
        if ANONYMOUS_OPS.contains(&op) {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "anonymous {op} refused: this bucket is public-read"))
        }
    }
}

impl EmbeddedS3 {
    /// Starts on `127.0.0.1` at a free port, serving `root` (created if absent).
    pub async fn start(root: impl AsRef<Path>, keys: AccessKeys) -> Result<Self, EmbeddedError> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), root, keys).await
    }

    /// Starts on `addr` — for a restart, the address and root of a stopped server.
    pub async fn start_on(addr: SocketAddr, root: impl AsRef<Path>, keys: AccessKeys) -> Result<Self, EmbeddedError> {
        let root = root.as_ref().to_path_buf();
        let root_err = |source| EmbeddedError::Root { path: root.clone(), source };
        tokio::fs::create_dir_all(&root).await.map_err(root_err)?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|e| root_err(std::io::Error::other(format!("{e:?}"))))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(keys.access_key.clone(), keys.secret_key.clone()));
        builder.set_access(PublicRead);
        let service = builder.build();

        let listener = bind(addr).map_err(|source| EmbeddedError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| EmbeddedError::Bind { addr, source })?;
        let endpoint = Url::parse(&format!("http://{addr}"))
            .map_err(|e| EmbeddedError::Bind { addr, source: std::io::Error::other(e) })?;
        let (shutdown, stop_rx) = oneshot::channel();
        let span = tracing::info_span!("embedded_s3", %addr);
        let task = tokio::spawn(serve(listener, service, stop_rx).instrument(span));
        let sweep_root = root.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let root = sweep_root.clone();
                match tokio::task::spawn_blocking(move || sweep_orphans(&root, SWEEP_MIN_AGE)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => debug!(removed = n, "removed side files of deleted objects"),
                    Ok(Err(e)) => warn!(error = %e, "sweeping side files of deleted objects failed"),
                    Err(e) => warn!(error = %e, "the side-file sweep task failed"),
                }
            }
        });
        info!(%addr, root = %root.display(), "embedded S3 started");
        Ok(Self { addr, endpoint, root, keys, shutdown: Some(shutdown), task: Some(task), sweeper: Some(sweeper) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> Url {
        self.endpoint.clone()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The owner's keys (what signed clients must use).
    pub fn keys(&self) -> &AccessKeys {
        &self.keys
    }

    /// The location (commitment) of `bucket` on this server.
    pub fn location(&self, bucket: &BucketName) -> BucketLocation {
        BucketLocation::Endpoint { endpoint: self.endpoint(), bucket: bucket.clone() }
    }

    /// Creates a bucket (a directory under the root; s3s-fs buckets are directories) and
    /// returns its location. Creating an existing bucket is fine.
    pub async fn create_bucket(&self, name: &str) -> Result<BucketLocation, EmbeddedError> {
        let bucket = BucketName::parse(name)
            .map_err(|e| EmbeddedError::BucketName { name: name.to_owned(), reason: e.to_string() })?;
        let path = self.root.join(bucket.as_str());
        tokio::fs::create_dir_all(&path).await.map_err(|source| EmbeddedError::Root { path, source })?;
        Ok(self.location(&bucket))
    }

    /// Stops accepting, aborts every open connection and waits until they are closed and
    /// the port is released.
    pub async fn stop(mut self) {
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            warn!(error = %e, "embedded S3 task ended abnormally");
        }
        info!(addr = %self.addr, "embedded S3 stopped");
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.abort();
        }
    }
}

/// Removes the side files s3s-fs keeps beside an object (`.bucket-B.object-K.internal.json`
/// and `.bucket-B.object-K[.upload-U].metadata.json`, names in URL-safe base64) once the
/// object is gone and the file is older than `min_age`: s3s-fs deletes only the object, so
/// a devnet that runs for days would otherwise grow by two files per deleted slice.
/// Returns how many files were removed.
pub fn sweep_orphans(root: &Path, min_age: std::time::Duration) -> std::io::Result<usize> {
    use base64::Engine as _;
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok().and_then(|b| String::from_utf8(b).ok())
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(".bucket-") else { continue };
        let Some(stem) = rest.strip_suffix(".internal.json").or_else(|| rest.strip_suffix(".metadata.json")) else {
            continue;
        };
        let Some((bucket, object)) = stem.split_once(".object-") else { continue };
        // An upload's metadata carries `.upload-<uuid>`; its object is the key before it.
        let object = object.split_once(".upload-").map_or(object, |(key, _)| key);
        let (Some(bucket), Some(key)) = (decode(bucket), decode(object)) else { continue };
        if bucket.contains("..") || key.contains("..") || root.join(&bucket).join(&key).exists() {
            continue;
        }
        let age = entry.metadata()?.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        if age < min_age {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// A listener with `SO_REUSEADDR`, so a restart can take the port back at once even
/// while connections of the previous run are in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve(listener: TcpListener, service: S3Service, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A sent signal or a dropped server both stop it.
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let service = service.clone();
                    connections.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let builder = auto::Builder::new(TokioExecutor::new());
                        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                            debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}
