//! The fused attention operation and block recomputation against plain autodiff through
//! naive tensor operations, on the CPU backend: the explicit backward equations (the
//! kernels' specification), the autodiff wiring of both custom operations, and grouped KV
//! heads with a sequence length that is no power of two.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Bool, Distribution, Tensor};

use super::*;
use crate::llama::{FP32_NAIVE, Llama, LlamaConfig};
use crate::train::{TokenBatch, causal_lm_loss};

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y} (tolerance {tol} × {scale})");
    }
}

fn random<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Shapes: (batch, heads, kv heads, seq, head dim).
const SHAPES: [(usize, usize, usize, usize, usize); 3] = [(1, 2, 2, 5, 4), (2, 4, 2, 7, 8), (1, 6, 1, 9, 2)];

#[test]
fn explicit_forward_and_backward_match_autodiff_through_the_naive_attention() {
    let device = Default::default();
    Cpu::seed(&device, 11);
    for (b, h, kv, t, d) in SHAPES {
        let scale = 1.0 / (d as f32).sqrt();
        let (q, k, v) =
            (random::<Ad, 4>([b, h, t, d], &device), random([b, kv, t, d], &device), random([b, kv, t, d], &device));
        let grad_out = random::<Cpu, 4>([b, h, t, d], &device);
        let mask = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &device).unsqueeze::<4>();
        let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
        let out = naive_attention(q.clone(), k.clone(), v.clone(), mask, scale, false);
        let grads = (out.clone() * Tensor::from_inner(grad_out.clone())).sum().backward();
        let want = [q.grad(&grads).unwrap(), k.grad(&grads).unwrap(), v.grad(&grads).unwrap()];

        let (qi, ki, vi) = (q.inner(), k.inner(), v.inner());
        let (out2, lse) = naive_attention_forward(qi.clone(), ki.clone(), vi.clone(), scale);
        assert_close("out", &values(out2.clone()), &values(out.inner()), 1e-5);
        assert_eq!(lse.dims(), [b, h, t]);
        // Row 0 sees only key 0: lse = scale · q0·k0 (GQA: head i reads kv head i / rep).
        let q0 = qi.clone().slice([0..1, 0..1, 0..1, 0..d]);
        let k0 = ki.clone().slice([0..1, 0..1, 0..1, 0..d]);
        let first = values((q0 * k0).sum() * scale)[0];
        assert!((values(lse.clone())[0] - first).abs() < 1e-5);
        let (dq, dk, dv) = naive_attention_backward(qi, ki, vi, out2, lse, grad_out, scale);
        for (name, got, want) in [("dq", dq, &want[0]), ("dk", dk, &want[1]), ("dv", dv, &want[2])] {
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert_close(name, &values(got), &values(want.clone()), 1e-4);
        }
    }
}

#[test]
fn the_fused_operation_under_autodiff_gives_the_naive_gradients() {
    let device = Default::default();
    Cpu::seed(&device, 12);
    for (b, h, kv, t, d) in SHAPES {
        let scale = 1.0 / (d as f32).sqrt();
        let q = random::<Ad, 4>([b, h, t, d], &device).require_grad();
        let k = random::<Ad, 4>([b, kv, t, d], &device).require_grad();
        let v = random::<Ad, 4>([b, kv, t, d], &device).require_grad();
        let weight = random::<Ad, 4>([b, h, t, d], &device);
        let mask = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &device).unsqueeze::<4>();
        let naive = naive_attention(q.clone(), k.clone(), v.clone(), mask, scale, false);
        let naive_grads = (naive.clone() * weight.clone()).sum().backward();
        let out = fused_attention(q.clone(), k.clone(), v.clone(), scale);
        assert_close("out", &values(out.clone()), &values(naive), 1e-5);
        let grads = (out * weight).sum().backward();
        for (name, x) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            assert_close(name, &values(x.grad(&grads).unwrap()), &values(x.grad(&naive_grads).unwrap()), 1e-4);
        }
    }
}

fn tiny_config(kv_heads: usize) -> LlamaConfig {
    LlamaConfig::new(61, 16, 24, 2, 4, kv_heads, 32)
}

/// Loss and the gradient of every parameter in canonical order, by plain autodiff or by
/// the staged recomputation.
fn loss_and_grads(model: &Llama<Ad>, tokens: &[u32], batch: usize, seq: usize, staged: bool) -> (f32, Vec<Vec<f32>>) {
    use crate::params::ParamRef;
    use burn::optim::{GradientsAccumulator, GradientsParams};
    let mask = vec![true; tokens.len()];
    let batch = TokenBatch { tokens, loss_mask: &mask, batch_size: batch, seq_len: seq };
    let (value, grads) = if staged {
        let mut accum = GradientsAccumulator::new();
        let value = crate::recompute::loss_and_grads(
            model,
            batch,
            |loss| Ok::<f32, ()>(values(loss)[0]),
            |grads| accum.accumulate(model, grads),
        )
        .unwrap();
        (value, accum.grads())
    } else {
        let loss = causal_lm_loss(model, batch);
        (values(loss.clone())[0], GradientsParams::from_grads(loss.backward(), model))
    };
    let all = (0..model.num_params())
        .map(|i| match model.param(i).unwrap() {
            ParamRef::Matrix(p) => values(grads.get::<Cpu, 2>(p.id).expect("a gradient")),
            ParamRef::Vector(p) => values(grads.get::<Cpu, 1>(p.id).expect("a gradient")),
        })
        .collect();
    (value, all)
}

#[test]
fn recomputed_blocks_and_the_fused_operation_leave_loss_and_gradients_unchanged() {
    let device = Default::default();
    let (batch, seq) = (2, 11);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 37 + 5) % 61) as u32).collect();
    for kv_heads in [4, 2] {
        let model = crate::init::initialize::<Ad>(&tiny_config(kv_heads), 3, &device).unwrap();
        let (loss, reference) = loss_and_grads(&model, &tokens, batch, seq, false);
        assert!(loss.is_finite() && loss > 0.0);
        for (fused, staged) in [(false, true), (true, false), (true, true)] {
            let compute = ResolvedCompute { fused_attention: fused, recompute_activations: staged, ..FP32_NAIVE };
            let model = model.clone().with_compute(compute);
            let (l, grads) = loss_and_grads(&model, &tokens, batch, seq, staged);
            assert!((l - loss).abs() < 1e-5, "{compute}: loss {l} vs {loss}");
            for (i, (g, r)) in grads.iter().zip(&reference).enumerate() {
                assert_close(&format!("{compute}, kv {kv_heads}, parameter {i}"), g, r, 1e-4);
            }
        }
    }
}

/// bf16-mixed against fp32 on the one CPU backend with bf16 (flex; `scripts/test` enables
/// `bf16-test`): same model, same batch, one AdamW step.
#[cfg(any(feature = "flex", feature = "bf16-test"))]
#[test]
fn a_bf16_mixed_step_tracks_the_fp32_step() {
    use crate::train::{OptimSettings, Trainer};
    use tessera_core::hparams::LrSchedule;
    type Flex = Autodiff<burn::backend::Flex<f32>>;

    let device = Default::default();
    let config = LlamaConfig::new(211, 64, 96, 2, 4, 2, 64);
    let (batch, seq) = (2, 33);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 53 + 7) % 211) as u32).collect();
    let mask = vec![true; tokens.len()];
    let settings = OptimSettings {
        base_lr: 1e-3,
        schedule: LrSchedule::Cosine { t_max: 1000, eta_min: 1e-3, warmup_steps: 0 },
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        epsilon: 1e-8,
        grad_clip: Some(1.0),
    };
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
