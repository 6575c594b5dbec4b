//! The streaming mean of a window's slices.
//!
//! Slices arrive one at a time (downloaded, decoded, added, dropped), so memory stays one
//! slice plus one accumulator whatever the number of peers. The mean then replaces the
//! model's values at the window's positions (see `extract::apply`); nothing else changes.

use thiserror::Error;

use super::wire::SliceView;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AggregateError {
    #[error("slice has {found} values, the accumulator {expected}")]
    LengthMismatch { expected: usize, found: usize },
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
}
