//! Reading a model's values at a window's slice positions, and writing them back.
//!
//! Parameters are flat row-major f32 arrays in canonical order (see `model::ParamLayout`);
//! a slice body is the concatenation of each parameter's values at its sorted indices.

use rayon::prelude::*;
use thiserror::Error;

use super::indices::SliceIndices;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("model has {found} parameters, the slice layout has {expected}")]
    ParamCountMismatch { expected: usize, found: usize },
    #[error("parameter {param} has {len} values but the slice addresses position {max_index}")]
    ParamTooShort { param: usize, len: usize, max_index: u32 },
    #[error("{found} slice values given, the window's slice has {expected}")]
    ValueCountMismatch { expected: usize, found: usize },
}

fn check_params<T: AsRef<[f32]>>(indices: &SliceIndices, params: &[T]) -> Result<(), ExtractError> {
    if params.len() != indices.num_params() {
        return Err(ExtractError::ParamCountMismatch { expected: indices.num_params(), found: params.len() });
    }
    for (param, (values, idx)) in params.iter().zip(indices.per_param()).enumerate() {
        let len = values.as_ref().len();
        if let Some(&max_index) = idx.last()
            && max_index as usize >= len
        {
            return Err(ExtractError::ParamTooShort { param, len, max_index });
        }
    }
    Ok(())
}

/// Splits `flat` into one chunk per parameter at `offsets`.
fn split_by_offsets<'a>(mut flat: &'a mut [f32], offsets: &[usize]) -> Vec<&'a mut [f32]> {
    offsets
        .windows(2)
        .map(|w| {
            let (head, tail) = std::mem::take(&mut flat).split_at_mut(w[1] - w[0]);
            flat = tail;
            head
        })
        .collect()
}

/// The values of `params` at the window's positions, in slice body order.
pub fn extract<T: AsRef<[f32]> + Sync>(indices: &SliceIndices, params: &[T]) -> Result<Vec<f32>, ExtractError> {
    check_params(indices, params)?;
    let mut out = vec![0f32; indices.total_len()];
    split_by_offsets(&mut out, indices.offsets())
        .into_par_iter()
        .zip(params.par_iter().zip(indices.per_param().par_iter()))
        .for_each(|(dst, (src, idx))| {
            let src = src.as_ref();
            dst.iter_mut().zip(idx).for_each(|(d, &i)| *d = src[i as usize]);
        });
    Ok(out)
}

/// Writes slice `values` into `params` at the window's positions; nothing else changes.
pub fn apply<T: AsMut<[f32]> + AsRef<[f32]> + Send>(
    indices: &SliceIndices,
    params: &mut [T],
    values: &[f32],
) -> Result<(), ExtractError> {
    check_params(indices, params)?;
    if values.len() != indices.total_len() {
        return Err(ExtractError::ValueCountMismatch { expected: indices.total_len(), found: values.len() });
    }
    let offsets = indices.offsets();
    params.par_iter_mut().zip(indices.per_param().par_iter()).enumerate().for_each(|(p, (dst, idx))| {
        let dst = dst.as_mut();
        let src = &values[offsets[p]..offsets[p + 1]];
        idx.iter().zip(src).for_each(|(&i, &v)| dst[i as usize] = v);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelShape, ParamLayout};

    fn tiny_layout() -> ParamLayout {
        ParamLayout::llama(&ModelShape {
            vocab_size: 97,
            hidden_size: 16,
            intermediate_size: 40,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 32,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
        })
        .unwrap()
    }

    fn numbered_params(layout: &ParamLayout) -> Vec<Vec<f32>> {
        layout
            .params()
            .iter()
            .enumerate()
            .map(|(p, spec)| (0..spec.numel()).map(|i| (p * 100_000 + i) as f32).collect())
            .collect()
    }

    #[test]
    fn extract_reads_each_parameter_at_its_indices_in_order() {
        let layout = tiny_layout();
        let params = numbered_params(&layout);
        let si = SliceIndices::compute(&layout, 5, 7).unwrap();
        let values = extract(&si, &params).unwrap();
        assert_eq!(values.len(), si.total_len());
        for p in 0..layout.len() {
            let got = &values[si.offsets()[p]..si.offsets()[p + 1]];
            let want: Vec<f32> = si.param(p).iter().map(|&i| (p * 100_000 + i as usize) as f32).collect();
            assert_eq!(got, want.as_slice());
        }
    }

    #[test]
    fn apply_writes_only_the_slice_positions() {
        let layout = tiny_layout();
        let mut params = numbered_params(&layout);
        let before = params.clone();
        let si = SliceIndices::compute(&layout, 8, 3).unwrap();
        let values: Vec<f32> = (0..si.total_len()).map(|i| -(i as f32) - 1.0).collect();
        apply(&si, &mut params, &values).unwrap();
        assert_eq!(extract(&si, &params).unwrap(), values);
        let mut changed = 0;
        for p in 0..layout.len() {
            for i in 0..params[p].len() {
                if params[p][i] != before[p][i] {
                    assert!(si.param(p).binary_search(&(i as u32)).is_ok(), "param {p} pos {i}");
                    changed += 1;
                }
            }
        }
        assert_eq!(changed, si.total_len());
    }

    #[test]
    fn mismatched_models_and_values_are_errors() {
        let layout = tiny_layout();
        let mut params = numbered_params(&layout);
        let si = SliceIndices::compute(&layout, 1, 2).unwrap();
        assert!(matches!(extract(&si, &params[1..]), Err(ExtractError::ParamCountMismatch { .. })));
        let short = vec![0.0f32; si.total_len() - 1];
        assert!(matches!(apply(&si, &mut params, &short), Err(ExtractError::ValueCountMismatch { .. })));
        params[0].truncate(3);
        assert!(matches!(extract(&si, &params), Err(ExtractError::ParamTooShort { param: 0, .. })));
    }
}
