//! `LlamaForCausalLM` as in HF transformers: token embedding, RMSNorm, rotary position
//! embedding (HF's rotate-half convention), multi-head attention with optional grouped KV
//! heads and a causal mask, SwiGLU MLP, final norm, untied `lm_head`.
//!
//! Weights keep HF's layout (`[out_features, in_features]` for projections), so a
//! parameter's flat row-major index is the protocol's slice index and HF checkpoints map
//! one to one.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData};
use tessera_core::model::{ModelShape, ResolvedCompute};

use crate::ops::{BlockContext, ModelBackend, causal_attention};

/// The architecture, with HF `LlamaConfig` names.
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
}

impl From<&ModelShape> for LlamaConfig {
    fn from(s: &ModelShape) -> Self {
        Self {
            vocab_size: s.vocab_size,
            hidden_size: s.hidden_size,
            intermediate_size: s.intermediate_size,
            num_hidden_layers: s.num_hidden_layers,
            num_attention_heads: s.num_attention_heads,
            num_key_value_heads: s.num_key_value_heads,
            max_position_embeddings: s.max_position_embeddings,
            rope_theta: s.rope_theta,
            rms_norm_eps: s.rms_norm_eps,
        }
    }
}

impl LlamaConfig {
    pub fn shape(&self) -> ModelShape {
        ModelShape {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            max_position_embeddings: self.max_position_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A model with all-zero weights and unit norms, to be filled by `init::initialize`
    /// or a checkpoint. (The values the network starts from come from `init`, not from
    /// the backend's RNG, so every miner starts identical on any backend.)
    pub fn init_zeros<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let (h, kv, i, v) =
            (self.hidden_size, self.num_key_value_heads * self.head_dim(), self.intermediate_size, self.vocab_size);
        let zeros = |d0: usize, d1: usize| Param::from_tensor(Tensor::<B, 2>::zeros([d0, d1], device));
        let ones = |d: usize| Param::from_tensor(Tensor::<B, 1>::ones([d], device));
        let layers = (0..self.num_hidden_layers)
            .map(|_| DecoderLayer {
                q_proj: zeros(h, h),
                k_proj: zeros(kv, h),
                v_proj: zeros(kv, h),
                o_proj: zeros(h, h),
                gate_proj: zeros(i, h),
                up_proj: zeros(i, h),
                down_proj: zeros(h, i),
                input_layernorm: ones(h),
                post_attention_layernorm: ones(h),
            })
            .collect();
        Llama {
            embed_tokens: zeros(v, h),
            layers,
            norm: ones(h),
            lm_head: zeros(v, h),
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim(),
            max_positions: self.max_position_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            compute: FP32_NAIVE,
            inference: false,
        }
    }
}

impl<B: AutodiffBackend> Llama<B> {
    /// The model with every linear weight cast to bf16 once, each a new leaf under its
    /// parameter's id (embedding and norms stay the f32 masters): under bf16-mixed, the
    /// micro-batches of a step and the recomputed forwards share these copies instead of
    /// casting every weight at each use. Gradients of these weights come back in bf16
    /// (`crate::train` casts them to f32, as the per-use cast's backward did).
    pub fn with_bf16_linears(&self) -> Self {
        let cast = |p: &Param<Tensor<B, 2>>| {
            let value = p.val();
            let tracked = value.is_require_grad();
            let copy = Tensor::<B, 2>::from_inner(value.inner().cast(FloatDType::BF16));
            Param::initialized(p.id, copy.set_require_grad(tracked))
        };
        let mut copy = self.clone();
        for (layer, from) in copy.layers.iter_mut().zip(&self.layers) {
            for (w, src) in [
                (&mut layer.q_proj, &from.q_proj),
                (&mut layer.k_proj, &from.k_proj),
                (&mut layer.v_proj, &from.v_proj),
                (&mut layer.o_proj, &from.o_proj),
                (&mut layer.gate_proj, &from.gate_proj),
                (&mut layer.up_proj, &from.up_proj),
                (&mut layer.down_proj, &from.down_proj),
            ] {
                *w = cast(src);
            }
        }
        copy.lm_head = cast(&self.lm_head);
        copy
    }
}

/// fp32 products and naive attention: every backend's default.
pub const FP32_NAIVE: ResolvedCompute =
    ResolvedCompute { bf16_matmul: false, fused_attention: false, recompute_activations: false };

/// One transformer block (HF `LlamaDecoderLayer`).
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub q_proj: Param<Tensor<B, 2>>,
    pub k_proj: Param<Tensor<B, 2>>,
    pub v_proj: Param<Tensor<B, 2>>,
    pub o_proj: Param<Tensor<B, 2>>,
    pub gate_proj: Param<Tensor<B, 2>>,
    pub up_proj: Param<Tensor<B, 2>>,
    pub down_proj: Param<Tensor<B, 2>>,
    pub input_layernorm: Param<Tensor<B, 1>>,
    pub post_attention_layernorm: Param<Tensor<B, 1>>,
}

/// The whole causal language model.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: Param<Tensor<B, 1>>,
    pub lm_head: Param<Tensor<B, 2>>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    max_positions: usize,
    rope_theta: f64,
    rms_norm_eps: f64,
    /// Precision, attention kernel and recomputation: how this node computes, not part of
    /// the model (never saved; fp32 and naive attention unless set).
    #[module(skip)]
    compute: ResolvedCompute,
    /// No gradient is taken through this copy ([`Llama::for_inference`]).
    #[module(skip)]
    inference: bool,
}

/// `x @ w^T` for `x: [B, T, in]` and an HF-layout weight `w: [out, in]`; with `bf16`, both
/// operands are cast to bf16 (the product accumulates in f32 on the backends that have
/// bf16) and the result comes back as f32, as under torch's bf16 autocast. The weight
/// itself stays f32 (the master copy AdamW updates); the cast's backward casts the
/// gradient back to f32.
///
/// One 2-D product over all `B·T` tokens, as torch's `nn.Linear` does: the weight's
/// gradient is then one GEMM too (a `[B, T, in] × [1, in, out]` product made it `B`
/// batched GEMMs and a broadcast sum).
fn linear<B: Backend>(x: Tensor<B, 3>, w: &Param<Tensor<B, 2>>, bf16: bool) -> Tensor<B, 3> {
    let [batch, seq, inputs] = x.dims();
    let x = x.reshape([batch * seq, inputs]);
    let w = w.val().transpose();
    let y = if bf16 {
        // A weight already cast for the step ([`Llama::with_bf16_linears`]) is used as is.
        let w = if w.dtype() == DType::BF16 { w } else { w.cast(FloatDType::BF16) };
        x.cast(FloatDType::BF16).matmul(w).cast(FloatDType::F32)
    } else {
        x.matmul(w)
    };
    let outputs = y.dims()[1];
    y.reshape([batch, seq, outputs])
}

fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: &Param<Tensor<B, 1>>, eps: f64) -> Tensor<B, 3> {
    let rms = (x.clone().square().mean_dim(2) + eps).sqrt();
    (x / rms) * w.val().unsqueeze::<3>()
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves on the last dim (HF `rotate_half`).
fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.slice([0..b, 0..h, 0..t, d / 2..d]);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

impl<B: ModelBackend> DecoderLayer<B> {
    /// The block on `x: [B, T, hidden]`: attention and SwiGLU MLP, each pre-normed with a
    /// residual.
    pub(crate) fn forward(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let bf16 = ctx.compute.bf16_matmul;
        let h = rms_norm(x.clone(), &self.input_layernorm, ctx.rms_norm_eps);
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, ctx.head_dim]).swap_dims(1, 2);
        let q = heads(linear(h.clone(), &self.q_proj, bf16), ctx.num_heads);
        let k = heads(linear(h.clone(), &self.k_proj, bf16), ctx.num_kv_heads);
        let v = heads(linear(h, &self.v_proj, bf16), ctx.num_kv_heads);
        let q = q.clone() * ctx.cos.clone() + rotate_half(q) * ctx.sin.clone();
        let k = k.clone() * ctx.cos.clone() + rotate_half(k) * ctx.sin.clone();
        // bf16 operands for a kernel that takes them, as torch's autocast gives SDPA.
        let attn = if bf16 && (ctx.compute.fused_attention || (ctx.inference && B::has_inference_attention())) {
            let cast = |t: Tensor<B, 4>| t.cast(FloatDType::BF16);
            causal_attention(cast(q), cast(k), cast(v), ctx).cast(FloatDType::F32)
        } else {
            causal_attention(q, k, v, ctx)
        };
        let attn = attn.swap_dims(1, 2).reshape([batch, seq, hidden]);
        let x = x + linear(attn, &self.o_proj, bf16);
        let h = rms_norm(x.clone(), &self.post_attention_layernorm, ctx.rms_norm_eps);
        let mlp = silu(linear(h.clone(), &self.gate_proj, bf16)) * linear(h, &self.up_proj, bf16);
        x + linear(mlp, &self.down_proj, bf16)
    }
}

impl<B: Backend> Llama<B> {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// How the forward pass computes (precision, attention kernel, recomputation).
    pub fn compute(&self) -> ResolvedCompute {
        self.compute
    }

    /// The same model for forward passes only (evaluation, scoring): where the backend
    /// has a forward-only attention kernel ([`crate::ops::ModelBackend::has_inference_attention`]),
    /// it serves them. Never for a model a gradient is taken through.
    pub fn for_inference(mut self) -> Self {
        self.inference = true;
        self
    }

    /// The same model computing as `compute` says.
    pub fn with_compute(mut self, compute: ResolvedCompute) -> Self {
        self.compute = compute;
        self
    }

    /// Rotary tables `(cos, sin)`, each `[1, 1, T, head_dim]`, as HF computes them.
    fn rope(&self, seq_len: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * self.head_dim);
        let mut sin = Vec::with_capacity(seq_len * self.head_dim);
        let inv_freq: Vec<f64> =
            (0..half).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64)).collect();
        for pos in 0..seq_len {
            // emb = cat(freqs, freqs)
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = pos as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [1, 1, seq_len, self.head_dim];
        (Tensor::from_data(TensorData::new(cos, shape), device), Tensor::from_data(TensorData::new(sin, shape), device))
    }
}

impl<B: ModelBackend> Llama<B> {
    /// Logits `[B, T, vocab]` for token ids `[B, T]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let ctx = self.block_context(tokens.dims()[1], &tokens.device());
        let mut x = self.embed(tokens);
        for layer in &self.layers {
            x = layer.forward(x, &ctx);
        }
        self.head(x)
    }

    /// The embeddings `[B, T, hidden]` of token ids `[B, T]`.
    pub(crate) fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let flat = tokens.reshape([batch * seq]);
        self.embed_tokens.val().select(0, flat).reshape([batch, seq, self.num_heads * self.head_dim])
    }

    /// What every block of a forward pass over `seq` positions shares.
    pub(crate) fn block_context(&self, seq: usize, device: &B::Device) -> BlockContext<B> {
        let (cos, sin) = self.rope(seq, device);
        BlockContext {
            cos,
            sin,
            // tril_mask marks the positions to *mask*: those above the diagonal.
            mask: Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, device).unsqueeze::<4>(),
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            compute: self.compute,
            inference: self.inference,
        }
    }

    /// Final norm and `lm_head`: logits of the last block's output.
    pub(crate) fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = rms_norm(x, &self.norm, self.rms_norm_eps);
        linear(x, &self.lm_head, self.compute.bf16_matmul)
    }
}
