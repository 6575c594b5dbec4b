//! The SparseLoCo exchange on a node (protocol v3; the format is
//! [`tessera_core::sparseloco`]). A delta is the window's whole update (θ_end − θ_start,
//! every parameter), compressed with the node's error-feedback buffer and signed in a
//! slice envelope with a packed body. Readers turn each peer's payload back into a dense
//! update at every position ([`SliceIndices::all`]), so the update exchange's machinery —
//! the outer step in place of the own update, the validator's scoring, the consensus —
//! works on it unchanged; the average is SparseLoCo's own (median-norm clip, contributor
//! mean: [`aggregate`]).
//!
//! What outlives a window here — the error buffer and the outer momentum — is saved
//! beside each checkpoint ([`SparseState::save`]) and taken back with it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{
    Dtype, EncodeError, Exchange, SliceError, SliceIndices, SliceKind, SliceMeta, decode, encode, encode_packed,
    update_value_bound,
};
use tessera_core::sparseloco::{ChunkPlan, CompressSettings, Payload, SparseError, compress, dequantise};
use tessera_core::window::Window;
use thiserror::Error;
use tracing::warn;

use crate::context::{MinerContext, lock};

/// Why a peer's delta could not be read.
#[derive(Debug, Error)]
pub enum DeltaError {
    #[error(transparent)]
    Slice(#[from] SliceError),
    #[error("SparseLoCo payload: {0}")]
    Payload(#[from] SparseError),
}

impl DeltaError {
    /// The rejection counter's label.
    pub fn reason(&self) -> &'static str {
        match self {
            DeltaError::Slice(e) => e.reason(),
            DeltaError::Payload(_) => "bad_payload",
        }
    }
}

/// A valid delta: the update it applies at the delta positions, and its body's hash.
pub struct DeltaValues<'a> {
    pub values: Cow<'a, [f32]>,
    pub body_hash: [u8; 32],
}

/// What a SparseLoCo node keeps between windows.
#[derive(Debug, Default)]
pub struct SparseState {
    /// The error-feedback buffer, every parameter in layout order (empty until first used).
    error: Vec<f32>,
    /// The outer Nesterov momentum (empty until first used, or without momentum).
    momentum: Vec<f32>,
    /// Every position of the model, built once.
    all: Option<Arc<SliceIndices>>,
    /// The last window whose outer step (or aggregate gradient's step) is in the model.
    applied: Option<Window>,
    /// The window this node last took the whole model from a snapshot at.
    resynced_at: Option<Window>,
}

/// The gradient exchange's error-feedback decay: nothing unsent is forgotten.
const GRADIENT_ERROR_DECAY: f32 = 1.0;

/// File beside the checkpoints: `window` (u64), then the three buffers' lengths (u64) and
/// values (f32), little-endian: error, momentum, and the values the window started from.
const STATE_FILE: &str = "sparseloco-state.bin";
/// Bytes before the buffers: the window and three lengths.
const STATE_HEADER: usize = 32;

/// What a compressed exchange carries over a restart with the checkpoint of a window.
#[derive(Debug, Default, PartialEq)]
pub struct SavedSparse {
    pub error: Vec<f32>,
    pub momentum: Vec<f32>,
    /// SparseLoCo: the model's values when the checkpoint's window started (the outer step
    /// of the next window is taken from them); empty for the gradient exchange.
    pub start: Vec<f32>,
}

impl SparseState {
    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Writes the buffers as of the checkpoint of `window` (and `start`, the values that
    /// window started from): temp file, fsync, rename.
    pub fn save(&self, dir: &Path, window: Window, start: &[f32]) -> std::io::Result<()> {
        let buffers = [self.error.as_slice(), self.momentum.as_slice(), start];
        let mut bytes = Vec::with_capacity(STATE_HEADER + 4 * buffers.iter().map(|b| b.len()).sum::<usize>());
        bytes.extend_from_slice(&window.to_le_bytes());
        for buffer in buffers {
            bytes.extend_from_slice(&(buffer.len() as u64).to_le_bytes());
        }
        for buffer in buffers {
            buffer.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        }
        tessera_core::fsutil::write_atomic(&Self::path(dir), &bytes)
    }

    /// What was saved with the checkpoint of `window`; nothing (every buffer starts
    /// afresh) when absent, unreadable, of another window or another model size.
    pub fn load(dir: &Path, window: Window, numel: usize) -> Option<SavedSparse> {
        let bytes = std::fs::read(Self::path(dir)).ok()?;
        let word = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let saved = word(0)?;
        let lens = [word(8)? as usize, word(16)? as usize, word(24)? as usize];
        let total = lens.iter().try_fold(0usize, |acc, n| acc.checked_add(*n))?;
        let fits = lens.iter().all(|&n| n == 0 || n == numel);
        if saved != window || !fits || Some(bytes.len()) != total.checked_mul(4).map(|b| b + STATE_HEADER) {
            warn!(
                saved,
                window, "the compressed exchange's state beside the checkpoint does not match it; starting it afresh"
            );
            return None;
        }
        let mut at = STATE_HEADER;
        let mut floats = |n: usize| -> Vec<f32> {
            let out =
                bytes[at..at + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            at += 4 * n;
            out
        };
        Some(SavedSparse { error: floats(lens[0]), momentum: floats(lens[1]), start: floats(lens[2]) })
    }
}

impl MinerContext {
    /// The exchange's compression knobs: the paper's, with the hparams' top-k; gradients
    /// keep everything they did not send (error decay 1, classic error feedback), where
    /// SparseLoCo's pseudo-gradients decay it by 0.95.
    pub fn sparse_settings(&self) -> CompressSettings {
        let defaults = CompressSettings::default();
        let top_k = self.network.hparams.exchange_top_k.map_or(defaults.top_k, |k| k as usize);
        let beta = match self.exchange() {
            Exchange::Gradient => GRADIENT_ERROR_DECAY,
            _ => defaults.beta,
        };
        CompressSettings { top_k, beta, ..defaults }
    }

    /// The largest magnitude a payload's lookup value may have: one AdamW step's bound
    /// ([`update_value_bound`]) accumulated by the error feedback, `1 / (1 − β)` of it.
    pub fn sparse_value_bound(&self) -> f32 {
        if self.exchange() == Exchange::Gradient {
            // Gradients have no optimiser bound; the median-norm clip bounds their weight.
            return tessera_core::slice::MAX_ABS_VALUE;
        }
        let hp = &self.network.hparams;
        let step =
            update_value_bound(hp.learning_rate, hp.optimizer_beta1, hp.optimizer_beta2, hp.optimizer_weight_decay);
        let beta = self.sparse_settings().beta.min(0.999);
        step / (1.0 - beta)
    }

    fn chunk_plan(&self) -> Result<ChunkPlan, SparseError> {
        ChunkPlan::new(self.model.spec.layout.params(), &self.sparse_settings())
    }

    /// Values in a `kind` object of this exchange: a SparseLoCo delta covers the model.
    pub fn value_count(&self, kind: SliceKind) -> usize {
        match (kind, self.exchange()) {
            (SliceKind::Snapshot, _) => self.model_numel(),
            (SliceKind::Delta, exchange) if exchange.is_compressed() => self.model_numel(),
            _ => self.slice_value_count(),
        }
    }

    /// Every parameter of the model.
    fn model_numel(&self) -> usize {
        self.model.spec.layout.params().iter().map(|p| p.numel()).sum()
    }

    /// What the envelope's `value_count` must be: values, or a SparseLoCo delta's most bytes.
    pub fn envelope_count(&self, kind: SliceKind) -> usize {
        match (kind, self.exchange()) {
            (SliceKind::Delta, exchange) if exchange.is_compressed() => {
                self.chunk_plan().map_or(0, |p| p.max_encoded_len())
            }
            (SliceKind::Snapshot, _) => self.model_numel(),
            _ => self.slice_value_count(),
        }
    }

    /// The positions a `kind` object of `window` is read and applied at.
    pub async fn positions(&self, kind: SliceKind, window: Window) -> Result<Arc<SliceIndices>, crate::RuntimeError> {
        match (kind, self.exchange()) {
            (SliceKind::Delta, exchange) if exchange.is_compressed() => Ok(self.all_positions()),
            (SliceKind::Snapshot, _) => Ok(self.all_positions()),
            _ => self.indices(window).await,
        }
    }

    /// Every position of the model, built once.
    pub(crate) fn all_positions(&self) -> Arc<SliceIndices> {
        let mut state = lock(&self.model.sparse);
        state.all.get_or_insert_with(|| Arc::new(SliceIndices::all(&self.model.spec.layout))).clone()
    }

    /// Compresses the own update of a window into the bytes of a payload, folding it into
    /// the error buffer (which keeps what was not sent).
    pub fn compress_update(&self, update: &[f32]) -> Result<Vec<u8>, SparseError> {
        let mut state = lock(&self.model.sparse);
        if state.error.len() != update.len() {
            state.error = vec![0.0; update.len()];
        }
        let payload = compress(self.model.spec.layout.params(), update, &mut state.error, &self.sparse_settings())?;
        Ok(payload.to_bytes())
    }

    /// Compresses `update` alone, without the error buffer: what a node publishes in place
    /// of its honest update (the devnet's adversaries).
    pub fn compress_alone(&self, update: &[f32]) -> Result<Vec<u8>, SparseError> {
        let mut error = vec![0.0; update.len()];
        Ok(compress(self.model.spec.layout.params(), update, &mut error, &self.sparse_settings())?.to_bytes())
    }

    /// The outer step for an aggregate `g`: `g`, or with Nesterov momentum μ
    /// (`m ← μ·m + g`, step `g + μ·m`). The caller scales it by the outer learning rate.
    pub fn outer_direction(&self, aggregate: &[f32]) -> Vec<f32> {
        let mu = self.network.hparams.exchange_outer_momentum.unwrap_or(0.0) as f32;
        if mu == 0.0 {
            return aggregate.to_vec();
        }
        let mut state = lock(&self.model.sparse);
        if state.momentum.len() != aggregate.len() {
            state.momentum = vec![0.0; aggregate.len()];
        }
        state
            .momentum
            .iter_mut()
            .zip(aggregate)
            .map(|(m, g)| {
                *m = mu * *m + g;
                g + mu * *m
            })
            .collect()
    }

    /// Saves the error buffer and momentum beside the checkpoint of `window`.
    pub fn save_sparse_state(&self, window: Window) {
        if !self.exchange().is_compressed() {
            return;
        }
        let dir = self.model.spec.checkpoints.dir().to_path_buf();
        let start = self.own_update(window).filter(|_| self.exchange() == Exchange::SparseLoco);
        if let Err(e) = lock(&self.model.sparse).save(&dir, window, start.as_deref().map_or(&[], Vec::as_slice)) {
            warn!(miner = %self.id.name, window, error = %e, "could not save the SparseLoCo state beside the checkpoint");
        }
    }

    /// Takes back the buffers saved with the checkpoint of `window` (after a restart).
    pub fn restore_sparse_state(&self, window: Window) {
        if !self.exchange().is_compressed() {
            return;
        }
        let numel = self.value_count(SliceKind::Delta);
        if let Some(saved) = SparseState::load(self.model.spec.checkpoints.dir(), window, numel) {
            if !saved.start.is_empty() {
                self.remember_own_update(window, Arc::new(saved.start));
            }
            let mut state = lock(&self.model.sparse);
            state.error = saved.error;
            state.momentum = saved.momentum;
        }
        // The checkpoint of a window holds the step of the window before it.
        self.note_applied(window.checked_sub(1));
    }

    /// The last window whose aggregate is in the model.
    pub fn applied_through(&self) -> Option<Window> {
        lock(&self.model.sparse).applied
    }

    pub fn note_applied(&self, window: Option<Window>) {
        lock(&self.model.sparse).applied = window;
    }

    /// The model was replaced by a snapshot of `snapshot` at window `at`: its outer steps
    /// are in through the window before it, and the error buffer (what this node had not
    /// yet sent of its own training on the old model) is dropped.
    pub fn note_resynced(&self, snapshot: Window, at: Window) {
        let mut state = lock(&self.model.sparse);
        state.applied = snapshot.checked_sub(1);
        state.resynced_at = Some(at);
        state.error.clear();
        drop(state);
        // The starts and updates kept were of the model left behind.
        lock(&self.model.own_updates).clear();
    }

    /// A resynchronisation was tried at `at` and found no snapshot.
    pub fn note_resync_attempt(&self, at: Window) {
        lock(&self.model.sparse).resynced_at = Some(at);
    }

    /// The window this node last took a snapshot at (or tried to).
    pub fn resynced_at(&self) -> Option<Window> {
        lock(&self.model.sparse).resynced_at
    }

    /// Encodes and signs the own `kind` object of `window`.
    pub fn encode_object(&self, kind: SliceKind, window: Window, body: &ObjectBody) -> Result<Vec<u8>, EncodeError> {
        let meta = |dtype| SliceMeta {
            kind,
            window,
            fingerprint: self.model.spec.layout.fingerprint(),
            compression: self.slice_compression(),
            dtype,
            version: self.exchange().protocol_version(),
        };
        match body {
            // A snapshot is the model itself, bit for bit: a joiner must hold what the others hold.
            ObjectBody::Values(values) if kind == SliceKind::Snapshot => {
                encode(meta(Dtype::F32), values, self.id.hotkey.as_ref())
            }
            ObjectBody::Values(values) => encode(meta(self.settings.upload_dtype), values, self.id.hotkey.as_ref()),
            ObjectBody::Packed(bytes) => encode_packed(meta(Dtype::Packed), bytes, self.id.hotkey.as_ref()),
        }
    }
}

/// What an own object carries: values, or a packed payload (SparseLoCo's delta).
#[derive(Debug, Clone)]
pub enum ObjectBody {
    Values(Arc<Vec<f32>>),
    Packed(Arc<Vec<u8>>),
}

/// Decodes and checks a peer's delta of `window` (signed by `hotkey` where given) into the
/// update it applies at [`MinerContext::positions`].
pub fn delta_values<'a>(
    ctx: &MinerContext,
    bytes: &'a [u8],
    window: Window,
    hotkey: Option<Hotkey>,
    registered: Option<&HashSet<Hotkey>>,
) -> Result<DeltaValues<'a>, DeltaError> {
    let view = decode(bytes, &ctx.expected_slice(SliceKind::Delta, window, hotkey, registered))?;
    let body_hash = view.header.body_hash;
    match view.packed() {
        Some(body) => {
            let payload = read_payload(ctx, body)?;
            let mut values = dequantise(&payload, ctx.model.spec.layout.params(), &ctx.sparse_settings())?;
            if ctx.exchange() == Exchange::Gradient {
                // A gradient as the update it alone would make: a sign-descent step at the
                // learning rate where it sent a value (AdamW's first steps are nearly that).
                let lr = ctx.network.hparams.learning_rate as f32;
                values.iter_mut().filter(|v| **v != 0.0).for_each(|v| *v = -lr * v.signum());
            }
            Ok(DeltaValues { values: Cow::Owned(values), body_hash })
        }
        None => Ok(DeltaValues { values: view.values(), body_hash }),
    }
}

/// A peer's SparseLoCo payload of `window`, checked (envelope and payload).
pub fn delta_payload(
    ctx: &MinerContext,
    bytes: &[u8],
    window: Window,
    hotkey: Option<Hotkey>,
    registered: Option<&HashSet<Hotkey>>,
) -> Result<Payload, DeltaError> {
    let view = decode(bytes, &ctx.expected_slice(SliceKind::Delta, window, hotkey, registered))?;
    let body = view.packed().ok_or(SliceError::WrongDtype { expected: "packed", found: view.header.dtype })?;
    read_payload(ctx, body)
}

fn read_payload(ctx: &MinerContext, body: &[u8]) -> Result<Payload, DeltaError> {
    Ok(Payload::from_bytes(body, ctx.model.spec.layout.params(), &ctx.sparse_settings(), ctx.sparse_value_bound())?)
}

#[cfg(test)]
mod tests {
    use super::{SavedSparse, SparseState};

    #[test]
    fn the_state_file_round_trips_and_refuses_another_window_or_size() {
        let dir = tempfile::tempdir().unwrap();
        let state = SparseState { error: vec![1.0, -2.5, 0.0], momentum: vec![], ..Default::default() };
        state.save(dir.path(), 7, &[0.5, 0.25, -1.0]).unwrap();
        let saved = SavedSparse { error: vec![1.0, -2.5, 0.0], momentum: vec![], start: vec![0.5, 0.25, -1.0] };
        assert_eq!(SparseState::load(dir.path(), 7, 3), Some(saved));
        assert_eq!(SparseState::load(dir.path(), 8, 3), None, "another checkpoint's window");
        assert_eq!(SparseState::load(dir.path(), 7, 4), None, "another model size");
        std::fs::write(dir.path().join(super::STATE_FILE), [1u8, 2, 3]).unwrap();
        assert_eq!(SparseState::load(dir.path(), 7, 3), None, "truncated");
    }
}
