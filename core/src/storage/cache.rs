//! The on-disk slice cache shared by all miners of one host (DESIGN §3, `SliceDownloader`).
//!
//! Several miners on one host — tasks of one process, or separate processes such as
//! containers sharing a volume — read the same peers' slices. The cache makes each object
//! downloaded once per host:
//!
//! - an entry is `(location, key, etag, size)`; a peer may overwrite an object, so the file
//!   name carries a hash of the etag and size, and the directory a hash of the location:
//!   `<root>/<blake3(location)[..16]>/<key>.<blake3(etag, size)[..12]>`;
//! - keys come from hostile peers and are accepted only if they parse as an [`ObjectKey`]
//!   (whose alphabet has no `/`, so no path traversal is possible);
//! - concurrent callers in one process share one fetch (a per-entry async mutex); callers
//!   in other processes wait on an advisory exclusive `flock` on `<entry>.lock`, which the
//!   OS releases if the holder dies;
//! - a fetch writes into a private staging directory next to the entry; only a complete,
//!   fsynced file of the expected size is renamed to the final name, so no partial file is
//!   ever visible there.
//!
//! Lock files are only ever deleted by a holder of their lock, and a taker checks after
//! locking that the path still names the file it locked — otherwise two processes could
//! each hold a lock on a different inode of the same name.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::fsutil::write_atomic;
use crate::slice::{KeyParseError, ObjectKey};
use crate::window::Window;

use super::location::BucketLocation;

/// How long a caller waits for another fetcher of the same entry by default: longer than
/// one download with its retries may take.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Temp files of other writers (`write_atomic`'s `.tessera-*.tmp`, the S3 client's
/// `.tessera-dl-*.tmp`) that carry no entry name are removed only when older than this.
const FOREIGN_TEMP_MAX_AGE: Duration = Duration::from_secs(60);

/// Prefix of a fetch's private staging directory: `.staging-<entry name>-<random>`.
const STAGING_PREFIX: &str = ".staging-";
/// Prefix of temp files written by `fsutil::write_atomic` and the S3 client.
const FOREIGN_TEMP_PREFIX: &str = ".tessera-";
const LOCK_SUFFIX: &str = ".lock";
const LOCATION_HASH_LEN: usize = 16;
const VERSION_HASH_LEN: usize = 12;

/// Backoff bounds while polling another process's lock.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);

/// One cached object: where it was found, its name, and the version the listing reported.
#[derive(Debug, Clone, Copy)]
pub struct CacheEntry<'a> {
    pub location: &'a BucketLocation,
    /// The object key; must parse as an [`ObjectKey`].
    pub key: &'a str,
    /// The listing's ETag; surrounding quotes are ignored, so `"abc"` and `abc` are one version.
    pub etag: Option<&'a str>,
    /// The object's size in bytes; a file of another size is never returned.
    pub size: u64,
}

impl<'a> CacheEntry<'a> {
    pub fn new(location: &'a BucketLocation, key: &'a str, etag: Option<&'a str>, size: u64) -> Self {
        Self { location, key, etag, size }
    }
}

/// A complete file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSlice {
    pub path: PathBuf,
    pub size: u64,
    /// `true` when the file was already there or fetched by another caller.
    pub hit: bool,
}

/// Counters since the cache was opened (this handle and its clones only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    /// Fetches started (successful or not).
    pub misses: u64,
    /// Calls that had to wait for another fetcher of the same entry (task or process).
    pub waits: u64,
    pub bytes_fetched: u64,
}

/// What [`SliceCache::gc`] (or the sweep at open) removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub entries_removed: u64,
    pub bytes_removed: u64,
    /// Staging directories and temp files of crashed writers.
    pub temps_removed: u64,
    pub dirs_removed: u64,
    /// Old entries left alone because a fetcher holds their lock.
    pub skipped_locked: u64,
    /// Items that could not be removed (logged).
    pub failed: u64,
    /// Entries left in place by a collection ([`SliceCache::gc`]), and their bytes.
    pub entries_kept: u64,
    pub bytes_kept: u64,
}

#[derive(Debug, Error)]
pub enum CacheError {
    /// The key is not a slice object name; it may come from a hostile peer.
    #[error("refusing to cache {key:?}: {source}")]
    InvalidKey {
        key: String,
        #[source]
        source: KeyParseError,
    },

    #[error("slice cache: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another fetcher (task or process) held the entry for longer than the lock timeout.
    #[error("slice cache: timed out after {waited:?} waiting for another fetcher of {}", path.display())]
    LockTimeout { path: PathBuf, waited: Duration },

    /// The fetched or inserted bytes are not the size the entry announced; nothing was kept.
    #[error(
        "slice cache: {} has {actual} bytes (fetcher reported {reported}), expected {expected}; discarded",
        path.display()
    )]
    SizeMismatch { path: PathBuf, expected: u64, reported: u64, actual: u64 },
}

/// Why [`SliceCache::get_or_fetch`] failed: the cache itself, or the caller's fetch.
#[derive(Debug, Error)]
pub enum CacheFetchError<E> {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("fetching into the slice cache failed: {0}")]
    Fetch(#[source] E),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { op, path: path.to_owned(), source }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    waits: AtomicU64,
    bytes_fetched: AtomicU64,
}

/// Per-entry async mutexes of the fetches in flight in this process.
type Flights = Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;

struct Inner {
    root: PathBuf,
    flights: Flights,
    stats: Counters,
}

/// The host's slice cache. Cheap to clone; clones share in-process single-flight and stats.
#[derive(Clone)]
pub struct SliceCache {
    inner: Arc<Inner>,
    lock_timeout: Duration,
}

impl std::fmt::Debug for SliceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceCache").field("root", &self.inner.root).field("lock_timeout", &self.lock_timeout).finish()
    }
}

/// The paths of one entry.
struct EntryPaths {
    dir: PathBuf,
    /// `<key>.<version hash>`, the final file's name.
    name: String,
    final_path: PathBuf,
    lock_path: PathBuf,
}

enum OnDisk {
    Valid,
    Corrupt(u64),
    Missing,
}

impl SliceCache {
    /// Opens (creating) the cache at `root` and removes what crashed writers left behind:
    /// staging directories whose entry lock is free, and foreign temp files older than a
    /// minute. Blocking I/O: call it at start-up or from a blocking task.
    pub fn open(root: impl Into<PathBuf>) -> Result<SliceCache, CacheError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
        let cache = SliceCache {
            inner: Arc::new(Inner { root, flights: Mutex::new(HashMap::new()), stats: Counters::default() }),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        let report = cache.sweep(None)?;
        if report.temps_removed > 0 || report.failed > 0 {
            info!(root = %cache.root().display(), ?report, "slice cache: removed leftovers of crashed writers");
        }
        Ok(cache)
    }

    /// Sets how long [`get_or_fetch`](Self::get_or_fetch) waits for another fetcher.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn stats(&self) -> CacheStats {
        let s = &self.inner.stats;
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            waits: s.waits.load(Ordering::Relaxed),
            bytes_fetched: s.bytes_fetched.load(Ordering::Relaxed),
        }
    }

    /// Where `entry` is (or would be) cached. Fails only for keys that are not slice names.
    pub fn path_of(&self, entry: &CacheEntry<'_>) -> Result<PathBuf, CacheError> {
        Ok(self.paths(entry)?.final_path)
    }

    /// Returns the cached file of `entry`, calling `fetch` to download it if no complete
    /// copy exists on this host. `fetch` receives a temp path inside the cache (its
    /// directory exists) and must leave the whole object there, returning its size; it is
    /// then fsynced and renamed into place. At most one fetch per entry runs at a time on
    /// the host; other callers wait for it and then get its file (`hit: true`). A failed
    /// or cancelled fetch leaves nothing behind, and the next call fetches again.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        entry: &CacheEntry<'_>,
        fetch: F,
    ) -> Result<CachedSlice, CacheFetchError<E>>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<u64, E>>,
    {
        let paths = self.paths(entry)?;
        let size = entry.size;
        if let OnDisk::Valid = on_disk(&paths.final_path, size)? {
            return Ok(self.hit(paths.final_path, size));
        }

        let deadline = Instant::now() + self.lock_timeout;
        let mut waited = false;
        let _flight = self.enter_flight(&paths.final_path, deadline, &mut waited).await?;
        if waited && let OnDisk::Valid = on_disk(&paths.final_path, size)? {
            return Ok(self.hit(paths.final_path, size));
        }
        let lock = self.lock_entry(&paths.lock_path, deadline, &mut waited).await?;
        match on_disk(&paths.final_path, size)? {
            OnDisk::Valid => return Ok(self.hit(paths.final_path, size)),
            OnDisk::Corrupt(actual) => {
                warn!(path = %paths.final_path.display(), expected = size, actual, "slice cache: corrupt entry, refetching");
                remove_file_if_exists(&paths.final_path)?;
            }
            OnDisk::Missing => {}
        }

        // A private directory, so that whatever temp files the fetcher creates next to its
        // destination are removed with it: on error, on cancellation (drop) and after a crash
        // (the sweep at open removes staging directories whose entry lock is free).
        let staging = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{}-", paths.name))
            .tempdir_in(&paths.dir)
            .map_err(io_err("creating a staging directory in", &paths.dir))?;
        let temp_path = staging.path().join(&paths.name);
        self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        debug!(key = entry.key, location = %entry.location, size, "slice cache: fetching");
        let reported = fetch(temp_path.clone()).await.map_err(CacheFetchError::Fetch)?;

        let final_path = paths.final_path.clone();
        let dir = paths.dir.clone();
        // fsync of a large file blocks; the staging directory and the lock move along so
        // they outlive the rename even if this future is dropped meanwhile.
        let finalized = tokio::task::spawn_blocking(move || {
            let result = finalize(&temp_path, &final_path, &dir, reported, size);
            drop(staging);
            drop(lock);
            result
        })
        .await
        .map_err(|e| CacheError::Io {
            op: "finalizing",
            path: paths.final_path.clone(),
            source: io::Error::other(e),
        })?;
        finalized?;
        self.inner.stats.bytes_fetched.fetch_add(size, Ordering::Relaxed);
        debug!(path = %paths.final_path.display(), size, "slice cache: fetched");
        Ok(CachedSlice { path: paths.final_path, size, hit: false })
    }

    /// Stores bytes this miner uploaded itself, so that its own slice is never downloaded
    /// back. Atomic: readers see the whole file or none.
    pub fn insert(&self, entry: &CacheEntry<'_>, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let paths = self.paths(entry)?;
        let len = bytes.len() as u64;
        if len != entry.size {
            return Err(CacheError::SizeMismatch {
                path: paths.final_path,
                expected: entry.size,
                reported: len,
                actual: len,
            });
        }
        // A concurrent gc may remove the (empty) bucket directory between write_atomic's
        // create_dir_all and its temp file: try again then.
        let mut attempts = 0;
        loop {
            match write_atomic(&paths.final_path, bytes) {
                Ok(()) => return Ok(paths.final_path),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) => return Err(io_err("writing", &paths.final_path)(e)),
            }
        }
    }

    /// Deletes entries of windows before `keep_from_window`, their lock files, leftovers of
    /// crashed writers and empty bucket directories. Entries being fetched (locked) are
    /// skipped. A caller holding a returned path of a deleted entry keeps reading an open
    /// file fine, but cannot open it anew. Blocking I/O: run it from a blocking task.
    pub fn gc(&self, keep_from_window: Window) -> Result<GcReport, CacheError> {
        let report = self.sweep(Some(keep_from_window))?;
        debug!(keep_from_window, ?report, "slice cache: gc");
        Ok(report)
    }

    fn hit(&self, path: PathBuf, size: u64) -> CachedSlice {
        self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
        CachedSlice { path, size, hit: true }
    }

    fn note_wait(&self, waited: &mut bool, path: &Path) {
        if !*waited {
            *waited = true;
            self.inner.stats.waits.fetch_add(1, Ordering::Relaxed);
            debug!(path = %path.display(), "slice cache: waiting for another fetcher");
        }
    }

    fn paths(&self, entry: &CacheEntry<'_>) -> Result<EntryPaths, CacheError> {
        let key: ObjectKey =
            entry.key.parse().map_err(|source| CacheError::InvalidKey { key: entry.key.to_owned(), source })?;
        let location = blake3::Hasher::new()
            .update(b"tessera slice cache v1: location\0")
            .update(entry.location.to_string().as_bytes())
            .finalize();
        let mut version = blake3::Hasher::new();
        version.update(b"tessera slice cache v1: version\0");
        match entry.etag.map(|e| e.trim_matches('"')) {
            Some(etag) => version.update(&[1]).update(&(etag.len() as u64).to_le_bytes()).update(etag.as_bytes()),
            None => version.update(&[0]),
        };
        version.update(&entry.size.to_le_bytes());
        let dir = self.inner.root.join(&location.to_hex()[..LOCATION_HASH_LEN]);
        // The canonical spelling, which `parse` checked equals `entry.key`.
        let name = format!("{key}.{}", &version.finalize().to_hex()[..VERSION_HASH_LEN]);
        Ok(EntryPaths { final_path: dir.join(&name), lock_path: dir.join(format!("{name}{LOCK_SUFFIX}")), dir, name })
    }

    /// Takes the in-process per-entry mutex, so that only one task of this process takes
    /// the entry's file lock and fetches.
    async fn enter_flight(
        &self,
        final_path: &Path,
        deadline: Instant,
        waited: &mut bool,
    ) -> Result<FlightGuard, CacheError> {
        let mutex = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
            // Entries of cancelled waiters; the guard's drop removes the usual ones.
            flights.retain(|_, w| w.strong_count() > 0);
            match flights.get(final_path).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    flights.insert(final_path.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        let guard = match mutex.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                self.note_wait(waited, final_path);
                tokio::time::timeout_at(deadline, mutex.lock_owned())
                    .await
                    .map_err(|_| CacheError::LockTimeout { path: final_path.to_owned(), waited: self.lock_timeout })?
            }
        };
        Ok(FlightGuard { guard: Some(guard), inner: self.inner.clone(), path: final_path.to_owned() })
    }

    /// Takes the entry's cross-process file lock, polling with backoff so no worker thread
    /// blocks; a dead holder's lock is released by the OS.
    async fn lock_entry(
        &self,
        lock_path: &Path,
        deadline: Instant,
        waited: &mut bool,
    ) -> Result<LockGuard, CacheError> {
        let mut delay = POLL_MIN;
        loop {
            if let Some(guard) = try_lock_file(lock_path)? {
                return Ok(guard);
            }
            self.note_wait(waited, lock_path);
            let now = Instant::now();
            if now >= deadline {
                return Err(CacheError::LockTimeout { path: lock_path.to_owned(), waited: self.lock_timeout });
            }
            tokio::time::sleep_until((now + delay).min(deadline)).await;
            delay = (delay * 2).min(POLL_MAX);
        }
    }

    /// Removes leftovers of crashed writers and, with `keep_from`, entries of older windows.
    fn sweep(&self, keep_from: Option<Window>) -> Result<GcReport, CacheError> {
        let root = &self.inner.root;
        let mut report = GcReport::default();
        for item in fs::read_dir(root).map_err(io_err("listing", root))? {
            let item = item.map_err(io_err("listing", root))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_bucket_dir = name.len() == LOCATION_HASH_LEN && is_lower_hex(name);
            if !is_bucket_dir || !item.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = item.path();
            sweep_bucket_dir(&dir, keep_from, &mut report)?;
            // Fails harmlessly when not empty or already gone; a writer that loses its
            // directory to this recreates it.
            if fs::remove_dir(&dir).is_ok() {
                report.dirs_removed += 1;
            }
        }
        Ok(report)
    }
}

fn sweep_bucket_dir(dir: &Path, keep_from: Option<Window>, report: &mut GcReport) -> Result<(), CacheError> {
    let mut old_entries = BTreeSet::new();
    for item in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let item = match item {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("listing", dir)(e)),
        };
        let path = item.path();
        let file_name = item.file_name();
        let Some(name) = file_name.to_str() else { continue };
        if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
            sweep_staging(dir, &path, rest, report);
        } else if name.starts_with(FOREIGN_TEMP_PREFIX) {
            let stale = item
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).is_ok_and(|age| age > FOREIGN_TEMP_MAX_AGE));
            if stale {
                removed(fs::remove_file(&path), &path, report);
            }
        } else if let Some(keep_from) = keep_from {
            let entry = name.strip_suffix(LOCK_SUFFIX).unwrap_or(name);
            if entry_window(entry).is_some_and(|w| w < keep_from) {
                old_entries.insert(entry.to_owned());
            } else if entry.len() == name.len() {
                report.entries_kept += 1;
                report.bytes_kept += item.metadata().map_or(0, |m| m.len());
            }
        }
    }
    for entry in old_entries {
        let lock_path = dir.join(format!("{entry}{LOCK_SUFFIX}"));
        let lock = match try_lock_file(&lock_path) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                debug!(path = %lock_path.display(), "slice cache gc: entry is being fetched, skipped");
                report.skipped_locked += 1;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "slice cache gc: cannot lock an entry");
                report.failed += 1;
                continue;
            }
        };
        let final_path = dir.join(&entry);
        match fs::symlink_metadata(&final_path) {
            Ok(meta) if meta.is_file() => match fs::remove_file(&final_path) {
                Ok(()) => {
                    report.entries_removed += 1;
                    report.bytes_removed += meta.len();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %final_path.display(), error = %e, "slice cache gc: cannot remove");
                    report.failed += 1;
                }
            },
            Ok(_) => {
                warn!(path = %final_path.display(), "slice cache gc: not a file, left alone");
                report.failed += 1;
            }
            Err(_) => {}
        }
        lock.remove();
    }
    Ok(())
}

/// Removes a staging directory whose entry lock is free: its writer is gone.
fn sweep_staging(dir: &Path, path: &Path, rest: &str, report: &mut GcReport) {
    let Some((entry, _random)) = rest.rsplit_once('-') else { return };
    if entry_window(entry).is_none() {
        return;
    }
    match try_lock_file(&dir.join(format!("{entry}{LOCK_SUFFIX}"))) {
        Ok(Some(_lock)) => removed(fs::remove_dir_all(path), path, report),
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "slice cache: cannot check a staging directory");
            report.failed += 1;
        }
    }
}

/// Counts the removal of a leftover temp file or staging directory.
fn removed(result: io::Result<()>, path: &Path, report: &mut GcReport) {
    match result {
        Ok(()) => {
            debug!(path = %path.display(), "slice cache: removed a leftover");
            report.temps_removed += 1;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "slice cache: cannot remove a leftover");
            report.failed += 1;
        }
    }
}

/// The window of an entry file name `<key>.<version hash>`, or `None` for other names.
fn entry_window(name: &str) -> Option<Window> {
    let (key, hash) = name.rsplit_once('.')?;
    if hash.len() != VERSION_HASH_LEN || !is_lower_hex(hash) {
        return None;
    }
    key.parse::<ObjectKey>().ok().map(|k| k.window)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn on_disk(path: &Path, size: u64) -> Result<OnDisk, CacheError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == size => Ok(OnDisk::Valid),
        Ok(meta) => Ok(OnDisk::Corrupt(meta.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(OnDisk::Missing),
        Err(e) => Err(io_err("reading metadata of", path)(e)),
    }
}

fn remove_file_if_exists(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Checks the fetched file's size, makes it durable and renames it into place.
fn finalize(temp: &Path, final_path: &Path, dir: &Path, reported: u64, expected: u64) -> Result<(), CacheError> {
    let actual = match fs::metadata(temp) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => u64::MAX,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_err("reading metadata of", temp)(e)),
    };
    if actual != expected || reported != expected {
        return Err(CacheError::SizeMismatch { path: temp.to_owned(), expected, reported, actual });
    }
    File::open(temp).and_then(|f| f.sync_all()).map_err(io_err("syncing", temp))?;
    fs::rename(temp, final_path).map_err(io_err("renaming into place", final_path))?;
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An exclusive `flock` on a lock file, released when dropped (or when the process dies).
struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// Deletes the lock file while still holding it (so no one else holds a lock on it),
    /// then releases it.
    fn remove(self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), error = %e, "slice cache: cannot remove a lock file");
        }
        drop(self.file);
    }
}

/// One non-blocking attempt at the lock; `None` when another holder has it.
fn try_lock_file(path: &Path) -> Result<Option<LockGuard>, CacheError> {
    // Retries cover a lock file deleted (by gc, under its lock) between open and lock.
    for _ in 0..8 {
        let file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(io_err("locking", path)(e)),
        }
        if still_named_by(&file, path)? {
            return Ok(Some(LockGuard { file, path: path.to_owned() }));
        }
    }
    Ok(None)
}

fn open_lock_file(path: &Path) -> Result<File, CacheError> {
    let mut attempts = 0;
    loop {
        match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path) {
            Ok(f) => return Ok(f),
            // The bucket directory is new, or gc removed it when it was empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                attempts += 1;
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
                }
            }
            Err(e) => return Err(io_err("opening", path)(e)),
        }
    }
}

/// Whether `path` still names the file `file` has open.
fn still_named_by(file: &File, path: &Path) -> Result<bool, CacheError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata().map_err(io_err("reading metadata of", path))?;
        match fs::metadata(path) {
            Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("reading metadata of", path)(e)),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}

/// Holds an entry's in-process mutex; on drop removes the map entry once unused.
struct FlightGuard {
    guard: Option<OwnedMutexGuard<()>>,
    inner: Arc<Inner>,
    path: PathBuf,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut flights = self.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.path).is_some_and(|w| w.strong_count() == 0) {
            flights.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const DEADLINE: Duration = Duration::from_secs(30);

    fn location() -> BucketLocation {
        "http://127.0.0.1:9000/bucket".parse().unwrap()
    }

    fn key(window: u64) -> String {
        format!("state-{window}-{ALICE}-v1.slice")
    }

    fn content(tag: &str) -> Vec<u8> {
        format!("slice bytes of {tag}").into_bytes()
    }

    /// Polls `cond` until it holds or the deadline passes; returns whether it held.
    async fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while !cond() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    async fn write(path: PathBuf, bytes: Vec<u8>) -> Result<u64, io::Error> {
        tokio::fs::write(&path, &bytes).await?;
        Ok(bytes.len() as u64)
    }

    #[test]
    fn the_cache_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<SliceCache>();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(42);
        let bytes = content("one");
        let size = bytes.len() as u64;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cache, loc, key, bytes, calls) =
                (cache.clone(), loc.clone(), key.clone(), bytes.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                let entry = CacheEntry::new(&loc, &key, Some("\"e1\""), size);
                let waiter = cache.clone();
                cache
                    .get_or_fetch(&entry, |temp| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Hold the fetch until every other caller is waiting for it.
                        eventually(|| waiter.stats().waits >= 15).await;
                        write(temp, bytes).await
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(results.iter().filter(|r| !r.hit).count(), 1);
        for r in &results {
            assert_eq!(r.path, results[0].path);
            assert_eq!(fs::read(&r.path).unwrap(), bytes);
        }
        assert_eq!(cache.stats(), CacheStats { hits: 15, misses: 1, waits: 15, bytes_fetched: size });
        assert!(cache.inner.flights.lock().unwrap().is_empty(), "flight map is cleaned up");
        let entry = CacheEntry::new(&loc, &key, Some("e1"), size);
        let again = cache.get_or_fetch(&entry, |_| async { Err::<u64, io::Error>(io::Error::other("no")) }).await;
        assert!(again.unwrap().hit, "unquoted etag is the same version");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_caches_on_one_dir_fetch_once() {
        // Separate opens have separate flight maps, so only the file lock keeps them apart,
        // as between processes.
        let dir = tempfile::tempdir().unwrap();
        let a = SliceCache::open(dir.path()).unwrap();
        let b = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(7);
        let bytes = content("shared");
        let size = bytes.len() as u64;
        let calls = Arc::new(AtomicUsize::new(0));
        let run = |cache: SliceCache| {
            let (a, b, loc, key, bytes, calls) =
                (a.clone(), b.clone(), loc.clone(), key.clone(), bytes.clone(), calls.clone());
            tokio::spawn(async move {
                let entry = CacheEntry::new(&loc, &key, None, size);
                cache
                    .get_or_fetch(&entry, |temp| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        eventually(|| a.stats().waits + b.stats().waits >= 1).await;
                        write(temp, bytes).await
                    })
                    .await
                    .unwrap()
            })
        };
        let (ra, rb) = (run(a.clone()), run(b.clone()));
        let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(ra.path, rb.path);
        assert!(ra.hit != rb.hit, "exactly one fetched");
        assert_eq!(fs::read(&ra.path).unwrap(), bytes);
        assert_eq!(a.stats().waits + b.stats().waits, 1);
    }

    #[tokio::test]
    async fn a_failed_fetch_leaves_nothing_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(3);
        let bytes = content("retry");
        let entry = CacheEntry::new(&loc, &key, Some("e"), bytes.len() as u64);
        let path = cache.path_of(&entry).unwrap();
        let bucket_dir = path.parent().unwrap().to_owned();

        let err = cache.get_or_fetch(&entry, |_| async { Err::<u64, _>("peer unavailable") }).await.unwrap_err();
        assert!(matches!(err, CacheFetchError::Fetch("peer unavailable")), "{err:?}");

        // A fetch that writes part of the object, then fails.
        let half = bytes[..bytes.len() / 2].to_vec();
        let err = cache
            .get_or_fetch(&entry, |temp| async move {
                write(temp, half).await.map_err(|e| e.to_string())?;
                Err::<u64, String>("connection reset".into())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CacheFetchError::Fetch(ref m) if m == "connection reset"), "{err:?}");
        assert!(!path.exists());
        let lock_name = format!("{}.lock", path.file_name().unwrap().to_str().unwrap());
        assert_eq!(names_in(&bucket_dir), std::slice::from_ref(&lock_name), "no temp file, no partial file");

        // A fetch that claims success with a short file is discarded too.
        let short = bytes[..3].to_vec();
        let err = cache.get_or_fetch(&entry, |temp| write(temp, short)).await.unwrap_err();
        assert!(matches!(err, CacheFetchError::Cache(CacheError::SizeMismatch { actual: 3, .. })), "{err:?}");
        assert_eq!(names_in(&bucket_dir), [lock_name]);

        let got = cache.get_or_fetch(&entry, |temp| write(temp, bytes.clone())).await.unwrap();
        assert!(!got.hit);
        assert_eq!(fs::read(&got.path).unwrap(), bytes);
        assert_eq!(cache.stats().misses, 4);
    }

    #[tokio::test]
    async fn a_cancelled_fetch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(3);
        let entry = CacheEntry::new(&loc, &key, None, 10);
        let path = cache.path_of(&entry).unwrap();
        let fut = cache.get_or_fetch(&entry, |temp| async move {
            write(temp, vec![1; 5]).await?;
            std::future::pending::<Result<u64, io::Error>>().await
        });
        assert!(tokio::time::timeout(Duration::from_millis(50), fut).await.is_err());
        assert_eq!(names_in(path.parent().unwrap()), [format!("{}.lock", path.file_name().unwrap().to_str().unwrap())]);
        assert!(cache.inner.flights.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_of_the_wrong_size_is_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(9);
        let bytes = content("sized");
        let entry = CacheEntry::new(&loc, &key, Some("e"), bytes.len() as u64);
        let first = cache.get_or_fetch(&entry, |temp| write(temp, bytes.clone())).await.unwrap();
        fs::write(&first.path, b"trunc").unwrap();
        let calls = AtomicUsize::new(0);
        let again = cache
            .get_or_fetch(&entry, |temp| {
                calls.fetch_add(1, Ordering::SeqCst);
                write(temp, bytes.clone())
            })
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!again.hit);
        assert_eq!(fs::read(&again.path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn hostile_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cache = SliceCache::open(&root).unwrap();
        let loc = location();
        for key in [
            "../../etc/passwd".to_string(),
            "state-1-x-v1.slice/../..".to_string(),
            format!("state-1-{ALICE}-v1.slice/../../x"),
            format!("../state-1-{ALICE}-v1.slice"),
            format!("state-1-{ALICE}-v1.slice\0"),
            String::new(),
        ] {
            let entry = CacheEntry::new(&loc, &key, None, 4);
            let err = cache.get_or_fetch(&entry, |_| async { Err::<u64, _>("fetch must not run") }).await.unwrap_err();
            assert!(matches!(err, CacheFetchError::Cache(CacheError::InvalidKey { .. })), "{key:?}: {err:?}");
            assert!(matches!(cache.insert(&entry, b"evil"), Err(CacheError::InvalidKey { .. })), "{key:?}");
        }
        assert_eq!(names_in(dir.path()), ["cache"]);
        assert!(names_in(&root).is_empty());
    }

    #[tokio::test]
    async fn an_overwritten_object_is_a_new_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(11);
        let (old, new) = (content("old!"), content("new!"));
        let size = old.len() as u64;
        let e1 = CacheEntry::new(&loc, &key, Some("\"v1\""), size);
        let e2 = CacheEntry::new(&loc, &key, Some("\"v2\""), size);
        let r1 = cache.get_or_fetch(&e1, |temp| write(temp, old.clone())).await.unwrap();
        let r2 = cache.get_or_fetch(&e2, |temp| write(temp, new.clone())).await.unwrap();
        assert_ne!(r1.path, r2.path);
        assert!(!r2.hit);
        assert_eq!(fs::read(&r1.path).unwrap(), old);
        assert_eq!(fs::read(&r2.path).unwrap(), new);
        // Another location or size is another entry as well.
        let other: BucketLocation = "s3://bucket".parse().unwrap();
        let e3 = CacheEntry::new(&other, &key, Some("\"v1\""), size);
        let e4 = CacheEntry::new(&loc, &key, Some("\"v1\""), size + 1);
        let p3 = cache.path_of(&e3).unwrap();
        assert_ne!(p3.parent(), r1.path.parent());
        assert_ne!(cache.path_of(&e4).unwrap(), r1.path);
    }

    #[tokio::test]
    async fn insert_makes_the_own_slice_a_hit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(5);
        let bytes = content("mine");
        let entry = CacheEntry::new(&loc, &key, Some("e"), bytes.len() as u64);
        let path = cache.insert(&entry, &bytes).unwrap();
        let got = cache.get_or_fetch(&entry, |_| async { Err::<u64, _>("must not fetch") }).await.unwrap();
        assert_eq!((got.path, got.hit), (path.clone(), true));
        assert_eq!(names_in(path.parent().unwrap()), [path.file_name().unwrap().to_str().unwrap()]);
        let wrong = CacheEntry::new(&loc, &key, Some("e"), 1);
        assert!(matches!(cache.insert(&wrong, &bytes), Err(CacheError::SizeMismatch { .. })));
    }

    #[tokio::test]
    async fn gc_removes_old_windows_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let (loc, other): (BucketLocation, BucketLocation) = (location(), "s3://other".parse().unwrap());
        let keys: Vec<String> = (4..=8).map(key).collect();
        let mut paths = Vec::new();
        for k in &keys {
            let bytes = content(k);
            let entry = CacheEntry::new(&loc, k, None, bytes.len() as u64);
            // Through get_or_fetch, so lock files exist too.
            paths.push(cache.get_or_fetch(&entry, |temp| write(temp, bytes)).await.unwrap().path);
        }
        let old_other = cache.insert(&CacheEntry::new(&other, &keys[0], None, 3), b"abc").unwrap();
        // A fetcher holds window 4's entry: gc must leave it.
        let held = try_lock_file(&dir_lock(&paths[0])).unwrap().unwrap();

        let report = cache.gc(7).unwrap();
        assert_eq!(report.entries_removed, 3, "{report:?}"); // windows 5 and 6, and 4 of the other bucket
        assert_eq!(report.skipped_locked, 1, "{report:?}");
        assert_eq!(report.dirs_removed, 1, "{report:?}");
        assert_eq!(report.bytes_removed, (content(&keys[1]).len() + content(&keys[2]).len() + 3) as u64);
        let kept_bytes = (content(&keys[3]).len() + content(&keys[4]).len()) as u64;
        assert_eq!((report.entries_kept, report.bytes_kept), (2, kept_bytes), "windows 7 and 8, not lock files");
        assert!(paths[0].exists(), "locked entry kept");
        assert!(!paths[1].exists() && !paths[2].exists());
        assert!(!dir_lock(&paths[1]).exists(), "lock files of removed entries go too");
        assert!(paths[3].exists() && paths[4].exists() && dir_lock(&paths[3]).exists());
        assert!(!old_other.parent().unwrap().exists(), "empty bucket dir removed");

        drop(held);
        let report = cache.gc(7).unwrap();
        assert_eq!((report.entries_removed, report.skipped_locked), (1, 0));
        assert_eq!((report.entries_kept, report.bytes_kept), (2, kept_bytes));
        let mut expected: Vec<String> =
            paths[3..].iter().map(|p| p.file_name().unwrap().to_str().unwrap().into()).collect();
        expected.extend(expected.clone().iter().map(|n| format!("{n}.lock")));
        expected.sort();
        assert_eq!(names_in(paths[0].parent().unwrap()), expected);
    }

    fn dir_lock(final_path: &Path) -> PathBuf {
        let mut name = final_path.file_name().unwrap().to_owned();
        name.push(LOCK_SUFFIX);
        final_path.with_file_name(name)
    }

    #[tokio::test]
    async fn open_removes_leftovers_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let (k1, k2) = (key(1), key(2));
        let dead = cache.path_of(&CacheEntry::new(&loc, &k1, None, 1)).unwrap();
        let live = cache.path_of(&CacheEntry::new(&loc, &k2, None, 1)).unwrap();
        let bucket_dir = dead.parent().unwrap().to_owned();
        let staging =
            |p: &Path| bucket_dir.join(format!(".staging-{}-AbC123", p.file_name().unwrap().to_str().unwrap()));
        for p in [&dead, &live] {
            fs::create_dir_all(staging(p)).unwrap();
            fs::write(staging(p).join("part"), b"partial").unwrap();
        }
        let _live_writer = try_lock_file(&dir_lock(&live)).unwrap().unwrap();
        let fresh_temp = bucket_dir.join(".tessera-dl-xyz.tmp");
        fs::write(&fresh_temp, b"in progress").unwrap();

        let _reopened = SliceCache::open(dir.path()).unwrap();
        assert!(!staging(&dead).exists(), "dead writer's staging removed");
        assert!(staging(&live).exists(), "live writer's staging kept");
        assert!(fresh_temp.exists(), "young foreign temp kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_lock_holder_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let loc = location();
        let key = key(12);
        let bytes = content("after crash");
        let size = bytes.len() as u64;
        let lock_path = dir_lock(&cache.path_of(&CacheEntry::new(&loc, &key, None, size)).unwrap());
        fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
        let holder = File::create(&lock_path).unwrap();
        holder.try_lock().unwrap();

        let task = {
            let (cache, loc, key, bytes) = (cache.clone(), loc.clone(), key.clone(), bytes.clone());
            tokio::spawn(async move {
                let entry = CacheEntry::new(&loc, &key, None, size);
                cache.get_or_fetch(&entry, |temp| write(temp, bytes)).await
            })
        };
        assert!(eventually(|| cache.stats().waits == 1).await);
        assert!(!task.is_finished());
        drop(holder); // what the OS does when the holder dies
        let got = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        assert!(!got.hit);
        assert_eq!(fs::read(&got.path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_lock_that_is_never_released_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap().with_lock_timeout(Duration::from_millis(50));
        let loc = location();
        let key = key(13);
        let entry = CacheEntry::new(&loc, &key, None, 1);
        let _holder = try_lock_file(&dir_lock(&cache.path_of(&entry).unwrap())).unwrap().unwrap();
        let err = cache.get_or_fetch(&entry, |temp| write(temp, vec![1])).await.unwrap_err();
        assert!(matches!(err, CacheFetchError::Cache(CacheError::LockTimeout { .. })), "{err:?}");
    }

    const CHILD_DIR: &str = "TESSERA_CACHE_TEST_CHILD_DIR";
    const CHILD_MARKERS: &str = "TESSERA_CACHE_TEST_CHILD_MARKERS";

    /// The child side of `another_process_fetches_once`; does nothing when run normally.
    #[tokio::test]
    async fn child_process_helper() {
        let (Ok(root), Ok(markers)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MARKERS)) else { return };
        let markers = PathBuf::from(markers);
        let cache = SliceCache::open(root).unwrap();
        let loc = location();
        let key = key(21);
        let bytes = content("child");
        let entry = CacheEntry::new(&loc, &key, None, bytes.len() as u64);
        let got = cache
            .get_or_fetch(&entry, |temp| async move {
                fs::write(markers.join("started"), b"").unwrap();
                assert!(eventually(|| markers.join("go").exists()).await);
                write(temp, bytes).await
            })
            .await
            .unwrap();
        assert!(!got.hit);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_fetches_once() {
        let dir = tempfile::tempdir().unwrap();
        let markers = tempfile::tempdir().unwrap();
        let cache = SliceCache::open(dir.path()).unwrap();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "storage::cache::tests::child_process_helper", "--test-threads=1", "--quiet"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_MARKERS, markers.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        assert!(eventually(|| markers.path().join("started").exists()).await, "child did not start fetching");

        let loc = location();
        let key = key(21);
        let bytes = content("child");
        let calls = Arc::new(AtomicUsize::new(0));
        let task = {
            let (cache, loc, key, calls) = (cache.clone(), loc.clone(), key.clone(), calls.clone());
            let size = bytes.len() as u64;
            tokio::spawn(async move {
                let entry = CacheEntry::new(&loc, &key, None, size);
                cache
                    .get_or_fetch(&entry, |temp| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        write(temp, content("parent"))
                    })
                    .await
                    .unwrap()
            })
        };
        assert!(eventually(|| cache.stats().waits == 1).await, "parent did not wait for the child");
        fs::write(markers.path().join("go"), b"").unwrap();
        let status = tokio::time::timeout(DEADLINE, child.wait()).await.unwrap().unwrap();
        assert!(status.success());
        let got = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        assert!(got.hit);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(fs::read(&got.path).unwrap(), bytes);
    }
}
