//! Activation recomputation per decoder block. The forward pass runs without autodiff and
//! keeps only each block's input; the backward then goes stage by stage from the end: the
//! head (final norm, `lm_head`, loss) under autodiff from the last block's output, then each
//! block from the last, rebuilt under autodiff from its kept input and differentiated with
//! the gradient of its output, then the embedding. Activation memory is one block's plus
//! the kept inputs, for one more forward pass of the blocks.
//!
//! Why stages and not a custom autodiff operation that re-runs the block inside the
//! backward: burn 0.21's autodiff cannot run a backward pass inside another one. After
//! each backward, `GraphMutexClient::cleanup_orphaned_entries` locks every graph, including
//! the one whose backward is running on the same thread, and deadlocks. Each stage here
//! is its own top-level backward.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::llama::Llama;
use crate::ops::TrainBackend;
use crate::train::{TokenBatch, batch_tensors, lm_loss};

/// The batch's loss (through `check_loss`, which may refuse it before any gradient is
/// computed) and its gradients, handed to `add_grads` stage by stage (each parameter's
/// gradient once, complete).
pub fn loss_and_grads<B: TrainBackend, E>(
    model: &Llama<B>,
    batch: TokenBatch<'_>,
    check_loss: impl FnOnce(Tensor<B, 1>) -> Result<f32, E>,
    mut add_grads: impl FnMut(GradientsParams),
) -> Result<f32, E> {
    let device = model.embed_tokens.val().device();
    let (inputs, targets) = batch_tensors::<B>(batch, &device);
    let seq = inputs.dims()[1];

    // Forward without a graph, keeping each block's input.
    let plain = model.valid();
    let plain_ctx = plain.block_context(seq, &device);
    let mut x = plain.embed(inputs.clone().inner());
    let mut kept = Vec::with_capacity(plain.layers.len());
    for layer in &plain.layers {
        kept.push(x.clone());
        x = layer.forward(x, &plain_ctx);
    }

    // The head, from the last block's output.
    let last = Tensor::<B, 3>::from_inner(x).require_grad();
    let loss = lm_loss(model.head(last.clone()), targets);
    let value = check_loss(loss.clone())?;
    let mut grads = loss.backward();
    let mut grad_out = last.grad_remove(&mut grads);
    add_grads(GradientsParams::from_module(&mut grads, model));

    // Each block from the last: rebuilt from its input, differentiated with its output's
    // gradient (Σ out ∘ dOut has the vector–Jacobian products as its gradients).
    let ctx = model.block_context(seq, &device);
    for (layer, input) in model.layers.iter().zip(kept).rev() {
        let Some(d_out) = grad_out.take() else { break };
        let input = Tensor::<B, 3>::from_inner(input).require_grad();
        let out = layer.forward(input.clone(), &ctx);
        let mut grads = (out * Tensor::from_inner(d_out)).sum().backward();
        grad_out = input.grad_remove(&mut grads);
        add_grads(GradientsParams::from_module(&mut grads, layer));
    }

    // The embedding.
    if let Some(d_embed) = grad_out {
        let mut grads = (model.embed(inputs) * Tensor::from_inner(d_embed)).sum().backward();
        add_grads(GradientsParams::from_module(&mut grads, model));
    }
    Ok(value)
}
