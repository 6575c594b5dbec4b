//! [`ModelBackend`] for `Autodiff<B>`: the fused attention as one autodiff operation (its
//! backward is B's fused backward).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::ModelBackend;

/// The fused attention's backward: B's fused backward from the saved inputs, output and
/// log-sum-exp rows.
#[derive(Debug)]
struct AttentionBackward;

type AttentionState<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f32);

impl<B: ModelBackend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let (q, k, v, out, lse, scale) = ops.state;
        let (dq, dk, dv) = B::fused_attention_backward(q, k, v, out, lse, grad_out, scale);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn has_fused_attention() -> bool {
        B::has_fused_attention()
    }

    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) =
            B::fused_attention_forward(q.primitive.clone(), k.primitive.clone(), v.primitive.clone(), scale);
        let prep =
            AttentionBackward.prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()]).compute_bound().stateful();
        let out = match prep {
            OpsKind::Tracked(prep) => {
                prep.finish((q.primitive, k.primitive, v.primitive, out.clone(), lse.clone(), scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        // The lse rows are statistics for the backward, not a differentiable output.
        (out, <Self as AutodiffBackend>::from_inner(lse))
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiated again (no second derivatives here).
        let (dq, dk, dv) = B::fused_attention_backward(
            q.primitive,
            k.primitive,
            v.primitive,
            out.primitive,
            lse.primitive,
            grad_out.primitive,
            scale,
        );
        (Self::from_inner(dq), Self::from_inner(dk), Self::from_inner(dv))
    }
}
