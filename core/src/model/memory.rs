//! A memory model of one training step: what the GPU must hold for weights, gradients,
//! AdamW and the activations autodiff keeps for the backward pass, for a batch of
//! `batch × seq` tokens under the [`ResolvedCompute`] choices. It counts the tensors
//! tessera's Llama saves (burn's autodiff keeps every operand a backward needs), so it is
//! a planning figure: the allocator's pool and transient workspaces come on top, and
//! `scripts/gpu_bench.sh` measures the real peak.

use super::{ModelShape, ResolvedCompute};

const F32: u64 = 4;
const BF16: u64 = 2;

/// Bytes of one training step, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMemory {
    /// fp32 master weights.
    pub weights: u64,
    /// The step's gradients and the accumulator they are added into (fp32).
    pub gradients: u64,
    /// AdamW's two fp32 moments.
    pub optimizer: u64,
    /// bf16 copies of the weights the products saved for the backward (bf16-mixed only).
    pub weight_casts: u64,
    /// Activations saved across all decoder blocks, attention scores excluded.
    pub block_activations: u64,
    /// Saved `[batch, heads, seq, seq]` attention scores (naive attention only).
    pub attention_scores: u64,
    /// Final norm, logits and their log-softmax.
    pub head: u64,
    /// One block's activations rebuilt in the backward (recomputation only).
    pub recompute_workspace: u64,
}

impl StepMemory {
    pub fn total(&self) -> u64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.weight_casts
            + self.block_activations
            + self.attention_scores
            + self.head
            + self.recompute_workspace
    }
}

/// What one decoder block saves, in bytes: `(activations, attention scores)`.
fn block_bytes(shape: &ModelShape, tokens: u64, batch: u64, seq: u64, compute: ResolvedCompute) -> (u64, u64) {
    let (h, i) = (shape.hidden_size as u64, shape.intermediate_size as u64);
    let kvd = (shape.num_key_value_heads * shape.head_dim()) as u64;
    let heads = shape.num_attention_heads as u64;
    let n = tokens;
    let scores = batch * heads * seq * seq;
    // Kept in f32 whatever the precision: both RMSNorms (input, rms, normalised, scaled),
    // the rotary products (q, k and their rotated halves), SwiGLU's gate, sigmoid and
    // product operands.
    let f32_always = 4 * n * h + 2 * n * h + 2 * n * kvd + 4 * n * i;
    // The operands of the four projections' and the MLP's products: the normed inputs, the
    // attention output and the MLP product; bf16 copies under bf16-mixed.
    let product_inputs = 3 * n * h + n * i;
    let width = if compute.bf16_matmul { BF16 } else { F32 };
    let (attention, saved_scores) = if compute.fused_attention {
        // q, k, v and the output in the kernel's type, and f32 log-sum-exp rows.
        ((2 * n * h + 2 * n * kvd) * width + batch * heads * seq * F32, 0)
    } else {
        // q and the repeated k and v as product operands; the softmax's exp (f32), and its
        // output as the product's operand with v (f32, or its bf16 copy under bf16-mixed).
        let probs = scores * F32 + scores * width;
        (3 * n * h * width, probs)
    };
    (f32_always * F32 + product_inputs * width + attention, saved_scores)
}

/// Parameters of the Llama (embedding, untied head, blocks, final norm).
fn parameters(shape: &ModelShape) -> u64 {
    let (v, h, i) = (shape.vocab_size as u64, shape.hidden_size as u64, shape.intermediate_size as u64);
    let kvd = (shape.num_key_value_heads * shape.head_dim()) as u64;
    let block = 2 * h * h + 2 * h * kvd + 3 * h * i + 2 * h;
    2 * v * h + shape.num_hidden_layers as u64 * block + h
}

/// The step's memory for `batch` sequences of `seq` tokens.
pub fn step_memory(shape: &ModelShape, batch: usize, seq: usize, compute: ResolvedCompute) -> StepMemory {
    let params = parameters(shape);
    let (batch, seq) = (batch as u64, seq as u64);
    let tokens = batch * seq;
    let layers = shape.num_hidden_layers as u64;
    let (h, vocab) = (shape.hidden_size as u64, shape.vocab_size as u64);
    let (block, scores) = block_bytes(shape, tokens, batch, seq, compute);
    let (block_activations, attention_scores, recompute_workspace) = if compute.recompute_activations {
        // Only each block's input is kept; one block is rebuilt at a time.
        (layers * tokens * h * F32, 0, block + scores)
    } else {
        (layers * block, layers * scores, 0)
    };
    StepMemory {
        weights: params * F32,
        gradients: 2 * params * F32,
        optimizer: 2 * params * F32,
        weight_casts: if compute.bf16_matmul { params * BF16 } else { 0 },
        block_activations,
        attention_scores,
        head: 3 * tokens * h * F32 + 3 * tokens * vocab * F32,
        recompute_workspace,
    }
}

/// The README's table: GiB per step of `shape` for batches of `seq` tokens under the
/// four configurations the GPU benchmark runs.
pub fn memory_table(shape: &ModelShape, seq: usize, batches: &[usize]) -> String {
    let plain = ResolvedCompute { bf16_matmul: false, fused_attention: false, recompute_activations: false };
    let configs = [
        ("fp32", plain),
        ("bf16-mixed", ResolvedCompute { bf16_matmul: true, ..plain }),
        ("+ fused attention", ResolvedCompute { bf16_matmul: true, fused_attention: true, ..plain }),
        ("+ recomputation", ResolvedCompute { bf16_matmul: true, fused_attention: true, recompute_activations: true }),
    ];
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut out = format!("| batch × {seq} |");
    for (name, _) in &configs {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str(" of which scores (naive) |\n|---|");
    out.push_str(&"---:|".repeat(configs.len() + 1));
    out.push('\n');
    for &batch in batches {
        out.push_str(&format!("| {batch} |"));
        for (_, compute) in &configs {
            out.push_str(&format!(" {:.1} |", gib(step_memory(shape, batch, seq, *compute).total())));
        }
        out.push_str(&format!(" {:.1} |\n", gib(step_memory(shape, batch, seq, plain).attention_scores)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: ResolvedCompute =
        ResolvedCompute { bf16_matmul: false, fused_attention: false, recompute_activations: false };

    #[test]
    fn each_choice_saves_what_it_should() {
        let shape = ModelShape::seed_1b2();
        let fp32 = step_memory(&shape, 8, 2048, PLAIN);
        // 1.2B parameters: 4.5 GiB of fp32 weights, and the 2 KiB-by-2 KiB scores of 8
        // heads, 16 layers, 8 sequences, two f32 copies: 32 GiB.
        let params = super::super::ParamLayout::llama(&shape).unwrap().total_numel() as u64;
        assert_eq!(parameters(&shape), params);
        assert_eq!(fp32.weights, params * 4);
        assert_eq!(fp32.attention_scores, 16 * 8 * 8 * 2048 * 2048 * 4 * 2);
        let bf16 = step_memory(&shape, 8, 2048, ResolvedCompute { bf16_matmul: true, ..PLAIN });
        assert!(bf16.block_activations < fp32.block_activations);
        assert_eq!(bf16.weight_casts, params * 2);
        let fused = step_memory(&shape, 8, 2048, ResolvedCompute { bf16_matmul: true, fused_attention: true, ..PLAIN });
        assert_eq!(fused.attention_scores, 0);
        let recompute =
            step_memory(&shape, 8, 2048, ResolvedCompute { recompute_activations: true, ..fused_compute() });
        assert!(recompute.block_activations * 4 < fused.block_activations);
        assert!(recompute.total() < fused.total() && fused.total() < bf16.total() && bf16.total() < fp32.total());
        // Activations scale with the batch; weights and optimizer do not.
        let half = step_memory(&shape, 4, 2048, PLAIN);
        assert_eq!(half.optimizer, fp32.optimizer);
        assert_eq!(half.block_activations * 2, fp32.block_activations);
    }

    fn fused_compute() -> ResolvedCompute {
        ResolvedCompute { bf16_matmul: true, fused_attention: true, recompute_activations: false }
    }

    #[test]
    fn the_table_has_a_row_per_batch() {
        let table = memory_table(&ModelShape::seed_1b2(), 2048, &[1, 2, 4, 8, 16]);
        println!("{table}");
        assert_eq!(table.lines().count(), 7, "{table}");
        assert!(table.starts_with("| batch × 2048 | fp32 | bf16-mixed |"));
    }
}
