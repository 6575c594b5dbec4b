//! Resident memory of the model engine alone over many windows (the devnet's tiny Llama):
//! each "window" averages a slice in, trains one micro-batch and steps, adds an update,
//! gathers two slices and evaluates, as a miner does. If this grows, the growth is in the
//! model engine (burn), not in the actors, the S3 server or the chain.
//!
//!     cargo run --release -p tessera-model --example engine_soak -- [WINDOWS]

use tessera_core::hparams::Hparams;
use tessera_core::model::Device;
use tessera_core::model::ParamLayout;
use tessera_core::slice::SliceIndices;
use tessera_model::LlamaConfig;
use tessera_model::checkpoint::CheckpointStore;
use tessera_model::engine::{EngineSpec, run_engine};
use tessera_model::train::{OptimSettings, SampleRate, TokenBatch};

fn resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let windows: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mut hp = Hparams::builtin()?;
    hp.vocab_size = 256;
    hp.hidden_size = 64;
    hp.intermediate_size = 128;
    hp.num_hidden_layers = 2;
    hp.num_attention_heads = 4;
    hp.num_key_value_heads = 2;
    hp.max_position_embeddings = 128;
    hp.sequence_length = 64;
    hp.learning_rate = 3e-3;
    let shape = hp.model_shape();
    let layout = ParamLayout::llama(&shape)?;
    let dir = tempfile::tempdir()?;
    let spec = EngineSpec {
        miner: "soak".into(),
        device: Device::Cpu,
        compute: Default::default(),
        config: LlamaConfig::from(&shape),
        settings: OptimSettings::from_hparams(&hp)?,
        checkpoints: CheckpointStore::new(dir.path()),
        init_seed: 0,
    };
    run_engine(
        spec,
        Box::new(move |built| {
            let Ok((ops, _)) = built else { return };
            let tokens: Vec<u32> = (0..4 * 64).map(|i| (i * 7 % 256) as u32).collect();
            let mask = vec![true; tokens.len()];
            let batch = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: 4, seq_len: 64 };
            let mut rate = SampleRate::default();
            for w in 0..windows {
                let indices = SliceIndices::compute(&layout, w, 10).expect("indices");
                let values = ops.gather(&indices).expect("gather");
                ops.apply(&indices, &values).expect("apply");
                let _ = ops.train(&[batch], &mut rate, &mut || 0.0, &|| false).expect("train");
                let update = vec![0.0f32; values.len()];
                ops.add(&indices, &update).expect("add");
                let _ = ops.gather(&indices).expect("gather");
                let _ = ops.eval(&[batch]).expect("eval");
                if w % (windows / 10).max(1) == 0 {
                    println!("window {w:>6}  resident {:.1} MB", resident_mb());
                }
            }
            println!("window {windows:>6}  resident {:.1} MB", resident_mb());
        }),
    )?;
    Ok(())
}
