//! The fused attention operation and block recomputation against plain autodiff through
//! naive tensor operations, on the CPU backend: the explicit backward equations (the
//! kernels' specification), the autodiff wiring of both custom operations, and grouped KV
//! heads with a sequence length that is no power of two.
//!
//! No check here depends on the processor:
//! - The equations and the wiring are compared with both sides in f64, where burn-ndarray
//!   computes exact IEEE operations, to [`F64_TOLERANCE`]. Not in f32: burn-ndarray's f32
//!   `recip` is the processor's approximate reciprocal (`_mm256_rcp_ps`, relative error up
//!   to 1.5·2⁻¹², on AVX2; `_mm512_rcp14_ps`, 2⁻¹⁴, on AVX-512), and burn's autodiff takes
//!   it in the backward of every division and logarithm, so plain autodiff in f32 is off by
//!   up to 4·10⁻⁴ on one processor and 6·10⁻⁵ on another.
//! - The explicit equations in f32 (what the CPU backend runs, and what the kernels
//!   implement) are compared with the same equations in f64 within a bound derived from
//!   f32's rounding ([`bounds`]).
//!
//! In its own test binary: burn fixes a device's default float type for the whole process
//! at its first use, and the model creates its tensors in that type; every test here first
//! makes it f64 ([`exact_device`]).

mod bounds;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::{Backend, get_device_settings, set_default_float_dtype};
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorData};
use tessera_core::model::ResolvedCompute;
use tessera_model::llama::FP32_NAIVE;
use tessera_model::ops::{fused_attention, naive_attention, naive_attention_backward, naive_attention_forward};
use tessera_model::train::{TokenBatch, causal_lm_loss};
use tessera_model::{Llama, LlamaConfig};

type Cpu = NdArray<f32>;
type Exact = NdArray<f64>;
type Ad = Autodiff<Exact>;

const F64: DType = DType::F64;
const F32: DType = DType::F32;

/// The CPU device with f64 as its default float type (whichever test comes first sets it).
fn exact_device() -> burn::backend::ndarray::NdArrayDevice {
    let device = Default::default();
    let _already_set = set_default_float_dtype::<Exact>(&device, FloatDType::F64);
    assert_eq!(get_device_settings::<Exact>(&device).float_dtype, FloatDType::F64, "the checks need f64");
    device
}

/// Two f64 routes to the same value agree to this fraction of the largest value compared.
/// f64's unit roundoff is 1.1·10⁻¹⁶; no chain here has more than ~10³ roundings (sums of
/// at most 24 terms, two decoder layers) nor magnitudes beyond ~10² relative to the values
/// compared, so exact-arithmetic equal routes differ by < 10⁻¹¹, while a wrong equation,
/// term or gradient wiring shows at 10⁻³ or more.
const F64_TOLERANCE: f64 = 1e-9;

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(f64::MIN_POSITIVE, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= F64_TOLERANCE * scale,
            "{what}[{i}]: {x} vs {y} (tolerance {F64_TOLERANCE} × {scale})"
        );
    }
}

/// Values of about unit variance in `dtype`, the same on every run: `init_values`'
/// deterministic draw (bounded at ±3.46) named by `seed` and `name`, rescaled.
fn random<B: Backend, const D: usize>(shape: [usize; D], dtype: DType, seed: u64, name: &str) -> Tensor<B, D> {
    use tessera_model::init::{INIT_STD, init_values};
    let numel = shape.iter().product();
    let unit = init_values(seed, name, numel).into_iter().map(|x| x / INIT_STD).collect();
    let t = Tensor::from_data(TensorData::new::<f32, _>(unit, shape), (&Default::default(), dtype));
    assert_eq!(t.dtype(), dtype);
    t
}

/// Shapes: (batch, heads, kv heads, seq, head dim).
const SHAPES: [(usize, usize, usize, usize, usize); 3] = [(1, 2, 2, 5, 4), (2, 4, 2, 7, 8), (1, 6, 1, 9, 2)];

#[test]
fn explicit_forward_and_backward_match_autodiff_through_the_naive_attention() {
    let device = exact_device();
    for (b, h, kv, t, d) in SHAPES {
        let scale = 1.0 / (d as f32).sqrt();
        let (q, k, v) = (
            random::<Ad, 4>([b, h, t, d], F64, 11, "q"),
            random([b, kv, t, d], F64, 11, "k"),
            random([b, kv, t, d], F64, 11, "v"),
        );
        let grad_out = random::<Exact, 4>([b, h, t, d], F64, 11, "grad_out");
        let mask = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &device).unsqueeze::<4>();
        let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
        let out = naive_attention(q.clone(), k.clone(), v.clone(), mask, scale, false);
        let grads = (out.clone() * Tensor::from_inner(grad_out.clone())).sum().backward();
        let want = [q.grad(&grads).unwrap(), k.grad(&grads).unwrap(), v.grad(&grads).unwrap()];

        let (qi, ki, vi) = (q.inner(), k.inner(), v.inner());
        let (out2, lse) = naive_attention_forward(qi.clone(), ki.clone(), vi.clone(), scale);
        assert_close("out", &values(out2.clone()), &values(out.inner()));
        assert_eq!(lse.dims(), [b, h, t]);
        // Row 0 sees only key 0: lse = scale · q0·k0 (GQA: head i reads kv head i / rep).
        let q0 = qi.clone().slice([0..1, 0..1, 0..1, 0..d]);
        let k0 = ki.clone().slice([0..1, 0..1, 0..1, 0..d]);
        let first = values((q0 * k0).sum() * scale);
        assert_close("lse[0]", &values(lse.clone())[..1], &first);
        let (dq, dk, dv) = naive_attention_backward(qi, ki, vi, out2, lse, grad_out, scale);
        for (name, got, want) in [("dq", dq, &want[0]), ("dk", dk, &want[1]), ("dv", dv, &want[2])] {
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert_close(name, &values(got), &values(want.clone()));
        }
    }
}

/// `t` in f32 (rounding it) and the same values in f64 (exactly).
fn f32_and_f64<const D: usize>(t: Tensor<Cpu, D>) -> (Tensor<Cpu, D>, Tensor<Exact, D>) {
    let exact = Tensor::from_data(t.to_data().convert::<f64>(), (&Default::default(), F64));
    (t, exact)
}

#[test]
fn the_explicit_equations_in_f32_stay_within_their_rounding_bound_of_exact_arithmetic() {
    exact_device();
    let shapes = SHAPES.into_iter().chain([(1, 4, 2, 33, 16), (1, 2, 1, 64, 32)]);
    let mut worst: f64 = 0.0;
    for (b, h, kv, t, d) in shapes {
        let scale = 1.0 / (d as f32).sqrt();
        let (q, q64) = f32_and_f64(random::<Cpu, 4>([b, h, t, d], F32, 13, "q"));
        let (k, k64) = f32_and_f64(random::<Cpu, 4>([b, kv, t, d], F32, 13, "k"));
        let (v, v64) = f32_and_f64(random::<Cpu, 4>([b, kv, t, d], F32, 13, "v"));
        let (d_out, d_out64) = f32_and_f64(random::<Cpu, 4>([b, h, t, d], F32, 13, "d_out"));

        let (out, lse) = naive_attention_forward(q.clone(), k.clone(), v.clone(), scale);
        let grads = naive_attention_backward(q, k, v, out.clone(), lse.clone(), d_out, scale);
        let (out64, lse64) = naive_attention_forward(q64.clone(), k64.clone(), v64.clone(), scale);
        let exact = naive_attention_backward(
            q64.clone(),
            k64.clone(),
            v64.clone(),
            out64.clone(),
            lse64.clone(),
            d_out64.clone(),
            scale,
        );
        let bound = bounds::f32_rounding_bounds(q64, k64, v64, d_out64, scale);

        let shape = format!("{b}×{h}/{kv}×{t}×{d}");
        let check = |name: &str, got: Vec<f64>, exact: Vec<f64>, bound: Vec<f64>| {
            bounds::Bounds::check(&format!("{name} at {shape}"), &got, &exact, &bound)
        };
        worst = worst
            .max(check("out", values(out), values(out64), values(bound.out)))
            .max(check("lse", values(lse), values(lse64), values(bound.lse)))
            .max(check("dq", values(grads.0), values(exact.0), values(bound.dq)))
            .max(check("dk", values(grads.1), values(exact.1), values(bound.dk)))
            .max(check("dv", values(grads.2), values(exact.2), values(bound.dv)));
    }
    eprintln!("largest f32 error as a fraction of its rounding bound: {worst:.3}");
}

#[test]
fn the_fused_operation_under_autodiff_gives_the_naive_gradients() {
    let device = exact_device();
    for (b, h, kv, t, d) in SHAPES {
        let scale = 1.0 / (d as f32).sqrt();
        let q = random::<Ad, 4>([b, h, t, d], F64, 12, "q").require_grad();
        let k = random::<Ad, 4>([b, kv, t, d], F64, 12, "k").require_grad();
        let v = random::<Ad, 4>([b, kv, t, d], F64, 12, "v").require_grad();
        let weight = random::<Ad, 4>([b, h, t, d], F64, 12, "weight");
        let mask = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &device).unsqueeze::<4>();
        let naive = naive_attention(q.clone(), k.clone(), v.clone(), mask, scale, false);
        let naive_grads = (naive.clone() * weight.clone()).sum().backward();
        let out = fused_attention(q.clone(), k.clone(), v.clone(), scale);
        assert_close("out", &values(out.clone()), &values(naive));
        let grads = (out * weight).sum().backward();
        for (name, x) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            assert_close(name, &values(x.grad(&grads).unwrap()), &values(x.grad(&naive_grads).unwrap()));
        }
    }
}

fn tiny_config(kv_heads: usize) -> LlamaConfig {
    LlamaConfig::new(61, 16, 24, 2, 4, kv_heads, 32)
}

/// Loss and the gradient of every parameter in canonical order, by plain autodiff or by
/// the staged recomputation, all in f64.
fn loss_and_grads(model: &Llama<Ad>, tokens: &[u32], batch: usize, seq: usize, staged: bool) -> (f64, Vec<Vec<f64>>) {
    use burn::optim::{GradientsAccumulator, GradientsParams};
    use tessera_model::params::ParamRef;
    let mask = vec![true; tokens.len()];
    let batch = TokenBatch { tokens, loss_mask: &mask, batch_size: batch, seq_len: seq };
    let mut value = f64::NAN;
    let grads = if staged {
        let mut accum = GradientsAccumulator::new();
        tessera_model::recompute::loss_and_grads(
            model,
            batch,
            |loss| {
                value = values(loss)[0];
                Ok::<f32, ()>(value as f32)
            },
            |grads| accum.accumulate(model, grads),
        )
        .unwrap();
        accum.grads()
    } else {
        let loss = causal_lm_loss(model, batch);
        value = values(loss.clone())[0];
        GradientsParams::from_grads(loss.backward(), model)
    };
    let all = (0..model.num_params())
        .map(|i| match model.param(i).unwrap() {
            ParamRef::Matrix(p) => values(grads.get::<Exact, 2>(p.id).expect("a gradient")),
            ParamRef::Vector(p) => values(grads.get::<Exact, 1>(p.id).expect("a gradient")),
        })
        .collect();
    (value, all)
}

#[test]
fn recomputed_blocks_and_the_fused_operation_leave_loss_and_gradients_unchanged() {
    let device = exact_device();
    let (batch, seq) = (2, 11);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 37 + 5) % 61) as u32).collect();
    for kv_heads in [4, 2] {
        let model = tessera_model::init::initialize::<Ad>(&tiny_config(kv_heads), 3, &device).unwrap();
        assert_eq!(model.embed_tokens.val().dtype(), F64, "the check needs f64");
        let (loss, reference) = loss_and_grads(&model, &tokens, batch, seq, false);
        assert!(loss.is_finite() && loss > 0.0);
        for (fused, staged) in [(false, true), (true, false), (true, true)] {
            let compute = ResolvedCompute { fused_attention: fused, recompute_activations: staged, ..FP32_NAIVE };
            let model = model.clone().with_compute(compute);
            let (l, grads) = loss_and_grads(&model, &tokens, batch, seq, staged);
            assert_close(&format!("{compute}: loss"), &[l], &[loss]);
            for (i, (g, r)) in grads.iter().zip(&reference).enumerate() {
                assert_close(&format!("{compute}, kv {kv_heads}, parameter {i}"), g, r);
            }
        }
    }
}
