//! The CubeCL kernels run through burn's wgpu backend (on a machine without a GPU, Mesa's
//! lavapipe software Vulkan device) against the O(T²) reference: forward `out` and `lse`,
//! backward `dq`, `dk`, `dv`, on `CubeBackend` and through the `Fusion` wrapper.
//!
//! Only f32: WGSL has no bf16, so the bf16 instantiation of the kernels (same code, tiles in
//! bf16) is compiled for CUDA but not run here.

use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_fusion::Fusion;

use super::AttentionShape;
use super::reference::{Forward, Gradients, max_error_ratio, naive_backward, naive_forward, test_values};
use crate::ops::ModelBackend;

type Cube = CubeBackend<WgpuRuntime, f32, i32, u32>;
type Fused = Fusion<Cube>;

fn shape(batch: usize, heads: usize, kv_heads: usize, seq: usize, head_dim: usize) -> AttentionShape {
    AttentionShape { batch, heads, kv_heads, seq, head_dim }
}

/// Causal, GQA and MQA, lengths not multiples of any block, several blocks, head dims
/// that do and do not divide by the block, both tile sizes.
fn cases() -> Vec<AttentionShape> {
    vec![
        shape(1, 1, 1, 1, 8),
        shape(1, 2, 2, 16, 16),
        shape(2, 4, 2, 13, 16),
        shape(1, 4, 1, 37, 32),
        shape(1, 2, 1, 21, 12),
        shape(1, 2, 2, 5, 64),
        shape(1, 1, 1, 70, 8),
        // 4 tiles of 16 × 128 f32 exceed lavapipe's 32 KiB: the backward takes 8 × 8 tiles.
        shape(1, 4, 2, 23, 128),
    ]
}

fn tensor<B: Backend>(values: Vec<f32>, dims: Vec<usize>, device: &B::Device) -> FloatTensor<B> {
    Tensor::<B, 4>::from_data(TensorData::new(values, dims), device).into_primitive().tensor()
}

fn values<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    let data = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).into_data();
    data.convert::<f32>().to_vec::<f32>().unwrap_or_else(|e| panic!("reading back: {e:?}"))
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    grad_out: Vec<f32>,
}

fn inputs(s: &AttentionShape, seed: u64) -> Inputs {
    // Scaled so softmax rows are peaked and the online rescaling matters.
    let up = |x: Vec<f32>| x.into_iter().map(|x| 3.0 * x).collect::<Vec<_>>();
    Inputs {
        q: up(test_values(s.q_len(), seed)),
        k: up(test_values(s.kv_len(), seed + 1)),
        v: test_values(s.kv_len(), seed + 2),
        grad_out: test_values(s.q_len(), seed + 3),
    }
}

/// Runs the backend's fused forward and backward on flat inputs; returns flat results.
fn run<B: ModelBackend>(s: &AttentionShape, x: &Inputs, scale: f32) -> (Forward, Gradients) {
    let device = B::Device::default();
    let q_dims = vec![s.batch, s.heads, s.seq, s.head_dim];
    let kv_dims = vec![s.batch, s.kv_heads, s.seq, s.head_dim];
    let q = tensor::<B>(x.q.clone(), q_dims.clone(), &device);
    let k = tensor::<B>(x.k.clone(), kv_dims.clone(), &device);
    let v = tensor::<B>(x.v.clone(), kv_dims, &device);
    let (out, lse) = B::fused_attention_forward(q.clone(), k.clone(), v.clone(), scale);
    let grad_out = tensor::<B>(x.grad_out.clone(), q_dims, &device);
    let (dq, dk, dv) = B::fused_attention_backward(q, k, v, out.clone(), lse.clone(), grad_out, scale);
    (
        Forward { out: values::<B>(out), lse: values::<B>(lse) },
        Gradients { dq: values::<B>(dq), dk: values::<B>(dk), dv: values::<B>(dv) },
    )
}

fn check<B: ModelBackend>(name: &str) {
    assert!(B::has_fused_attention());
    for (n, s) in cases().iter().enumerate() {
        let x = inputs(s, 100 + n as u64);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let (fwd, grads) = run::<B>(s, &x, scale);
        let want = naive_forward(s, &x.q, &x.k, &x.v, scale).unwrap();
        let want_grads = naive_backward(s, &x.q, &x.k, &x.v, &x.grad_out, scale).unwrap();
        for (what, got, want, atol, rtol) in [
            ("out", &fwd.out, &want.out, 1e-5, 1e-4),
            ("lse", &fwd.lse, &want.lse, 1e-5, 1e-5),
            ("dq", &grads.dq, &want_grads.dq, 1e-4, 1e-3),
            ("dk", &grads.dk, &want_grads.dk, 1e-4, 1e-3),
            ("dv", &grads.dv, &want_grads.dv, 1e-4, 1e-3),
        ] {
            assert_eq!(got.len(), want.len(), "{name} {s:?} {what}: length");
            let e = max_error_ratio(got, want, atol, rtol);
            assert!(e <= 1.0, "{name} {s:?} {what}: error ratio {e} (atol {atol}, rtol {rtol})");
        }
    }
}

#[test]
fn cube_kernels_match_the_reference() {
    let _ = WgpuDevice::default();
    check::<Cube>("CubeBackend<wgpu>");
}

#[test]
fn fusion_kernels_match_the_reference() {
    check::<Fused>("Fusion<CubeBackend<wgpu>>");
}

#[test]
fn bad_shapes_are_refused() {
    let device = WgpuDevice::default();
    let q = tensor::<Cube>(vec![0.0; 24], vec![1, 3, 2, 4], &device);
    let k = tensor::<Cube>(vec![0.0; 16], vec![1, 2, 2, 4], &device);
    let err = super::launch::forward(q.clone(), k.clone(), k.clone(), 1.0).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("3 query heads cannot share 2 key/value heads evenly"));
    let k3 = tensor::<Cube>(vec![0.0; 12], vec![1, 1, 3, 4], &device);
    let err = super::launch::forward(q, k3.clone(), k3, 1.0).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("k has shape [1, 1, 3, 4], expected [1, 1, 2, 4]"));
}

/// The whole training path: `Autodiff<Fusion<CubeBackend>>` (the shape of burn's CUDA
/// training backend) runs the forward kernel and, from `loss.backward()`, the backward
/// kernels through the model's custom autodiff operation.
#[test]
fn autodiff_over_fusion_takes_the_kernels_gradients() {
    use burn::backend::Autodiff;
    type Ad = Autodiff<Fused>;
    let s = shape(2, 4, 2, 19, 16);
    let x = inputs(&s, 7);
    let scale = 0.25;
    let device = WgpuDevice::default();
    let q_dims = [s.batch, s.heads, s.seq, s.head_dim];
    let kv_dims = [s.batch, s.kv_heads, s.seq, s.head_dim];
    let leaf = |v: &[f32], dims: [usize; 4]| {
        Tensor::<Ad, 4>::from_data(TensorData::new(v.to_vec(), dims), &device).require_grad()
    };
    let (q, k, v) = (leaf(&x.q, q_dims), leaf(&x.k, kv_dims), leaf(&x.v, kv_dims));
    let out = crate::ops::fused_attention(q.clone(), k.clone(), v.clone(), scale);
    let weight = Tensor::<Ad, 4>::from_data(TensorData::new(x.grad_out.clone(), q_dims), &device);
    let grads = (out.clone() * weight).sum().backward();
    let want = naive_forward(&s, &x.q, &x.k, &x.v, scale).unwrap();
    let want_grads = naive_backward(&s, &x.q, &x.k, &x.v, &x.grad_out, scale).unwrap();
    let read = |t: Option<Tensor<Fused, 4>>| values::<Fused>(t.expect("a gradient").into_primitive().tensor());
    for (what, got, want, atol, rtol) in [
        ("out", values::<Fused>(out.inner().into_primitive().tensor()), &want.out, 1e-5, 1e-4),
        ("dq", read(q.grad(&grads)), &want_grads.dq, 1e-4, 1e-3),
        ("dk", read(k.grad(&grads)), &want_grads.dk, 1e-4, 1e-3),
        ("dv", read(v.grad(&grads)), &want_grads.dv, 1e-4, 1e-3),
    ] {
        let e = max_error_ratio(&got, want, atol, rtol);
        assert!(e <= 1.0, "autodiff {what}: error ratio {e}");
    }
}

/// burn's attention operation, which serves forward passes without a gradient on CubeCL
/// backends (`Llama::for_inference`), computes the reference's output on every case,
/// grouped KV heads included (repeated before the call).
#[test]
fn the_inference_attention_matches_the_reference() {
    assert!(Fused::has_inference_attention() && Cube::has_inference_attention());
    let device = WgpuDevice::default();
    for (n, s) in cases().iter().enumerate() {
        let x = inputs(s, 200 + n as u64);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let q_dims = vec![s.batch, s.heads, s.seq, s.head_dim];
        let kv_dims = vec![s.batch, s.kv_heads, s.seq, s.head_dim];
        let q = Tensor::<Fused, 4>::from_data(TensorData::new(x.q.clone(), q_dims), &device);
        let k = Tensor::<Fused, 4>::from_data(TensorData::new(x.k.clone(), kv_dims.clone()), &device);
        let v = Tensor::<Fused, 4>::from_data(TensorData::new(x.v.clone(), kv_dims), &device);
        let out = crate::ops::inference_attention(q, k, v, s.heads / s.kv_heads);
        let got = values::<Fused>(out.into_primitive().tensor());
        let want = naive_forward(s, &x.q, &x.k, &x.v, scale).unwrap();
        assert_eq!(got.len(), want.out.len(), "{s:?}: length");
        let e = max_error_ratio(&got, &want.out, 1e-5, 1e-4);
        assert!(e <= 1.0, "{s:?}: error ratio {e}");
    }
}
