//! The validator's judgement, as pure functions and plain data: how one window's
//! evaluation of a miner becomes a score ([`scores`]), how copied updates are told apart
//! ([`copies`]), and how moving scores become the weights set on chain. The actor runtime
//! measures the losses; everything that decides what a miner earns is here and tested.
//!
//! The rules, learnt by the Python network the hard way:
//! - a miner's window score is the loss improvement its update brings on its own
//!   assigned data; an indicator (moving, in [−1, 1]) tracks how much more that
//!   improvement is than the one on random data, relative to both (a miner that did not
//!   train on its own pages sits near 0, an honest one above); the final score is
//!   `max(moving, 0) · gate(indicator)`, the gate fully open from half the network's
//!   median indicator and shut below a quarter of it ([`scores::Gate`]), so honest
//!   miners share by their improvement and a miner near 0 gets nothing;
//! - absence (no valid delta: none, late, rejected) scores 0 for the window, so the moving
//!   score decays rather than dropping at once;
//! - a copied update (the same bytes, or nearly the same values, uploaded later than the
//!   original) scores 0 and counts against the indicator;
//! - a UID whose hotkey changed starts from zero;
//! - weights are `final^power`, normalised; all-zero (or non-finite) totals give no
//!   weights rather than NaN or flipped signs.

pub mod copies;
pub mod scores;

pub use copies::{CopyCandidate, find_copies, sketch, sketch_positions};
pub use scores::{Evaluation, Gate, ScoreBook, ScoreError, UidScore, WindowOutcome, to_u16_weights};

use crate::hparams::Hparams;

/// The scoring rules, from the network's hparams (defaults documented there).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringParams {
    /// Weight of the newest window in the moving score.
    pub moving_alpha: f64,
    /// Weight of the newest window in the moving indicator.
    pub indicator_alpha: f64,
    /// Exponent of the power normalisation.
    pub weights_power: f64,
    /// Cosine similarity from which two updates are copies.
    pub copy_similarity: f64,
    /// The least indicator from which a miner's moving score counts in full (the gate
    /// follows the network's typical indicator above it; see [`scores::Gate`]).
    pub specificity_full: f64,
    /// Windows behind the head that are scored.
    pub eval_offset: u64,
    /// Micro-batches of own and of random data per evaluation.
    pub eval_batches: usize,
}

impl ScoringParams {
    pub fn from_hparams(hp: &Hparams) -> Self {
        Self {
            moving_alpha: hp.validator_moving_alpha.unwrap_or(0.1),
            indicator_alpha: hp.validator_indicator_alpha.unwrap_or(0.1),
            weights_power: hp.validator_weights_power.unwrap_or(2.0),
            copy_similarity: hp.validator_copy_similarity.unwrap_or(0.999),
            specificity_full: hp.validator_specificity_full.unwrap_or(0.01),
            eval_offset: hp.validator_eval_offset.unwrap_or(2).max(1),
            eval_batches: hp.validator_eval_batches.unwrap_or(2).max(1) as usize,
        }
    }
}

impl Default for ScoringParams {
    fn default() -> Self {
        Self {
            moving_alpha: 0.1,
            indicator_alpha: 0.1,
            weights_power: 2.0,
            copy_similarity: 0.999,
            specificity_full: 0.01,
            eval_offset: 2,
            eval_batches: 2,
        }
    }
}
