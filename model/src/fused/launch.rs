//! Host side of the fused attention kernels on burn's CubeCL tensors: shape checks, block
//! size for the device's shared memory, output allocation and launches.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::kernel;
use super::{AttentionShape, AttentionShapeError};

/// Square tile sizes tried, largest first (`block²` units per cube).
const BLOCKS: [usize; 3] = [16, 8, 4];
/// Units per cube of the `D` kernel.
const DELTA_UNITS: u32 = 256;

/// Why the kernels cannot run on these tensors.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Shape(#[from] AttentionShapeError),
    #[error("{what} should have 4 dimensions [batch, heads, seq, head_dim], got {dims:?}")]
    Rank { what: &'static str, dims: Vec<usize> },
    #[error("{what} has shape {got:?}, expected {expected:?}")]
    Mismatch { what: &'static str, got: Vec<usize>, expected: Vec<usize> },
    #[error("{what} has dtype {got:?}, expected {expected:?}")]
    DType { what: &'static str, got: DType, expected: DType },
    #[error("head_dim {head_dim} in {dtype:?} needs more shared memory than the device's {max} bytes")]
    SharedMemory { head_dim: usize, dtype: DType, max: usize },
    #[error("{what} does not fit the kernel's 32-bit sizes")]
    TooLarge { what: &'static str },
}

fn dims4<R: CubeRuntime>(what: &'static str, t: &CubeTensor<R>) -> Result<[usize; 4], LaunchError> {
    let dims: &[usize] = t.meta.shape();
    <[usize; 4]>::try_from(dims).map_err(|_| LaunchError::Rank { what, dims: dims.to_vec() })
}

fn expect_dims<R: CubeRuntime>(what: &'static str, t: &CubeTensor<R>, expected: [usize; 4]) -> Result<(), LaunchError> {
    let got = dims4(what, t)?;
    if got == expected {
        Ok(())
    } else {
        Err(LaunchError::Mismatch { what, got: got.to_vec(), expected: expected.to_vec() })
    }
}

fn expect_dtype<R: CubeRuntime>(what: &'static str, t: &CubeTensor<R>, expected: DType) -> Result<(), LaunchError> {
    if t.dtype == expected { Ok(()) } else { Err(LaunchError::DType { what, got: t.dtype, expected }) }
}

/// The attention shape of `q`, `k`, `v`, checked (same dtype, matching dims, GQA groups).
pub fn attention_shape<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
) -> Result<AttentionShape, LaunchError> {
    let [batch, heads, seq, head_dim] = dims4("q", q)?;
    let [_, kv_heads, _, _] = dims4("k", k)?;
    let shape = AttentionShape { batch, heads, kv_heads, seq, head_dim };
    shape.validate()?;
    expect_dims("k", k, [batch, kv_heads, seq, head_dim])?;
    expect_dims("v", v, [batch, kv_heads, seq, head_dim])?;
    expect_dtype("k", k, q.dtype)?;
    expect_dtype("v", v, q.dtype)?;
    Ok(shape)
}

/// The tile size: the largest of [`BLOCKS`] whose tiles fit the device's shared memory and
/// whose `block²` units fit one cube. `tiles` input-typed `block × head_dim` tiles plus
/// `f32_per_block²` f32 tiles and `f32_rows` f32 vectors of `block`.
fn choose_block<R: CubeRuntime>(
    client: &ComputeClient<R>,
    shape: &AttentionShape,
    dtype: DType,
    tiles: usize,
    f32_tiles: usize,
    f32_rows: usize,
) -> Result<usize, LaunchError> {
    let hw = &client.properties().hardware;
    let max = hw.max_shared_memory_size;
    BLOCKS
        .into_iter()
        .find(|&b| {
            let bytes = tiles * b * shape.head_dim * dtype.size() + (f32_tiles * b * b + f32_rows * b) * 4;
            bytes <= max && (b * b) as u32 <= hw.max_units_per_cube
        })
        .ok_or(LaunchError::SharedMemory { head_dim: shape.head_dim, dtype, max })
}

fn u32_of(what: &'static str, x: usize) -> Result<u32, LaunchError> {
    u32::try_from(x).map_err(|_| LaunchError::TooLarge { what })
}

/// Cubes `(blocks of seq, heads, batch)`.
fn cube_count(shape: &AttentionShape, heads: usize, block: usize) -> Result<CubeCount, LaunchError> {
    Ok(CubeCount::Static(
        u32_of("sequence blocks", shape.seq.div_ceil(block))?,
        u32_of("heads", heads)?,
        u32_of("batch", shape.batch)?,
    ))
}

/// Forward: `(out [b, h, t, d] in q's dtype, lse [b, h, t] f32)`.
pub fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: f32,
) -> Result<(CubeTensor<R>, CubeTensor<R>), LaunchError> {
    let shape = attention_shape(&q, &k, &v)?;
    q.assert_is_on_same_device(&k);
    q.assert_is_on_same_device(&v);
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let dtype = q.dtype;
    let (client, device) = (q.client.clone(), q.device.clone());
    let block = choose_block(&client, &shape, dtype, 3, 1, 0)?;
    let out = empty_device_dtype(client.clone(), device.clone(), q.meta.shape().clone(), dtype);
    let lse = empty_device_dtype(client.clone(), device, [shape.batch, shape.heads, shape.seq].into(), DType::F32);
    if shape.rows() == 0 {
        return Ok((out, lse));
    }
    tracing::trace!(?shape, block, ?dtype, "fused attention forward");
    kernel::attention_forward::launch::<R>(
        &client,
        cube_count(&shape, shape.heads, block)?,
        CubeDim::new_2d(block as u32, block as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        scale,
        u32_of("seq", shape.seq)?,
        u32_of("group", shape.group())?,
        block,
        shape.head_dim,
        shape.head_dim.div_ceil(block),
        dtype.into(),
    );
    Ok((out, lse))
}

/// `(dq, dk, dv)`.
pub type Grads<R> = (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>);

/// Backward: `(dq, dk, dv)` in q's dtype, from the forward's `out`, `lse` and `grad_out`.
#[allow(clippy::too_many_arguments)]
pub fn backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad_out: CubeTensor<R>,
    scale: f32,
) -> Result<Grads<R>, LaunchError> {
    let shape = attention_shape(&q, &k, &v)?;
    let q_dims = [shape.batch, shape.heads, shape.seq, shape.head_dim];
    expect_dims("out", &out, q_dims)?;
    expect_dims("grad_out", &grad_out, q_dims)?;
    let lse_dims: &[usize] = lse.meta.shape();
    if lse_dims != [shape.batch, shape.heads, shape.seq] {
        return Err(LaunchError::Mismatch {
            what: "lse",
            got: lse_dims.to_vec(),
            expected: vec![shape.batch, shape.heads, shape.seq],
        });
    }
    expect_dtype("lse", &lse, DType::F32)?;
    let dtype = q.dtype;
    // The gradient may arrive in another float type than the forward's (e.g. f32 from the loss).
    let out = cast_to(out, dtype);
    let grad_out = cast_to(grad_out, dtype);
    let [q, k, v, out, lse, grad_out] = [q, k, v, out, lse, grad_out].map(into_contiguous);
    let (client, device) = (q.client.clone(), q.device.clone());
    let dq = empty_device_dtype(client.clone(), device.clone(), q.meta.shape().clone(), dtype);
    let dk = empty_device_dtype(client.clone(), device.clone(), k.meta.shape().clone(), dtype);
    let dv = empty_device_dtype(client.clone(), device.clone(), v.meta.shape().clone(), dtype);
    if shape.rows() == 0 {
        return Ok((dq, dk, dv));
    }
    let delta = empty_device_dtype(client.clone(), device, lse.meta.shape().clone(), DType::F32);
    let rows = u32_of("rows", shape.rows())?;
    kernel::attention_delta::launch::<R>(
        &client,
        CubeCount::Static(rows.div_ceil(DELTA_UNITS), 1, 1),
        CubeDim::new_1d(DELTA_UNITS),
        out.into_tensor_arg(),
        grad_out.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        rows,
        shape.head_dim,
        dtype.into(),
    );

    let block = choose_block(&client, &shape, dtype, 4, 2, 2)?;
    let (seq, group) = (u32_of("seq", shape.seq)?, u32_of("group", shape.group())?);
    let per_unit = shape.head_dim.div_ceil(block);
    tracing::trace!(?shape, block, ?dtype, "fused attention backward");
    kernel::attention_backward_kv::launch::<R>(
        &client,
        cube_count(&shape, shape.kv_heads, block)?,
        CubeDim::new_2d(block as u32, block as u32),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        grad_out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        scale,
        seq,
        group,
        block,
        shape.head_dim,
        per_unit,
        dtype.into(),
    );
    kernel::attention_backward_q::launch::<R>(
        &client,
        cube_count(&shape, shape.heads, block)?,
        CubeDim::new_2d(block as u32, block as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        grad_out.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        scale,
        seq,
        group,
        block,
        shape.head_dim,
        per_unit,
        dtype.into(),
    );
    Ok((dq, dk, dv))
}

fn cast_to<R: CubeRuntime>(t: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    if t.dtype == dtype { t } else { burn_cubecl::kernel::cast(t, dtype) }
}
