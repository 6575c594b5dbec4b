//! Crash-safe training checkpoints: the model's parameters, AdamW's moments, the step
//! (which is also the LR schedule's position) and the window, so a miner that dies resumes
//! exactly where it stopped — bit for bit, as if it had never stopped.
//!
//! Everything numeric is stored as raw little-endian `f32` in canonical parameter order
//! (the [`ParamLayout`] order), not as a burn record: that is exact, independent of the
//! backend and of burn's record format, and lets a checkpoint of a 1B model be written and
//! read one tensor at a time instead of holding a second copy of the model in memory.
//!
//! # File layout (format version 1)
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"TSRACKPT"
//!      8     4  format version, u32 LE (= 1)
//!     12     4  reserved, zero
//!     16     8  manifest offset, u64 LE
//!     24     8  manifest length, u64 LE
//!     32     8  file length, u64 LE
//!     40    32  BLAKE3 of the manifest
//!     72    32  BLAKE3 of bytes 0..72 (the header itself)
//!    104     …  sections: raw f32 LE tensors, back to back
//!      …     …  manifest: JSON — step, window, fingerprint, config, and for every
//!               parameter its sections (offset, length, BLAKE3): values, and AdamW's
//!               `moment_1`, `moment_2` (and `max_moment_2`) with its `time`
//! ```
//!
//! Loading checks, in order: magic, version, header hash, file length (truncation), manifest
//! hash, the model fingerprint, then every section's hash *before* its bytes are used. Any
//! failure is a typed [`CheckpointError`]; a corrupt file is never loaded.
//!
//! Files are written to a temp file in the target directory, fsynced, then renamed over the
//! target (and the directory fsynced) — the semantics of `tessera_core::fsutil::write_atomic`,
//! streamed. [`CheckpointStore`] keeps `latest.ckpt` and `previous.ckpt` and falls back to the
//! previous one when the latest cannot be loaded.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::{AdamW, AdamWState, AdaptiveMomentumState};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;
use tessera_core::model::{ModelFingerprint, ModelShapeError, ParamLayout, ParamSpec};
use thiserror::Error;

use crate::llama::LlamaConfig;
use crate::params::{ParamError, ParamRef};
use crate::train::{OptimSettings, Trainer};

mod export;
mod inspect;

pub use export::{ExportError, export_checkpoint};
pub use inspect::{CheckpointReport, inspect_checkpoint};

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"TSRACKPT";
/// The format this code writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: u64 = 104;
/// Bytes of the header covered by its own hash.
const HASHED_HEADER_LEN: usize = 72;
/// A manifest larger than this is not one we wrote (a 1B model's is a few tens of KB).
const MAX_MANIFEST_LEN: u64 = 256 << 20;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a tessera checkpoint (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path} has checkpoint format version {found}; this build reads version {supported}")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("{path} is truncated: {found} bytes, {expected} expected")]
    Truncated { path: PathBuf, expected: u64, found: u64 },
    #[error("{path} is corrupt: {what} does not match its BLAKE3")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path} is a checkpoint of another model (fingerprint {found}, expected {expected})")]
    FingerprintMismatch { path: PathBuf, expected: ModelFingerprint, found: ModelFingerprint },
    #[error("{path} cannot be decoded: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("the trainer's model does not match the configuration's layout")]
    ModelMismatch,
    #[error("optimizer state of {name} cannot be saved: {reason}")]
    OptimizerState { name: String, reason: String },
    #[error(transparent)]
    Shape(#[from] ModelShapeError),
    #[error(transparent)]
    Param(#[from] ParamError),
}

/// What a checkpoint is of, besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    pub format_version: u32,
    /// Optimizer steps taken; also the LR schedule's position.
    pub step: u64,
    /// The window the checkpoint was taken in.
    pub window: u64,
    pub fingerprint: ModelFingerprint,
    pub config: LlamaConfig,
}

/// A run of bytes in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Section {
    offset: u64,
    len: u64,
    blake3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdamEntry {
    time: u64,
    moment_1: Section,
    moment_2: Section,
    max_moment_2: Option<Section>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ParamEntry {
    name: String,
    shape: Vec<usize>,
    values: Section,
    /// Absent for a parameter the optimizer has not stepped yet.
    adamw: Option<AdamEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    step: u64,
    window: u64,
    fingerprint: String,
    config: LlamaConfig,
    params: Vec<ParamEntry>,
}

/// Writes `trainer`'s state to `path` atomically (temp file, fsync, rename, fsync of the
/// directory): a crash leaves the old file or the new one, never a torn one.
///
/// Checkpoints are taken between optimizer steps: gradients accumulated but not yet applied
/// are not part of a checkpoint.
pub fn save_checkpoint<B: AutodiffBackend>(
    path: &Path,
    trainer: &Trainer<B>,
    config: &LlamaConfig,
    window: u64,
) -> Result<CheckpointMeta, CheckpointError> {
    let (tmp, meta) = write_temp(path, trainer, config, window)?;
    commit(tmp, path)?;
    Ok(meta)
}

/// Rebuilds a trainer from the checkpoint at `path`: the model, AdamW's state and the step.
/// `settings` are the run's (from the hparams); `config` must be the model the checkpoint
/// is of (same fingerprint), else [`CheckpointError::FingerprintMismatch`].
pub fn load_checkpoint<B: AutodiffBackend>(
    path: &Path,
    config: &LlamaConfig,
    settings: OptimSettings,
    device: &B::Device,
) -> Result<(Trainer<B>, CheckpointMeta), CheckpointError> {
    let layout = ParamLayout::llama(&config.shape())?;
    let mut file = open(path)?;
    let (manifest, data_end) = read_manifest(&mut file, path)?;
    let meta = check_manifest(&manifest, &layout, path)?;
    let decode = |reason: String| CheckpointError::Decode { path: path.to_path_buf(), reason };

    let mut model = config.init_zeros::<B>(device);
    for (i, entry) in manifest.params.iter().enumerate() {
        let values = read_f32(&mut file, path, data_end, &entry.values, &entry.name, layout.params()[i].numel())?;
        model = model.set_param_values(i, &values)?;
    }
    let mut trainer = Trainer::new(model, settings);
    let mut record = trainer.optimizer_record();
    for (i, entry) in manifest.params.iter().enumerate() {
        let Some(adam) = &entry.adamw else { continue };
        let spec = &layout.params()[i];
        let mut moment = |s: &Section, what: &str| {
            read_f32(&mut file, path, data_end, s, &format!("{} {what}", entry.name), spec.numel())
        };
        let m1 = moment(&adam.moment_1, "moment_1")?;
        let m2 = moment(&adam.moment_2, "moment_2")?;
        let vmax = adam.max_moment_2.as_ref().map(|s| moment(s, "max_moment_2")).transpose()?;
        let time = usize::try_from(adam.time).map_err(|_| decode(format!("{}: time overflows", entry.name)))?;
        let (id, state) = match trainer.model().param(i)? {
            ParamRef::Matrix(p) => {
                let shape = [spec.shape[0], spec.shape[1]];
                (p.id, AdaptorRecordV1::Rank2(adam_state::<B::InnerBackend, 2>(time, m1, m2, vmax, shape, device)))
            }
            ParamRef::Vector(p) => {
                let shape = [spec.shape[0]];
                (p.id, AdaptorRecordV1::Rank1(adam_state::<B::InnerBackend, 1>(time, m1, m2, vmax, shape, device)))
            }
        };
        record.insert(id, AdaptorRecord::V1(state));
    }
    trainer.restore(record, manifest.step);
    Ok((trainer, meta))
}

/// The model of the checkpoint at `path` (its values only: no optimizer state, so a third
/// of the memory of [`load_checkpoint`]), of the configuration the checkpoint records.
pub fn load_checkpoint_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(crate::Llama<B>, CheckpointMeta), CheckpointError> {
    let mut file = open(path)?;
    let (manifest, data_end) = read_manifest(&mut file, path)?;
    let layout = ParamLayout::llama(&manifest.config.shape())?;
    let meta = check_manifest(&manifest, &layout, path)?;
    let mut model = manifest.config.init_zeros::<B>(device);
    for (i, entry) in manifest.params.iter().enumerate() {
        let values = read_f32(&mut file, path, data_end, &entry.values, &entry.name, layout.params()[i].numel())?;
        model = model.set_param_values(i, &values)?;
    }
    Ok((model, meta))
}

/// Reads and verifies a checkpoint's header and manifest (not its tensors): what it is of.
pub fn read_checkpoint_meta(path: &Path, config: &LlamaConfig) -> Result<CheckpointMeta, CheckpointError> {
    let layout = ParamLayout::llama(&config.shape())?;
    let mut file = open(path)?;
    let (manifest, _) = read_manifest(&mut file, path)?;
    check_manifest(&manifest, &layout, path)
}

/// A checkpoint directory with `latest.ckpt` and the one before it, `previous.ckpt`: if the
/// latest cannot be loaded (or a crash struck between the two renames of a save), the
/// previous one still can.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub const LATEST: &'static str = "latest.ckpt";
    pub const PREVIOUS: &'static str = "previous.ckpt";

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn latest_path(&self) -> PathBuf {
        self.dir.join(Self::LATEST)
    }

    pub fn previous_path(&self) -> PathBuf {
        self.dir.join(Self::PREVIOUS)
    }

    /// Writes a new checkpoint completely (synced temp file), then rotates `latest` to
    /// `previous` and renames the new file to `latest`. A failure before the rotation
    /// changes nothing on disk.
    pub fn save<B: AutodiffBackend>(
        &self,
        trainer: &Trainer<B>,
        config: &LlamaConfig,
        window: u64,
    ) -> Result<CheckpointMeta, CheckpointError> {
        let latest = self.latest_path();
        let (tmp, meta) = write_temp(&latest, trainer, config, window)?;
        if std::fs::symlink_metadata(&latest).is_ok() {
            let previous = self.previous_path();
            std::fs::rename(&latest, &previous).map_err(io_err(&previous))?;
        }
        commit(tmp, &latest)?;
        Ok(meta)
    }

    /// The newest loadable checkpoint: `latest`, else `previous` (with a warning saying why
    /// the latest was passed over). `Ok(None)` when the directory holds neither; when
    /// both exist and fail, the latest's error.
    pub fn load<B: AutodiffBackend>(
        &self,
        config: &LlamaConfig,
        settings: OptimSettings,
        device: &B::Device,
    ) -> Result<Option<(Trainer<B>, CheckpointMeta)>, CheckpointError> {
        self.remove_leftovers();
        let (latest, previous) = (self.latest_path(), self.previous_path());
        let first_error = if latest.exists() {
            match load_checkpoint(&latest, config, settings.clone(), device) {
                Ok(loaded) => return Ok(Some(loaded)),
                Err(e) => Some(e),
            }
        } else {
            None
        };
        if !previous.exists() {
            return first_error.map_or(Ok(None), Err);
        }
        match load_checkpoint(&previous, config, settings, device) {
            Ok(loaded) => {
                match &first_error {
                    Some(e) => tracing::warn!(error = %e, "latest checkpoint unusable; resuming from the previous one"),
                    None => {
                        tracing::warn!(dir = %self.dir.display(), "no latest checkpoint; resuming from the previous one")
                    }
                }
                Ok(Some(loaded))
            }
            Err(e) => Err(first_error.unwrap_or(e)),
        }
    }
}

impl CheckpointStore {
    /// Removes temp files of a writer that was killed mid-save. Only this store's owner
    /// writes here, and it is starting, so any such file is garbage.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tessera-ckpt-") && name.ends_with(".tmp") {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(path = %entry.path().display(), "removed an unfinished checkpoint"),
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an unfinished checkpoint")
                    }
                }
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

fn open(path: &Path) -> Result<File, CheckpointError> {
    File::open(path).map_err(io_err(path))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Renames the synced temp file onto `path` and syncs the directory so the rename survives.
fn commit(tmp: NamedTempFile, path: &Path) -> Result<(), CheckpointError> {
    tmp.persist(path).map_err(|e| CheckpointError::Io { path: path.to_path_buf(), source: e.error })?;
    #[cfg(unix)]
    {
        let dir = parent_dir(path);
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Appends sections to the file, remembering where each went and its hash.
struct SectionWriter<W: Write> {
    out: W,
    offset: u64,
}

impl<W: Write> SectionWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<Section> {
        self.out.write_all(bytes)?;
        let section =
            Section { offset: self.offset, len: bytes.len() as u64, blake3: blake3::hash(bytes).to_hex().to_string() };
        self.offset += bytes.len() as u64;
        Ok(section)
    }

    fn put_f32(&mut self, values: &[f32]) -> io::Result<Section> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.put(&bytes)
    }
}

/// The full checkpoint in a synced temp file next to `path`, ready to be renamed.
fn write_temp<B: AutodiffBackend>(
    path: &Path,
    trainer: &Trainer<B>,
    config: &LlamaConfig,
    window: u64,
) -> Result<(NamedTempFile, CheckpointMeta), CheckpointError> {
    let layout = ParamLayout::llama(&config.shape())?;
    let model = trainer.model();
    if !model.matches_layout(&layout) {
        return Err(CheckpointError::ModelMismatch);
    }
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp =
        tempfile::Builder::new().prefix(".tessera-ckpt-").suffix(".tmp").tempfile_in(dir).map_err(io_err(dir))?;
    let tmp_path = tmp.path().to_path_buf();

    let mut w = SectionWriter { out: BufWriter::new(tmp.as_file_mut()), offset: 0 };
    let (manifest_offset, manifest_bytes) = (|| {
        w.put(&[0u8; HEADER_LEN as usize])?;
        let params = write_params(&mut w, trainer, &layout)?;
        let manifest = Manifest {
            step: trainer.step_count(),
            window,
            fingerprint: layout.fingerprint().to_string(),
            config: config.clone(),
            params,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let section = w.put(&bytes)?;
        w.out.flush()?;
        Ok::<_, io::Error>((section.offset, bytes))
    })()
    .map_err(|e| match e.downcast::<CheckpointError>() {
        Ok(inner) => inner,
        Err(e) => CheckpointError::Io { path: tmp_path.clone(), source: e },
    })?;
    let file_len = w.offset;
    drop(w);

    let mut header = [0u8; HEADER_LEN as usize];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&manifest_offset.to_le_bytes());
    header[24..32].copy_from_slice(&(manifest_bytes.len() as u64).to_le_bytes());
    header[32..40].copy_from_slice(&file_len.to_le_bytes());
    header[40..72].copy_from_slice(blake3::hash(&manifest_bytes).as_bytes());
    let header_hash = blake3::hash(&header[..HASHED_HEADER_LEN]);
    header[72..104].copy_from_slice(header_hash.as_bytes());
    let file = tmp.as_file_mut();
    file.seek(SeekFrom::Start(0)).map_err(io_err(&tmp_path))?;
    file.write_all(&header).map_err(io_err(&tmp_path))?;
    file.sync_all().map_err(io_err(&tmp_path))?;

    let meta = CheckpointMeta {
        format_version: FORMAT_VERSION,
        step: trainer.step_count(),
        window,
        fingerprint: layout.fingerprint(),
        config: config.clone(),
    };
    Ok((tmp, meta))
}

/// Writes every parameter's values and AdamW state; returns their manifest entries.
/// (Errors that are not I/O travel inside `io::Error` to keep one error path.)
fn write_params<B: AutodiffBackend, W: Write>(
    w: &mut SectionWriter<W>,
    trainer: &Trainer<B>,
    layout: &ParamLayout,
) -> io::Result<Vec<ParamEntry>> {
    let model = trainer.model();
    let mut record = trainer.optimizer_record();
    let mut entries = Vec::with_capacity(layout.len());
    for (i, spec) in layout.params().iter().enumerate() {
        let values = model.param_values(i).map_err(|e| io::Error::other(CheckpointError::from(e)))?;
        let values = w.put_f32(&values)?;
        let id = match model.param(i).map_err(|e| io::Error::other(CheckpointError::from(e)))? {
            ParamRef::Matrix(p) => p.id,
            ParamRef::Vector(p) => p.id,
        };
        let adamw = match record.remove(&id) {
            Some(state) => Some(write_adam::<B, W>(w, state, spec).map_err(|e| match e {
                AdamWriteError::Io(e) => e,
                AdamWriteError::Bad(reason) => {
                    io::Error::other(CheckpointError::OptimizerState { name: spec.name.clone(), reason })
                }
            })?),
            None => None,
        };
        entries.push(ParamEntry { name: spec.name.clone(), shape: spec.shape.clone(), values, adamw });
    }
    Ok(entries)
}

enum AdamWriteError {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for AdamWriteError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn write_adam<B: AutodiffBackend, W: Write>(
    w: &mut SectionWriter<W>,
    record: AdaptorRecord<AdamW, B>,
    spec: &ParamSpec,
) -> Result<AdamEntry, AdamWriteError> {
    let AdaptorRecord::V1(record) = record;
    match record {
        AdaptorRecordV1::Rank1(s) => write_moments(w, s.momentum, spec),
        AdaptorRecordV1::Rank2(s) => write_moments(w, s.momentum, spec),
        _ => Err(AdamWriteError::Bad("AdamW state of an unexpected rank".into())),
    }
}

fn write_moments<Bk: Backend, W: Write, const D: usize>(
    w: &mut SectionWriter<W>,
    state: AdaptiveMomentumState<Bk, D>,
    spec: &ParamSpec,
) -> Result<AdamEntry, AdamWriteError> {
    let flat = |t: Tensor<Bk, D>| -> Result<Vec<f32>, AdamWriteError> {
        if t.dims().as_slice() != spec.shape.as_slice() {
            return Err(AdamWriteError::Bad(format!("moment of shape {:?}, expected {:?}", t.dims(), spec.shape)));
        }
        t.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| AdamWriteError::Bad(format!("{e:?}")))
    };
    let moment_1 = w.put_f32(&flat(state.moment_1)?)?;
    let moment_2 = w.put_f32(&flat(state.moment_2)?)?;
    let max_moment_2 = match state.max_moment_2 {
        Some(t) => Some(w.put_f32(&flat(t)?)?),
        None => None,
    };
    Ok(AdamEntry { time: state.time as u64, moment_1, moment_2, max_moment_2 })
}

fn adam_state<Bk: Backend, const D: usize>(
    time: usize,
    m1: Vec<f32>,
    m2: Vec<f32>,
    vmax: Option<Vec<f32>>,
    shape: [usize; D],
    device: &Bk::Device,
) -> AdamWState<Bk, D> {
    let tensor = |v: Vec<f32>| Tensor::<Bk, D>::from_data(TensorData::new(v, shape), device);
    AdamWState {
        momentum: AdaptiveMomentumState {
            time,
            moment_1: tensor(m1),
            moment_2: tensor(m2),
            max_moment_2: vmax.map(tensor),
        },
    }
}

/// Reads and verifies the header and the manifest; returns the manifest and where the
/// sections end (the manifest's offset).
fn read_manifest(file: &mut File, path: &Path) -> Result<(Manifest, u64), CheckpointError> {
    let actual_len = file.metadata().map_err(io_err(path))?.len();
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    Read::take(&mut *file, HEADER_LEN).read_to_end(&mut header).map_err(io_err(path))?;
    let magic_seen = &header[..header.len().min(MAGIC.len())];
    if magic_seen != &MAGIC[..magic_seen.len()] {
        return Err(CheckpointError::BadMagic { path: path.to_path_buf() });
    }
    if header.len() < HEADER_LEN as usize {
        return Err(CheckpointError::Truncated { path: path.to_path_buf(), expected: HEADER_LEN, found: actual_len });
    }
    let u32_at = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let corrupt = |what: &str| CheckpointError::Corrupt { path: path.to_path_buf(), what: what.to_string() };
    if blake3::hash(&header[..HASHED_HEADER_LEN]).as_bytes() != &header[72..104] {
        return Err(corrupt("the header"));
    }
    let (manifest_offset, manifest_len, file_len) = (u64_at(16), u64_at(24), u64_at(32));
    if actual_len < file_len {
        return Err(CheckpointError::Truncated { path: path.to_path_buf(), expected: file_len, found: actual_len });
    }
    if actual_len > file_len {
        return Err(corrupt("the file length"));
    }
    let decode = |reason: &str| CheckpointError::Decode { path: path.to_path_buf(), reason: reason.to_string() };
    if manifest_len > MAX_MANIFEST_LEN
        || manifest_offset < HEADER_LEN
        || manifest_offset.checked_add(manifest_len) != Some(file_len)
    {
        return Err(decode("the manifest's bounds are impossible"));
    }
    file.seek(SeekFrom::Start(manifest_offset)).map_err(io_err(path))?;
    let mut bytes = vec![0u8; manifest_len as usize];
    file.read_exact(&mut bytes).map_err(io_err(path))?;
    if blake3::hash(&bytes).as_bytes() != &header[40..72] {
        return Err(corrupt("the manifest"));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| decode(&format!("manifest is not valid JSON: {e}")))?;
    Ok((manifest, manifest_offset))
}

/// Checks that the manifest is of `layout`'s model and well formed.
fn check_manifest(manifest: &Manifest, layout: &ParamLayout, path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let decode = |reason: String| CheckpointError::Decode { path: path.to_path_buf(), reason };
    let found = parse_fingerprint(&manifest.fingerprint)
        .ok_or_else(|| decode(format!("fingerprint {:?} is not 64 hex digits", manifest.fingerprint)))?;
    if found != layout.fingerprint() {
        return Err(CheckpointError::FingerprintMismatch {
            path: path.to_path_buf(),
            expected: layout.fingerprint(),
            found,
        });
    }
    if manifest.params.len() != layout.len() {
        return Err(decode(format!("{} parameters, the model has {}", manifest.params.len(), layout.len())));
    }
    for (entry, spec) in manifest.params.iter().zip(layout.params()) {
        if entry.name != spec.name || entry.shape != spec.shape {
            return Err(decode(format!(
                "parameter {} {:?} where the layout has {} {:?}",
                entry.name, entry.shape, spec.name, spec.shape
            )));
        }
    }
    Ok(CheckpointMeta {
        format_version: FORMAT_VERSION,
        step: manifest.step,
        window: manifest.window,
        fingerprint: found,
        config: manifest.config.clone(),
    })
}

fn parse_fingerprint(hex: &str) -> Option<ModelFingerprint> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? * 16 + nibble(pair[1])?) as u8;
    }
    Some(ModelFingerprint(out))
}

/// Reads a section of `numel` f32 values, verifying bounds and hash before decoding.
fn read_f32(
    file: &mut File,
    path: &Path,
    data_end: u64,
    section: &Section,
    what: &str,
    numel: usize,
) -> Result<Vec<f32>, CheckpointError> {
    let decode = |reason: String| CheckpointError::Decode { path: path.to_path_buf(), reason };
    if section.len != numel as u64 * 4 {
        return Err(decode(format!("{what}: {} bytes for {numel} values", section.len)));
    }
    if section.offset < HEADER_LEN || section.offset.checked_add(section.len).is_none_or(|end| end > data_end) {
        return Err(decode(format!("{what}: section outside the data")));
    }
    file.seek(SeekFrom::Start(section.offset)).map_err(io_err(path))?;
    let mut bytes = vec![0u8; section.len as usize];
    file.read_exact(&mut bytes).map_err(io_err(path))?;
    if blake3::hash(&bytes).to_hex().as_str() != section.blake3 {
        return Err(CheckpointError::Corrupt { path: path.to_path_buf(), what: what.to_string() });
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}
