//! Errors of the miner runtime's work (window tasks, transfers), named by cause.

use std::path::PathBuf;

use tessera_core::slice::{EncodeError, IndexError, SliceError};
use tessera_core::storage::StorageError;
use tessera_core::validator::ScoreError;
use tessera_data::DataError;
use thiserror::Error;

use crate::engine::EngineError;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("slice positions: {0}")]
    Index(#[from] IndexError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("window data: {0}")]
    Data(#[from] DataError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("encoding a slice: {0}")]
    Encode(#[from] EncodeError),
    #[error("a cached slice: {0}")]
    Slice(#[from] SliceError),
    #[error("a cached delta: {0}")]
    Delta(#[from] crate::sparse::DeltaError),
    #[error("compressing the own update: {0}")]
    Compress(#[from] tessera_core::sparseloco::SparseError),
    #[error("reading the cached slice {path}: {source}")]
    CachedSlice { path: PathBuf, source: std::io::Error },
    #[error("validator scores: {0}")]
    Scores(#[from] ScoreError),
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the {0} actor is not running")]
    ActorDown(&'static str),
    #[error("the {actor} did not answer: {reason}")]
    Call { actor: &'static str, reason: String },
}
