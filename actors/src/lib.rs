//! The miner runtime: the supervised ractor actor tree of `DESIGN.md` §3.
//!
//! The tree (HostSupervisor → MinerSupervisor → ChainListener, WindowClock, StateSyncer,
//! SliceDownloader, SliceUploader, Trainer) lands here once the chain, storage and model
//! pieces of `tessera-core` exist. Everything protocol-shaped lives in `tessera-core`, so
//! this crate only wires behaviour together.

pub use tessera_core as core;
