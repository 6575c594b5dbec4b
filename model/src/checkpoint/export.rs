//! A checkpoint's parameters as an HF model directory, streamed from the file one tensor
//! at a time (no model is built, so exporting a 1B checkpoint needs one tensor of memory,
//! not the model and its optimizer state).

use std::path::Path;

use thiserror::Error;

use super::{CheckpointError, CheckpointReport, inspect_checkpoint, open, read_f32, read_manifest};
use crate::hf::{ExportDtype, HfError, write_hf_dir};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// Verifies the checkpoint at `path` (every section's BLAKE3) and writes its model into
/// `dir` as `model.safetensors` in `dtype` and `config.json`; returns what it exported.
pub fn export_checkpoint(path: &Path, dir: &Path, dtype: ExportDtype) -> Result<CheckpointReport, ExportError> {
    let report = inspect_checkpoint(path)?;
    let mut file = open(path)?;
    let (manifest, data_end) = read_manifest(&mut file, path)?;
    let layout = tessera_core::model::ParamLayout::llama(&manifest.config.shape()).map_err(CheckpointError::from)?;
    write_hf_dir(&manifest.config, dir, dtype, |i| {
        let entry = &manifest.params[i];
        let numel = layout.params()[i].numel();
        Ok::<_, ExportError>(read_f32(&mut file, path, data_end, &entry.values, &entry.name, numel)?)
    })?;
    Ok(report)
}
