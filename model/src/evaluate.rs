//! Held-out evaluation of a model on disk, for `tessera eval`: a checkpoint (its values
//! only, not the optimizer state) or a Hugging Face directory, on the device's backend,
//! one micro-batch at a time with a progress callback.

use std::path::PathBuf;

use tessera_core::model::Device;
use thiserror::Error;

use crate::backend::{BackendError, BackendInfo, WithBackend, dispatch};
use crate::checkpoint::{CheckpointError, load_checkpoint_model};
use crate::hf::{HfError, import_hf};
use crate::ops::TrainBackend;
use crate::train::{TokenBatch, TrainError, evaluate};
use crate::{Llama, LlamaConfig};

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelFile {
    Checkpoint(PathBuf),
    Hf(PathBuf),
}

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("evaluating: {0}")]
    Train(#[from] TrainError),
}

/// What an evaluation measured.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    /// Token-weighted mean loss over every micro-batch.
    pub loss: f64,
    pub config: LlamaConfig,
    pub backend: String,
}

/// The model's configuration, read from the file without loading the weights.
pub fn model_config(file: &ModelFile) -> Result<LlamaConfig, EvalError> {
    Ok(match file {
        ModelFile::Checkpoint(path) => crate::checkpoint::inspect_checkpoint(path)?.config,
        ModelFile::Hf(dir) => crate::hf::read_hf_config(dir)?.config,
    })
}

/// Loads the model onto `device` and evaluates `batches`, calling `progress` after each.
pub fn evaluate_file(
    file: &ModelFile,
    device: &Device,
    batches: &[TokenBatch<'_>],
    progress: &mut dyn FnMut(usize),
) -> Result<EvalOutcome, EvalError> {
    dispatch(device, Job { file, batches, progress })?
}

struct Job<'a, 'b> {
    file: &'a ModelFile,
    batches: &'a [TokenBatch<'b>],
    progress: &'a mut dyn FnMut(usize),
}

impl WithBackend for Job<'_, '_> {
    type Output = Result<EvalOutcome, EvalError>;

    fn run<B: TrainBackend>(self, device: B::Device, info: &BackendInfo) -> Self::Output {
        let (model, config): (Llama<B>, LlamaConfig) = match self.file {
            ModelFile::Checkpoint(path) => {
                let (model, meta) = load_checkpoint_model::<B>(path, &device)?;
                (model, meta.config)
            }
            ModelFile::Hf(dir) => import_hf::<B>(dir, &device)?,
        };
        let (mut sum, mut tokens) = (0f64, 0usize);
        for (i, batch) in self.batches.iter().enumerate() {
            let n = batch.target_tokens();
            if n > 0 {
                sum += f64::from(evaluate(&model, std::slice::from_ref(batch))?) * n as f64;
                tokens += n;
            }
            (self.progress)(i + 1);
        }
        let loss = if tokens > 0 { sum / tokens as f64 } else { f64::NAN };
        Ok(EvalOutcome { loss, config, backend: info.to_string() })
    }
}
