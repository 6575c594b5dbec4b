//! The bf16-mixed step against the fp32 one, on burn's flex backend. The fused attention
//! and block recomputation are checked in f64 in `model/tests/exact` (their own test binary:
//! burn fixes a device's float type for the whole process at its first use).

use burn::backend::Autodiff;

use super::*;
use crate::llama::{FP32_NAIVE, LlamaConfig};
use crate::train::{OptimSettings, TokenBatch};
use tessera_core::hparams::LrSchedule;

/// The AdamW settings both tests step with.
fn adamw() -> OptimSettings {
    OptimSettings {
        base_lr: 1e-3,
        schedule: LrSchedule::Cosine { t_max: 1000, eta_min: 1e-3, warmup_steps: 0 },
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        epsilon: 1e-8,
        grad_clip: Some(1.0),
    }
}

/// bf16-mixed against fp32 on the one CPU backend with bf16 (flex; `scripts/test` enables
/// `bf16-test`): same model, same batch, one AdamW step.
#[test]
fn a_bf16_mixed_step_tracks_the_fp32_step() {
    use crate::train::Trainer;
    type Flex = Autodiff<burn::backend::Flex<f32>>;

    let device = Default::default();
    let config = LlamaConfig::new(211, 64, 96, 2, 4, 2, 64);
    let (batch, seq) = (2, 33);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 53 + 7) % 211) as u32).collect();
    let mask = vec![true; tokens.len()];
    let settings = adamw();
    let bf16 = ResolvedCompute { bf16_matmul: true, ..FP32_NAIVE };
    let start = crate::init::initialize::<Flex>(&config, 5, &device).unwrap();
    let step = |compute: ResolvedCompute| {
        let mut trainer = Trainer::new(start.clone().with_compute(compute), settings.clone());
        let loss = trainer
            .accumulate(TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: batch, seq_len: seq })
            .unwrap();
        let report = trainer.step().unwrap();
        let params: Vec<f32> =
            (0..trainer.model().num_params()).flat_map(|i| trainer.model().param_values(i).unwrap()).collect();
        (loss, report.grad_norm, params)
    };
    let before: Vec<f32> = (0..start.num_params()).flat_map(|i| start.param_values(i).unwrap()).collect();
    let (loss32, norm32, after32) = step(FP32_NAIVE);
    let (loss16, norm16, after16) = step(bf16);
    // The products did run in bf16 (else the two steps would agree to the bit)...
    assert_ne!(loss16, loss32, "bf16-mixed computed nothing in bf16");
    // ...and bf16 keeps 8 bits of mantissa: relative error of a product about 2⁻⁸.
    assert!((loss16 - loss32).abs() / loss32 < 1e-2, "loss: bf16-mixed {loss16} vs fp32 {loss32}");
    assert!((norm16 - norm32).abs() / norm32 < 5e-2, "gradient norm: bf16-mixed {norm16} vs fp32 {norm32}");
    let update = |after: &[f32]| after.iter().zip(&before).map(|(a, b)| f64::from(a - b)).collect::<Vec<f64>>();
    let (u32_, u16_) = (update(&after32), update(&after16));
    let dot: f64 = u32_.iter().zip(&u16_).map(|(a, b)| a * b).sum();
    let norm = |u: &[f64]| u.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cosine = dot / (norm(&u32_) * norm(&u16_));
    assert!(cosine > 0.95, "the bf16-mixed update points elsewhere: cosine {cosine}");
    assert!((norm(&u16_) / norm(&u32_) - 1.0).abs() < 0.05, "update sizes differ");
    eprintln!("loss fp32 {loss32} bf16-mixed {loss16}; grad norm {norm32} vs {norm16}; update cosine {cosine}");
    // The master weights stay f32: the update is not rounded to bf16 steps.
    let p = start.clone().with_compute(bf16);
    assert_eq!(p.embed_tokens.val().dtype(), burn::tensor::DType::F32);
}

/// The step's bf16 copies of the linear weights give the gradients that casting each
/// weight at its use gave, bit for bit; the Trainer makes them at a step's first
/// micro-batch, keeps them for the next, and drops them at the step.
#[test]
fn bf16_weight_copies_made_once_per_step_give_the_per_use_casts_gradients() {
    use crate::train::{Trainer, causal_lm_loss, grads_to_f32, param_ids};
    use burn::optim::GradientsParams;
    use burn::tensor::DType;
    type Flex = Autodiff<burn::backend::Flex<f32>>;
    type Inner = burn::backend::Flex<f32>;

    let device = Default::default();
    let config = LlamaConfig::new(211, 64, 96, 2, 4, 2, 64);
    let (batch, seq) = (2, 33);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 31 + 3) % 211) as u32).collect();
    let mask = vec![true; tokens.len()];
    let micro = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: batch, seq_len: seq };
    let bf16 = ResolvedCompute { bf16_matmul: true, ..FP32_NAIVE };
    let model = crate::init::initialize::<Flex>(&config, 9, &device).unwrap().with_compute(bf16);

    let per_use = GradientsParams::from_grads(causal_lm_loss(&model, micro).backward(), &model);
    let copies = model.with_bf16_linears();
    assert_eq!(copies.layers[0].q_proj.val().dtype(), DType::BF16);
    assert_eq!(copies.layers[0].q_proj.id, model.layers[0].q_proj.id, "same parameter ids");
    assert_eq!(copies.embed_tokens.val().dtype(), DType::F32, "the embedding stays f32");
    let mut once = GradientsParams::from_grads(causal_lm_loss(&copies, micro).backward(), &copies);
    grads_to_f32::<Flex>(&model, &mut once);
    let values = |g: &GradientsParams, id, rank| -> Vec<f32> {
        let data = match rank {
            1 => g.get::<Inner, 1>(id).map(|t| t.to_data()),
            _ => g.get::<Inner, 2>(id).map(|t| t.to_data()),
        };
        data.expect("a gradient for every parameter").to_vec::<f32>().expect("f32 gradients")
    };
    for (id, rank) in param_ids(&model) {
        assert_eq!(values(&once, id, rank), values(&per_use, id, rank), "parameter {id} (rank {rank})");
    }

    let mut trainer = Trainer::new(model, adamw());
    trainer.accumulate(micro).unwrap();
    assert!(trainer.holds_step_casts(), "made at the step's first micro-batch");
    trainer.accumulate(micro).unwrap();
    let report = trainer.step().unwrap();
    assert_eq!(report.micro_batches, 2);
    assert!(!trainer.holds_step_casts(), "dropped with the old weights");
}
