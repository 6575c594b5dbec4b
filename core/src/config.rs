//! Layered miner configuration (in progress).
