//! `tessera checkpoint show`: a checkpoint described and verified, for an operator.

use std::io::Write;

use anyhow::{Context, Result};
use tessera_model::checkpoint::{CheckpointReport, inspect_checkpoint};

use crate::cli::{CheckpointArgs, CheckpointCommand};

pub fn run(args: CheckpointArgs) -> Result<()> {
    match args.command {
        CheckpointCommand::Show { path, json } => {
            if !path.exists() {
                anyhow::bail!(
                    "{}: no such file (a miner keeps its checkpoints in <state_dir>/checkpoints/)",
                    path.display()
                );
            }
            let report = inspect_checkpoint(&path)?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report).context("the report as JSON")?)?;
            } else {
                print_report(&mut out, &report)?;
            }
            Ok(())
        }
    }
}

fn print_report(out: &mut impl Write, r: &CheckpointReport) -> Result<()> {
    let c = &r.config;
    writeln!(out, "checkpoint  {} ({})", r.path.display(), bytes(r.file_bytes))?;
    writeln!(out, "format      {}", r.format_version)?;
    writeln!(out, "window      {}", r.window)?;
    writeln!(out, "step        {}", r.step)?;
    writeln!(
        out,
        "model       {:.1}M parameters in {} tensors, fingerprint {}",
        r.parameters as f64 / 1e6,
        r.tensors,
        r.fingerprint
    )?;
    let shape = c.shape();
    writeln!(
        out,
        "            hidden {}, intermediate {}, {} layers, {} heads ({} key/value), vocabulary {}",
        shape.hidden_size,
        shape.intermediate_size,
        shape.num_hidden_layers,
        shape.num_attention_heads,
        shape.num_key_value_heads,
        shape.vocab_size
    )?;
    writeln!(out, "optimizer   AdamW state for {} of {} tensors", r.tensors_with_optimizer_state, r.tensors)?;
    writeln!(
        out,
        "integrity   ok: header, manifest and all {} sections ({}) match their BLAKE3",
        r.sections_verified,
        bytes(r.section_bytes)
    )?;
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
