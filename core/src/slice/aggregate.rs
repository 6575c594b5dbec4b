//! The streaming mean of a window's slices.
//!
//! Slices arrive one at a time (downloaded, decoded, added, dropped), so memory stays one
//! slice plus one accumulator whatever the number of peers. The mean then replaces the
//! model's values at the window's positions (see `extract::apply`); nothing else changes.

use thiserror::Error;

use super::wire::SliceView;

#[derive(Debug, Error, PartialEq)]
pub enum AggregateError {
    #[error("slice has {found} values, the accumulator {expected}")]
    LengthMismatch { expected: usize, found: usize },
    #[error("the mean is not finite at position {position} ({value}): a slice's values overflowed the sum")]
    NonFiniteMean { position: usize, value: f32 },
}

/// Running sum of slices of one kind and window.
#[derive(Debug, Clone)]
pub struct MeanAccumulator {
    sum: Vec<f32>,
    count: u32,
}

impl MeanAccumulator {
    pub fn new(value_count: usize) -> Self {
        Self { sum: vec![0.0; value_count], count: 0 }
    }

    /// Adds a validated slice.
    pub fn add(&mut self, slice: &SliceView<'_>) -> Result<(), AggregateError> {
        let found = slice.header.value_count as usize;
        if found != self.sum.len() {
            return Err(AggregateError::LengthMismatch { expected: self.sum.len(), found });
        }
        slice.add_into(&mut self.sum);
        self.count += 1;
        Ok(())
    }

    /// Adds raw values (our own slice, which never went through the wire).
    pub fn add_values(&mut self, values: &[f32]) -> Result<(), AggregateError> {
        if values.len() != self.sum.len() {
            return Err(AggregateError::LengthMismatch { expected: self.sum.len(), found: values.len() });
        }
        self.sum.iter_mut().zip(values).for_each(|(a, v)| *a += v);
        self.count += 1;
        Ok(())
    }

    /// How many slices were added.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The mean at every position, or `None` when nothing was added.
    pub fn finish(mut self) -> Option<Vec<f32>> {
        if self.count == 0 {
            return None;
        }
        let inv = 1.0 / self.count as f32;
        self.sum.iter_mut().for_each(|v| *v *= inv);
        Some(self.sum)
    }

    /// [`Self::finish`], refusing a mean that is not finite everywhere (finite slices whose
    /// sum overflows, e.g. two peers' values near ±3.4e38): applying it would make every
    /// later loss non-finite.
    pub fn finish_finite(self) -> Result<Option<Vec<f32>>, AggregateError> {
        let Some(mean) = self.finish() else { return Ok(None) };
        match mean.iter().position(|v| !v.is_finite()) {
            Some(position) => Err(AggregateError::NonFiniteMean { position, value: mean[position] }),
            None => Ok(Some(mean)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hotkey::dev_keypair;
    use crate::model::ModelFingerprint;
    use crate::slice::key::SliceKind;
    use crate::slice::wire::{Dtype, Expected, SliceMeta, decode, encode};

    const N: usize = 1000;

    fn meta(dtype: Dtype) -> SliceMeta {
        SliceMeta {
            kind: SliceKind::State,
            window: 3,
            fingerprint: ModelFingerprint([9; 32]),
            compression: 10,
            dtype,
            version: 1,
        }
    }

    fn expected() -> Expected<'static> {
        Expected {
            kind: SliceKind::State,
            window: 3,
            hotkey: None,
            registered: None,
            fingerprint: ModelFingerprint([9; 32]),
            compression: 10,
            value_count: N,
            version: 1,
        }
    }

    #[test]
    fn mean_of_streamed_slices_is_the_mean_at_every_position() {
        let peers = ["Alice", "Bob", "Charlie", "Dave"];
        let values: Vec<Vec<f32>> =
            (0..peers.len()).map(|p| (0..N).map(|i| (i * (p + 1)) as f32 * 0.25 - 7.0).collect()).collect();
        let mut acc = MeanAccumulator::new(N);
        for (peer, v) in peers.iter().zip(&values) {
            // One slice in memory at a time: encode, decode, add, drop.
            let bytes = encode(meta(Dtype::F32), v, &dev_keypair(peer).unwrap()).unwrap();
            acc.add(&decode(&bytes, &expected()).unwrap()).unwrap();
        }
        assert_eq!(acc.count(), 4);
        let mean = acc.finish().unwrap();
        for i in 0..N {
            let want = values.iter().map(|v| v[i]).sum::<f32>() / 4.0;
            assert!((mean[i] - want).abs() <= 1e-5 * want.abs().max(1.0), "{i}: {} vs {want}", mean[i]);
        }
    }

    #[test]
    fn bf16_and_f32_slices_mix_in_one_mean() {
        let a: Vec<f32> = vec![1.0; N];
        let b: Vec<f32> = vec![3.0; N];
        let mut acc = MeanAccumulator::new(N);
        let bytes_a = encode(meta(Dtype::F32), &a, &dev_keypair("Alice").unwrap()).unwrap();
        let bytes_b = encode(meta(Dtype::Bf16), &b, &dev_keypair("Bob").unwrap()).unwrap();
        acc.add(&decode(&bytes_a, &expected()).unwrap()).unwrap();
        acc.add(&decode(&bytes_b, &expected()).unwrap()).unwrap();
        acc.add_values(&[5.0; N]).unwrap();
        assert_eq!(acc.finish().unwrap(), vec![3.0; N]);
    }

    #[test]
    fn empty_accumulator_has_no_mean_and_lengths_must_match() {
        assert_eq!(MeanAccumulator::new(5).finish(), None);
        let mut acc = MeanAccumulator::new(5);
        assert_eq!(acc.add_values(&[1.0; 4]), Err(AggregateError::LengthMismatch { expected: 5, found: 4 }));
        let bytes = encode(meta(Dtype::F32), &[1.0; N], &dev_keypair("Alice").unwrap()).unwrap();
        let view = decode(&bytes, &expected()).unwrap();
        assert_eq!(acc.add(&view), Err(AggregateError::LengthMismatch { expected: 5, found: N }));
        assert_eq!(acc.count(), 0);
    }

    #[test]
    fn a_mean_that_overflows_is_refused_and_a_finite_one_kept() {
        let mut acc = MeanAccumulator::new(4);
        acc.add_values(&[1.0, f32::MAX, 0.0, 2.0]).unwrap();
        acc.add_values(&[3.0, f32::MAX, 0.0, 2.0]).unwrap();
        assert_eq!(
            acc.finish_finite(),
            Err(AggregateError::NonFiniteMean { position: 1, value: f32::INFINITY }),
            "two finite values near the f32 limit sum to inf"
        );
        let mut acc = MeanAccumulator::new(2);
        acc.add_values(&[1.0, -3.0e38]).unwrap();
        acc.add_values(&[3.0, 3.0e38]).unwrap();
        assert_eq!(acc.finish_finite(), Ok(Some(vec![2.0, 0.0])));
        assert_eq!(MeanAccumulator::new(2).finish_finite(), Ok(None));
    }
}
