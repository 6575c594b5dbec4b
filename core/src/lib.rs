//! tessera's protocol and domain.
//!
//! Everything every peer of the network must agree on lives here, as pure functions and
//! plain data with no actors and no process-wide runtime: the block→window clock
//! ([`window`]), the Llama parameter layout and its fingerprint ([`model`]), the slice
//! protocol — index sampling, wire format, aggregation ([`slice`]) — hotkey identities and
//! signatures ([`hotkey`]), hyperparameters ([`hparams`]) and the miner's layered
//! configuration ([`config`]). The actor runtime (`tessera-actors`) and the binary only
//! wire these together.

#[cfg(feature = "node")]
pub mod chain;
#[cfg(feature = "node")]
pub mod config;
pub mod fsutil;
pub mod hotkey;
pub mod hparams;
pub mod model;
pub mod slice;
pub mod sparseloco;
#[cfg(feature = "node")]
pub mod storage;
#[cfg(feature = "node")]
pub mod validator;
#[cfg(feature = "node")]
pub mod wallet;
pub mod window;
