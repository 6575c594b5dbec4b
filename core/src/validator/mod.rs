//! The validator's judgement, as pure functions and plain data: how one window's
//! evaluation of a miner becomes a score ([`scores`]), whether the miner trains on its own
//! pages ([`gate`]), how copied updates are told apart ([`copies`]), how an update is
//! bounded before it is scored ([`clip`]), and how moving scores become the weights set on
//! chain. The actor runtime measures the losses; everything that decides what a miner
//! earns is here and tested.
//!
//! The rules:
//! - a window score is the update's improvement of the loss on the validator's secret
//!   random batches, `random_before − random_after`, clamped to ±[`scores::SCORE_LIMIT`]
//!   with its sign: an update that makes the model worse on data nobody trained on is
//!   penalised, however much it improves the miner's own pages (an overfitter scores
//!   below zero); a non-finite one is −limit;
//! - the own-data improvement enters only through the gate: per UID, decayed moments of
//!   `d = own − random` give a one-sided z statistic of `mean(d) > 0`; the gate is shut
//!   before [`gate::GATE_MIN_WINDOWS`] measured windows and opens linearly from
//!   z = [`gate::GATE_Z_OPEN`] to [`gate::GATE_Z_FULL`]. It reads nothing of other miners,
//!   so Sybils cannot move it; it is scale free, so only training on one's own pages
//!   passes it (random pages, zeros, noise and copies sit at z ≈ 0 or below);
//! - the final score is `max(moving, 0) · gate`; weights are `final^power`, normalised;
//!   all-zero (or non-finite) totals give no weights rather than NaN or flipped signs;
//! - absence (no valid delta: none, late, rejected) scores 0 for the window, so the moving
//!   score decays rather than dropping at once, and leaves the gate as it was;
//! - a copy (the same bytes as an earlier upload, or a sketch that least squares on the
//!   earlier ones explains: exact, scaled, noisy, mean echo), earlier meaning first seen
//!   by the validator's own clock, scores 0 and counts as a strongly negative `d`;
//! - each update is scored clipped as the aggregate clips it ([`clip::norm_clip_factors`]);
//! - a UID whose hotkey changed starts from zero.

mod basis;
pub mod clip;
pub mod copies;
pub mod evaluation;
pub mod gate;
pub mod scores;
pub mod sightings;
#[cfg(test)]
mod simulation;

pub use clip::norm_clip_factors;
pub use copies::{COPY_NOVELTY, CopyAssessment, CopyCandidate, assess_copies, find_copies, sketch, sketch_positions};
pub use evaluation::{Control, Evaluation, SCORE_LIMIT, relative_specificity};
pub use gate::{GATE_MIN_WINDOWS, GATE_Z_FULL, GATE_Z_OPEN, Specificity};
pub use scores::{ScoreBook, ScoreError, UidScore, WindowOutcome, to_u16_weights};
pub use sightings::{Sighting, order_keys};

use crate::hparams::Hparams;

/// Default weight of the newest window in the gate's moments: 0.05 remembers ~39
/// effective windows, so an honest miner's z (∝ √n_eff) clears a bar high enough that a
/// miner not trained on its pages almost never does ([`gate::GATE_Z_OPEN`]); at 0.1 the
/// same honest power needs a bar a null miner passes ten times as often.
pub const INDICATOR_ALPHA: f64 = 0.05;

/// The scoring rules, from the network's hparams (defaults documented there;
/// `copy_novelty` is the validator's own, [`COPY_NOVELTY`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringParams {
    /// Weight of the newest window in the moving score.
    pub moving_alpha: f64,
    /// Weight of the newest window in the gate's moments of `own − random` (at most 0.5
    /// is used: the test needs a memory of several windows).
    pub indicator_alpha: f64,
    /// Exponent of the power normalisation.
    pub weights_power: f64,
    /// Novelty below which an update is a copy of an earlier one ([`copies`]).
    pub copy_novelty: f64,
    /// Windows behind the head that are scored.
    pub eval_offset: u64,
    /// Micro-batches of own and of random data per evaluation.
    pub eval_batches: usize,
}

impl ScoringParams {
    pub fn from_hparams(hp: &Hparams) -> Self {
        Self {
            moving_alpha: hp.validator_moving_alpha.unwrap_or(0.1),
            indicator_alpha: hp.validator_indicator_alpha.unwrap_or(INDICATOR_ALPHA),
            weights_power: hp.validator_weights_power.unwrap_or(2.0),
            copy_novelty: COPY_NOVELTY,
            eval_offset: hp.validator_eval_offset.unwrap_or(2).max(1),
            eval_batches: hp.validator_eval_batches.unwrap_or(2).max(1) as usize,
        }
    }
}

impl Default for ScoringParams {
    fn default() -> Self {
        Self {
            moving_alpha: 0.1,
            indicator_alpha: INDICATOR_ALPHA,
            weights_power: 2.0,
            copy_novelty: COPY_NOVELTY,
            eval_offset: 2,
            eval_batches: 2,
        }
    }
}
