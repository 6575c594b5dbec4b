//! What a checkpoint file is of, and whether every byte of it is intact, without building
//! the model: the header, the manifest, and every section's BLAKE3, streamed
//! (`tessera checkpoint show`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tessera_core::model::ParamLayout;

use super::{CheckpointError, HEADER_LEN, Section, check_manifest, io_err, open, read_manifest};
use crate::llama::LlamaConfig;

/// A checkpoint, described and verified.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub format_version: u32,
    pub step: u64,
    pub window: u64,
    pub fingerprint: String,
    pub config: LlamaConfig,
    pub parameters: usize,
    pub tensors: usize,
    /// Tensors with AdamW state (all of them once the optimizer has stepped).
    pub tensors_with_optimizer_state: usize,
    /// Sections (values and optimizer moments) whose BLAKE3 was checked, and their bytes.
    pub sections_verified: usize,
    pub section_bytes: u64,
}

/// Reads and verifies the whole checkpoint at `path`: header, manifest, the model it is of
/// (its fingerprint must match its own configuration), and every section's size, bounds
/// and hash. The first problem is the error, naming the file and what is wrong.
pub fn inspect_checkpoint(path: &Path) -> Result<CheckpointReport, CheckpointError> {
    let mut file = open(path)?;
    let file_bytes = file.metadata().map_err(io_err(path))?.len();
    let (manifest, data_end) = read_manifest(&mut file, path)?;
    let layout = ParamLayout::llama(&manifest.config.shape())?;
    let meta = check_manifest(&manifest, &layout, path)?;
    let (mut sections, mut bytes, mut with_state) = (0usize, 0u64, 0usize);
    for (entry, spec) in manifest.params.iter().zip(layout.params()) {
        let expected = spec.numel() as u64 * 4;
        let mut sections_of = vec![(&entry.values, "values")];
        if let Some(adam) = &entry.adamw {
            with_state += 1;
            sections_of.push((&adam.moment_1, "moment_1"));
            sections_of.push((&adam.moment_2, "moment_2"));
            if let Some(max) = &adam.max_moment_2 {
                sections_of.push((max, "max_moment_2"));
            }
        }
        for (section, kind) in sections_of {
            let what = format!("{} {kind}", entry.name);
            verify_section(&mut file, path, data_end, section, expected, &what)?;
            sections += 1;
            bytes += section.len;
        }
    }
    Ok(CheckpointReport {
        path: path.to_path_buf(),
        file_bytes,
        format_version: meta.format_version,
        step: meta.step,
        window: meta.window,
        fingerprint: meta.fingerprint.to_string(),
        config: meta.config,
        parameters: layout.total_numel(),
        tensors: layout.len(),
        tensors_with_optimizer_state: with_state,
        sections_verified: sections,
        section_bytes: bytes,
    })
}

/// Checks one section's size, bounds and BLAKE3, reading it in chunks (a 1B model's
/// sections are hundreds of MB).
fn verify_section(
    file: &mut File,
    path: &Path,
    data_end: u64,
    section: &Section,
    expected_len: u64,
    what: &str,
) -> Result<(), CheckpointError> {
    let decode = |reason: String| CheckpointError::Decode { path: path.to_path_buf(), reason };
    if section.len != expected_len {
        return Err(decode(format!("{what}: {} bytes where the model needs {expected_len}", section.len)));
    }
    if section.offset < HEADER_LEN || section.offset.checked_add(section.len).is_none_or(|end| end > data_end) {
        return Err(decode(format!("{what}: section outside the data")));
    }
    file.seek(SeekFrom::Start(section.offset)).map_err(io_err(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut left = section.len;
    let mut buf = vec![0u8; 8 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n]).map_err(io_err(path))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    if hasher.finalize().to_hex().as_str() != section.blake3 {
        return Err(CheckpointError::Corrupt { path: path.to_path_buf(), what: what.to_string() });
    }
    Ok(())
}
