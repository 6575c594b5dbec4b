//! The validator's cost of scoring one miner, on the engine path it uses: the loss on the
//! miner's own micro-batches, the miner's update added at the window's slice positions,
//! the loss on own and random micro-batches again, the positions restored. Prints the
//! time per miner and its parts.
//!
//!     cargo run -p tessera-model --example validator_eval -- [seed|devnet] [BATCH] [SEQ] [OWN] [RANDOM]
//!
//! `seed` is the 1.2B Llama at compression 100; `devnet` the devnet's tiny one at
//! compression 10. BATCH × SEQ tokens per micro-batch (defaults: 8 × 2048 for `seed`,
//! 4 × 64 for `devnet`), OWN and RANDOM micro-batches (defaults 2 and 4, the validator's).

use std::time::Instant;

use tessera_core::hparams::Hparams;
use tessera_core::model::Device;
use tessera_core::model::ParamLayout;
use tessera_core::slice::SliceIndices;
use tessera_model::LlamaConfig;
use tessera_model::checkpoint::CheckpointStore;
use tessera_model::engine::{EngineSpec, run_engine};
use tessera_model::train::{OptimSettings, TokenBatch};

fn arg(i: usize) -> Option<usize> {
    std::env::args().nth(i).and_then(|a| a.parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let preset = std::env::args().nth(1).unwrap_or_else(|| "devnet".into());
    let mut hp = Hparams::builtin()?;
    let (batch, seq) = match preset.as_str() {
        "seed" => (arg(2).unwrap_or(8), arg(3).unwrap_or(2048)),
        _ => {
            hp.vocab_size = 256;
            hp.hidden_size = 64;
            hp.intermediate_size = 128;
            hp.num_hidden_layers = 2;
            hp.num_attention_heads = 4;
            hp.num_key_value_heads = 2;
            hp.max_position_embeddings = 128;
            hp.sequence_length = 64;
            hp.compression = 10;
            (arg(2).unwrap_or(4), arg(3).unwrap_or(64))
        }
    };
    let (own_n, random_n) = (arg(4).unwrap_or(2), arg(5).unwrap_or(4));
    let shape = hp.model_shape();
    let layout = ParamLayout::llama(&shape)?;
    let indices = SliceIndices::compute(&layout, 7, hp.compression)?;
    let dir = tempfile::tempdir()?;
    let spec = EngineSpec {
        miner: "validator-eval".into(),
        device: Device::Cpu,
        compute: Default::default(),
        config: LlamaConfig::from(&shape),
        settings: OptimSettings::from_hparams(&hp)?,
        checkpoints: CheckpointStore::new(dir.path().join("checkpoints")),
        init_seed: 1,
    };
    let vocab = shape.vocab_size as u64;
    let params = layout.total_numel();
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    run_engine(
        spec,
        Box::new(move |built| {
            let make = |salt: u64| -> Vec<u32> {
                (0..(batch * seq) as u64).map(|i| ((i * 2_654_435_761 + salt * 97) % vocab) as u32).collect()
            };
            let own_tokens: Vec<Vec<u32>> = (0..own_n as u64).map(make).collect();
            let random_tokens: Vec<Vec<u32>> = (0..random_n as u64).map(|i| make(1000 + i)).collect();
            let mask = vec![true; batch * seq];
            fn view<'a>(t: &'a [Vec<u32>], mask: &'a [bool], batch: usize, seq: usize) -> Vec<TokenBatch<'a>> {
                t.iter().map(|tokens| TokenBatch { tokens, loss_mask: mask, batch_size: batch, seq_len: seq }).collect()
            }
            let outcome = (|| -> Result<(), String> {
                let (ops, _) = built.map_err(|e| e.to_string())?;
                println!(
                    "{preset}: {:.1}M parameters, {} values a slice; micro-batches of {batch} x {seq}; {own_n} own, {random_n} random; built in {:.1}s",
                    params as f64 / 1e6,
                    indices.total_len(),
                    started.elapsed().as_secs_f64()
                );
                let (own, random) = (view(&own_tokens, &mask, batch, seq), view(&random_tokens, &mask, batch, seq));
                let update = vec![1e-4f32; indices.total_len()];
                let t = Instant::now();
                let theta = ops.gather(&indices).map_err(|e| e.to_string())?;
                let gather_s = t.elapsed().as_secs_f64();
                // Once per window: the random data's loss before any update.
                let t = Instant::now();
                ops.eval(&random).map_err(|e| e.to_string())?;
                let random_before_s = t.elapsed().as_secs_f64();
                // Per miner.
                let t = Instant::now();
                ops.eval(&own).map_err(|e| e.to_string())?;
                let own_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                ops.add(&indices, &update).map_err(|e| e.to_string())?;
                let add_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                ops.eval(&own).map_err(|e| e.to_string())?;
                ops.eval(&random).map_err(|e| e.to_string())?;
                let after_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                ops.apply(&indices, &theta).map_err(|e| e.to_string())?;
                let restore_s = t.elapsed().as_secs_f64();
                let per_miner = own_s + add_s + after_s + restore_s;
                println!(
                    "per miner: {per_miner:.3}s (own before {own_s:.3}s, add {add_s:.3}s, own + random after {after_s:.3}s, restore {restore_s:.3}s); once per window: gather {gather_s:.3}s, random before {random_before_s:.3}s"
                );
                let tokens = ((2 * own_n + random_n) * batch * seq) as f64;
                println!("forward throughput: {:.0} tokens/s", tokens / (own_s + after_s).max(1e-9));
                Ok(())
            })();
            let _ = tx.send(outcome);
        }),
    )?;
    let outcome = rx.recv().unwrap_or_else(|_| Err("the engine ended without a result".into()));
    outcome.map_err(|e| e.into())
}
