//! The Llama model the network trains. This module holds what peers must agree on about
//! it — the canonical parameter layout and its fingerprint; the burn implementation of
//! the model itself builds on this layout.

mod compute;
mod memory;
mod params;

pub use compute::{AttentionKernel, BackendCaps, ComputeError, ComputeOptions, Device, Precision, ResolvedCompute};

pub use memory::{StepMemory, memory_table, step_memory};
pub use params::{ModelFingerprint, ModelShape, ModelShapeError, ParamLayout, ParamSpec};
