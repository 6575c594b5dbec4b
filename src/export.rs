//! `tessera export`: a checkpoint's model as a Hugging Face directory, written beside the
//! target and renamed into place, so the directory appears whole or not at all.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tessera_data::TextTokenizer;
use tessera_model::checkpoint::export_checkpoint;
use tessera_model::hf::ExportDtype;

use crate::cli::ExportArgs;

/// Files of a Hugging Face tokenizer that are copied when present beside `tokenizer.json`.
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

pub fn run(args: ExportArgs) -> Result<()> {
    let dtype = ExportDtype::parse(&args.dtype)
        .ok_or_else(|| anyhow!("--dtype {:?}: expected f32, bf16 or f16", args.dtype))?;
    if !args.checkpoint.exists() {
        bail!(
            "{}: no such file (a miner keeps its checkpoints in <state_dir>/checkpoints/)",
            args.checkpoint.display()
        );
    }
    let out = &args.out;
    let replacing = check_target(out, args.force)?;
    // Resolved before anything is written: a bad --tokenizer leaves nothing behind.
    let tokenizer = args.tokenizer.as_deref().map(tokenizer_files).transpose()?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".tessera-export-")
        .tempdir_in(&parent)
        .with_context(|| format!("a staging directory in {}", parent.display()))?;
    let report = export_checkpoint(&args.checkpoint, staging.path(), dtype)?;
    let mut copied = Vec::new();
    for file in tokenizer.unwrap_or_default() {
        let name = file.file_name().map(|n| n.to_owned()).unwrap_or_default();
        std::fs::copy(&file, staging.path().join(&name))
            .with_context(|| format!("copying the tokenizer file {}", file.display()))?;
        copied.push(name.to_string_lossy().into_owned());
    }

    // Readable by others, as a model directory to share is (temp files are private).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(staging.path())?.flatten() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    // Into place: the old directory aside, the new one in, the old one removed.
    let staged = staging.keep();
    if replacing {
        let aside = parent.join(format!(".tessera-export-old-{}", std::process::id()));
        std::fs::rename(out, &aside).with_context(|| format!("moving the old {} aside", out.display()))?;
        std::fs::rename(&staged, out).with_context(|| format!("renaming the export to {}", out.display()))?;
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing the old export {}", aside.display()))?;
    } else {
        if out.exists() {
            std::fs::remove_dir(out).with_context(|| format!("replacing the empty {}", out.display()))?;
        }
        std::fs::rename(&staged, out).with_context(|| format!("renaming the export to {}", out.display()))?;
    }
    #[cfg(unix)]
    std::fs::File::open(&parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))?;

    println!(
        "exported window {} (step {}) of {} to {}: {:.1}M parameters as {}, config.json{}",
        report.window,
        report.step,
        args.checkpoint.display(),
        out.display(),
        report.parameters as f64 / 1e6,
        dtype.torch_name(),
        if copied.is_empty() {
            ", no tokenizer (pass --tokenizer to ship one)".to_owned()
        } else {
            format!(", {}", copied.join(", "))
        }
    );
    Ok(())
}

/// Whether `out` exists with content to replace; refuses a non-empty one without --force
/// and anything that is not a directory.
fn check_target(out: &Path, force: bool) -> Result<bool> {
    if !out.exists() {
        return Ok(false);
    }
    if !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    let empty = std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?.next().is_none();
    if empty {
        return Ok(false);
    }
    if !force {
        bail!("{} is not empty: pass --force to replace it, or choose another --out", out.display());
    }
    Ok(true)
}

/// The files of the tokenizer `spec` names (an HF tokenizer only: the byte tokenizer has
/// no files).
fn tokenizer_files(spec: &str) -> Result<Vec<PathBuf>> {
    let tokenizer = TextTokenizer::load(spec).with_context(|| format!("--tokenizer {spec:?}"))?;
    let Some(json) = tokenizer.file() else {
        bail!("--tokenizer {spec:?} is tessera's byte tokenizer, which has no files to ship");
    };
    let dir = json.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(TOKENIZER_FILES.iter().map(|f| dir.join(f)).filter(|p| p.is_file()).collect())
}
