//! [`ModelBackend`] for burn's CubeCL backend (CUDA, wgpu) with the fused kernels, and for
//! its `Fusion` wrapper (what `burn::backend::Cuda` is with fusion on): there the attention
//! is a custom operation in the fusion stream that runs the inner backend's kernels on the
//! resolved tensors and registers its outputs back.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::launch;
use crate::ops::ModelBackend;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ModelBackend for CubeBackend<R, F, I, BT> {
    fn has_fused_attention() -> bool {
        true
    }

    fn has_inference_attention() -> bool {
        true
    }

    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // burn's backend API has no error path: a bad shape here is a bug in the caller.
        launch::forward(q, k, v, scale).unwrap_or_else(|e| panic!("fused attention forward: {e}"))
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
        launch::backward(q, k, v, out, lse, grad_out, scale).unwrap_or_else(|e| panic!("fused attention backward: {e}"))
    }
}

/// The forward as a fusion-stream operation: inputs `[q, k, v]`, outputs `[out, lse]`.
#[derive(Clone, Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    scale: f32,
    _b: core::marker::PhantomData<B>,
}

impl<B: FusionBackend + ModelBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ([q, k, v], [out, lse]) = self.desc.as_fixed();
        let (o, l) = B::fused_attention_forward(
            handles.get_float_tensor::<B>(q),
            handles.get_float_tensor::<B>(k),
            handles.get_float_tensor::<B>(v),
            self.scale,
        );
        handles.register_float_tensor::<B>(&out.id, o);
        handles.register_float_tensor::<B>(&lse.id, l);
    }
}

/// The backward as a fusion-stream operation: inputs `[q, k, v, out, lse, grad_out]`,
/// outputs `[dq, dk, dv]`.
#[derive(Clone, Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    scale: f32,
    _b: core::marker::PhantomData<B>,
}

impl<B: FusionBackend + ModelBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ([q, k, v, out, lse, grad_out], [dq, dk, dv]) = self.desc.as_fixed();
        let (gq, gk, gv) = B::fused_attention_backward(
            handles.get_float_tensor::<B>(q),
            handles.get_float_tensor::<B>(k),
            handles.get_float_tensor::<B>(v),
            handles.get_float_tensor::<B>(out),
            handles.get_float_tensor::<B>(lse),
            handles.get_float_tensor::<B>(grad_out),
            self.scale,
        );
        handles.register_float_tensor::<B>(&dq.id, gq);
        handles.register_float_tensor::<B>(&dk.id, gk);
        handles.register_float_tensor::<B>(&dv.id, gv);
    }
}

impl<B: FusionBackend + ModelBackend> ModelBackend for Fusion<B> {
    fn has_fused_attention() -> bool {
        B::has_fused_attention()
    }

    fn has_inference_attention() -> bool {
        B::has_inference_attention()
    }

    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let client = q.client.clone();
        let dims = q.shape.clone();
        let lse_shape = [dims[0], dims[1], dims[2]];
        let streams = OperationStreams::with_inputs([&q, &k, &v]);
        let out = TensorIr::uninit(client.create_empty_handle(), dims, q.dtype);
        let lse = TensorIr::uninit(client.create_empty_handle(), lse_shape.into(), DType::F32);
        let desc =
            CustomOpIr::new("tessera_fused_attention_forward", &[q.into_ir(), k.into_ir(), v.into_ir()], &[out, lse]);
        let op = ForwardOp::<B> { desc: desc.clone(), scale, _b: core::marker::PhantomData };
        let mut outputs = client.register(streams, OperationIr::Custom(desc), op).into_iter();
        match (outputs.next(), outputs.next()) {
            (Some(out), Some(lse)) => (out, lse),
            _ => unreachable!("the forward operation declares two outputs"),
        }
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
        let client = q.client.clone();
        let streams = OperationStreams::with_inputs([&q, &k, &v, &out, &lse, &grad_out]);
        let dq = TensorIr::uninit(client.create_empty_handle(), q.shape.clone(), q.dtype);
        let dk = TensorIr::uninit(client.create_empty_handle(), k.shape.clone(), q.dtype);
        let dv = TensorIr::uninit(client.create_empty_handle(), v.shape.clone(), q.dtype);
        let inputs = [q, k, v, out, lse, grad_out].map(|t| t.into_ir());
        let desc = CustomOpIr::new("tessera_fused_attention_backward", &inputs, &[dq, dk, dv]);
        let op = BackwardOp::<B> { desc: desc.clone(), scale, _b: core::marker::PhantomData };
        let mut outputs = client.register(streams, OperationIr::Custom(desc), op).into_iter();
        match (outputs.next(), outputs.next(), outputs.next()) {
            (Some(dq), Some(dk), Some(dv)) => (dq, dk, dv),
            _ => unreachable!("the backward operation declares three outputs"),
        }
    }
}
