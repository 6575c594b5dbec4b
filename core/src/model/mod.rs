//! The Llama model the network trains. This module holds what peers must agree on about
//! it — the canonical parameter layout and its fingerprint; the burn implementation of
//! the model itself builds on this layout.

mod compute;
mod params;

pub use compute::{AttentionKernel, ComputeError, ComputeOptions, Precision, ResolvedCompute};

pub use params::{ModelFingerprint, ModelShape, ModelShapeError, ParamLayout, ParamSpec};
