//! The Llama the network trains, in burn: the model ([`llama`]), deterministic
//! initialisation ([`init`]), and the bridge between its parameters and slices
//! ([`params`]), generic over burn's backends.

pub mod backend;
pub mod checkpoint;
pub mod cuda_env;
pub mod engine;
pub mod evaluate;
pub mod fused;
pub mod hf;
pub mod init;
pub mod llama;
pub mod ops;
pub mod params;
pub mod recompute;
pub mod train;

pub use llama::{Llama, LlamaConfig};

pub use params::ParamError;

/// Errors of building or changing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Shape(#[from] tessera_core::model::ModelShapeError),
    #[error(transparent)]
    Param(#[from] ParamError),
}
