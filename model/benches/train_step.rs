//! Tokens/s of one full training step (forward, backward, global-norm clipping, AdamW:
//! `Trainer::accumulate` + `Trainer::step`, the miner's own path) on the backend that
//! `backend::dispatch` picks, median of several steps after warm-up.
//!
//! `cargo bench -p tessera-model --bench train_step [--no-default-features --features X]`
//!
//! Configured by environment variables so one binary serves the CPU comparison and the
//! 1.2B GPU run (`scripts/gpu_check.sh`):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TESSERA_BENCH_DEVICE` | `cpu`, `cuda`, `cuda:N` | `cpu` |
//! | `TESSERA_BENCH_FLOAT` | storage type: `f32`, or `bf16` for everything (CUDA only; see `backend`) | `f32` |
//! | `TESSERA_BENCH_PRECISION` | the `precision` setting: `auto`, `bf16-mixed` or `fp32` | `fp32` |
//! | `TESSERA_BENCH_ATTENTION` | the `attention` setting: `auto`, `naive` or `fused` | `naive` |
//! | `TESSERA_BENCH_RECOMPUTE` | `1`: recompute decoder blocks in the backward | `0` |
//! | `TESSERA_BENCH_PRESET` | `small` (fits 2 cores) or `seed` (the 1.2B Llama) | `small` |
//! | `TESSERA_BENCH_VOCAB`, `_HIDDEN`, `_INTERMEDIATE`, `_LAYERS`, `_HEADS`, `_KV_HEADS` | override the preset's shape (`_KV_HEADS` defaults to the heads) | preset |
//! | `TESSERA_BENCH_BATCH`, `TESSERA_BENCH_SEQ` | sequences per step and tokens per sequence | 4, 128 (`seed`: 8, 2048) |
//! | `TESSERA_BENCH_STEPS`, `TESSERA_BENCH_WARMUP` | timed and untimed steps | 10, 2 (`seed`: 3 warm-up) |
//!
//! Tokens/s counts `batch × seq` tokens per step (the loss predicts `seq - 1` of each row;
//! `scripts/torch_bench.py` counts the same way). The last line is `RESULT {json}`, with the
//! model FLOPs per token (`6·N + 6·layers·hidden·seq`: N the parameters that multiply, the
//! causal attention's products) for MFU.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tessera_core::hparams::LrSchedule;
use tessera_core::model::Device;
use tessera_core::model::{ComputeOptions, ModelShape, ParamLayout, ResolvedCompute};
use tessera_model::LlamaConfig;
use tessera_model::backend::{BackendInfo, FloatType, WithBackend, compute_caps, dispatch_with};
use tessera_model::init::initialize;
use tessera_model::ops::TrainBackend;
use tessera_model::train::{OptimSettings, TokenBatch, Trainer};

/// What to run, read from the environment.
#[derive(Debug, Clone)]
struct BenchConfig {
    device: Device,
    float: FloatType,
    compute: ComputeOptions,
    shape: ModelShape,
    batch: usize,
    seq: usize,
    steps: usize,
    warmup: usize,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match env_var(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={v:?}: expected a positive integer")),
        },
    }
}

impl BenchConfig {
    fn from_env() -> Result<Self, String> {
        let device = match env_var("TESSERA_BENCH_DEVICE") {
            None => Device::Cpu,
            Some(v) => {
                Device::parse(&v).ok_or_else(|| format!("TESSERA_BENCH_DEVICE={v:?}: expected cpu, cuda or cuda:N"))?
            }
        };
        let float = match env_var("TESSERA_BENCH_FLOAT").as_deref().map(str::trim) {
            None | Some("f32") => FloatType::F32,
            Some("bf16") => FloatType::Bf16,
            Some(v) => return Err(format!("TESSERA_BENCH_FLOAT={v:?}: expected f32 or bf16")),
        };
        let parse = |name: &str, default: &str| env_var(name).unwrap_or_else(|| default.to_owned());
        let compute = ComputeOptions {
            precision: parse("TESSERA_BENCH_PRECISION", "fp32")
                .parse()
                .map_err(|e| format!("TESSERA_BENCH_PRECISION: {e}"))?,
            attention: parse("TESSERA_BENCH_ATTENTION", "naive")
                .parse()
                .map_err(|e| format!("TESSERA_BENCH_ATTENTION: {e}"))?,
            recompute_activations: match parse("TESSERA_BENCH_RECOMPUTE", "0").trim() {
                "0" => false,
                "1" => true,
                v => return Err(format!("TESSERA_BENCH_RECOMPUTE={v:?}: expected 0 or 1")),
            },
        };
        let (mut shape, batch, seq, warmup) = match env_var("TESSERA_BENCH_PRESET").as_deref().map(str::trim) {
            None | Some("small") => (
                ModelShape {
                    vocab_size: 4096,
                    hidden_size: 256,
                    intermediate_size: 688,
                    num_hidden_layers: 4,
                    num_attention_heads: 4,
                    num_key_value_heads: 4,
                    max_position_embeddings: 2048,
                    rope_theta: 10_000.0,
                    rms_norm_eps: 1e-6,
                },
                4,
                128,
                2,
            ),
            // The seed's model, sequence length and `actual_batch_size` default.
            Some("seed") => (ModelShape::seed_1b2(), 8, 2048, 3),
            Some(v) => return Err(format!("TESSERA_BENCH_PRESET={v:?}: expected small or seed")),
        };
        shape.vocab_size = env_usize("TESSERA_BENCH_VOCAB", shape.vocab_size)?;
        shape.hidden_size = env_usize("TESSERA_BENCH_HIDDEN", shape.hidden_size)?;
        shape.intermediate_size = env_usize("TESSERA_BENCH_INTERMEDIATE", shape.intermediate_size)?;
        shape.num_hidden_layers = env_usize("TESSERA_BENCH_LAYERS", shape.num_hidden_layers)?;
        shape.num_attention_heads = env_usize("TESSERA_BENCH_HEADS", shape.num_attention_heads)?;
        shape.num_key_value_heads = env_usize("TESSERA_BENCH_KV_HEADS", shape.num_attention_heads)?;
        let batch = env_usize("TESSERA_BENCH_BATCH", batch)?;
        let seq = env_usize("TESSERA_BENCH_SEQ", seq)?;
        shape.max_position_embeddings = shape.max_position_embeddings.max(seq);
        shape.validate().map_err(|e| format!("model shape: {e}"))?;
        if seq < 2 {
            return Err("TESSERA_BENCH_SEQ must be at least 2".into());
        }
        Ok(Self {
            device,
            float,
            compute,
            shape,
            batch,
            seq,
            steps: env_usize("TESSERA_BENCH_STEPS", 10)?,
            warmup: env_usize("TESSERA_BENCH_WARMUP", warmup)?,
        })
    }
}

/// Measured figures.
struct Report {
    info: BackendInfo,
    compute: ResolvedCompute,
    burn_name: String,
    params: usize,
    step_times: Vec<Duration>,
    losses: Vec<f32>,
}

struct Bench(BenchConfig);

impl WithBackend for Bench {
    type Output = Result<Report, String>;

    fn run<B: TrainBackend>(self, device: B::Device, info: &BackendInfo) -> Self::Output {
        eprintln!("backend: {info}");
        let c = self.0;
        let config = LlamaConfig::from(&c.shape);
        let params = ParamLayout::llama(&c.shape).map_err(|e| e.to_string())?.total_numel();
        let compute = c.compute.resolve(info.backend, compute_caps::<B>(info, &device)).map_err(|e| e.to_string())?;
        eprintln!("compute: {compute}");
        let model = initialize::<B>(&config, 1, &device).map_err(|e| format!("init: {e}"))?.with_compute(compute);
        let settings = OptimSettings {
            base_lr: 1e-4,
            schedule: LrSchedule::Cosine { t_max: 5000, eta_min: 1e-5, warmup_steps: 0 },
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            epsilon: 1e-8,
            grad_clip: Some(1.0),
        };
        let mut trainer = Trainer::new(model, settings);
        let n = c.batch * c.seq;
        let mask = vec![true; n];
        let (mut step_times, mut losses) = (Vec::new(), Vec::new());
        for step in 0..c.warmup + c.steps {
            // Fixed pseudo-random ids: the cost does not depend on the values.
            let tokens: Vec<u32> = (0..n as u64)
                .map(|i| ((i * 2_654_435_761 + step as u64 * 97) % c.shape.vocab_size as u64) as u32)
                .collect();
            let batch = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: c.batch, seq_len: c.seq };
            let start = Instant::now();
            let loss = trainer.accumulate(batch).map_err(|e| format!("step {step}: {e}"))?;
            trainer.step();
            B::sync(&device).map_err(|e| format!("step {step}: {e}"))?;
            let elapsed = start.elapsed();
            eprintln!(
                "  step {step:>3}: {:>9.1} ms  loss {loss:.4}{}",
                ms(elapsed),
                if step < c.warmup { "  (warm-up)" } else { "" }
            );
            if step >= c.warmup {
                step_times.push(elapsed);
            }
            losses.push(loss);
        }
        Ok(Report { info: info.clone(), compute, burn_name: B::name(&device), params, step_times, losses })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The process's peak resident memory (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> ExitCode {
    // As the binary does: every core for the CPU's matrix products (before any thread).
    tessera_model::backend::use_every_core_for_cpu_matmuls();
    let config = match BenchConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("train_step: {e}");
            return ExitCode::from(2);
        }
    };
    let s = &config.shape;
    eprintln!(
        "train_step: vocab {}, hidden {}, intermediate {}, layers {}, heads {} (kv {}); batch {} x seq {}; {} warm-up + {} timed steps",
        s.vocab_size,
        s.hidden_size,
        s.intermediate_size,
        s.num_hidden_layers,
        s.num_attention_heads,
        s.num_key_value_heads,
        config.batch,
        config.seq,
        config.warmup,
        config.steps
    );
    let report = match dispatch_with(&config.device, config.float, Bench(config.clone())) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("train_step: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("train_step: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = &report.info;
    let mut times: Vec<f64> = report.step_times.iter().copied().map(ms).collect();
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let tokens_per_step = config.batch * config.seq;
    let tokens_per_s = tokens_per_step as f64 / (median / 1e3);
    let (first, last) = (report.losses.first().copied(), report.losses.last().copied());
    let rss = peak_rss_mib();
    // Multiplying parameters: all but the embedding table (a lookup).
    let multiplying = (report.params - s.vocab_size * s.hidden_size) as f64;
    let flops_per_token = 6.0 * multiplying + 6.0 * (s.num_hidden_layers * s.hidden_size * config.seq) as f64;
    println!(
        "{:<18} {:>10.1} tokens/s {:>10.1} ms/step (min {:.1}, max {:.1}; {} steps, {:.1}M params, {} tokens/step, {}, storage {}, {}, peak RSS {} MiB)",
        info.backend,
        tokens_per_s,
        median,
        times.first().copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
        times.len(),
        report.params as f64 / 1e6,
        tokens_per_step,
        report.burn_name,
        info.float,
        report.compute,
        rss.map_or("?".into(), |r| format!("{r:.0}")),
    );
    let json = serde_json::json!({
        "bench": "train_step",
        "backend": info.backend,
        "burn_backend": report.burn_name,
        "device": info.device.to_string(),
        "gpu": info.gpu.as_ref().map(|g| g.name.clone()),
        "float": info.float.to_string(),
        "matmul": info.matmul.to_string(),
        "compute": report.compute.to_string(),
        "flops_per_token": flops_per_token,
        "params": report.params,
        "vocab": s.vocab_size,
        "hidden": s.hidden_size,
        "intermediate": s.intermediate_size,
        "layers": s.num_hidden_layers,
        "heads": s.num_attention_heads,
        "kv_heads": s.num_key_value_heads,
        "batch": config.batch,
        "seq": config.seq,
        "steps": times.len(),
        "tokens_per_s": tokens_per_s,
        "ms_per_step": median,
        "ms_min": times.first(),
        "ms_max": times.last(),
        "loss_first": first,
        "loss_last": last,
        "peak_rss_mib": rss,
    });
    println!("RESULT {json}");
    ExitCode::SUCCESS
}
