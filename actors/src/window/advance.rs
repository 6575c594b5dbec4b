//! Phase `advance`: the model one window forward from the peers' slices of window `e` —
//! their mean delta of `e`, then their state of `e + 1`. A validator runs it every window
//! (on the window it scored); a miner under the update exchange runs it at each window's
//! start, where the mean update replaces its own.

use std::sync::Arc;

use tessera_core::slice::{Exchange, SliceKind};
use tessera_core::window::Window;
use tracing::warn;

use super::WindowRun;
use crate::error::RuntimeError;

/// Slices averaged into the model this window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Advanced {
    pub state_slices: u32,
    pub delta_slices: u32,
}

/// What the model already holds of window `e`'s training.
pub(super) enum OwnStep {
    /// Nothing (a validator): the mean update is added.
    None,
    /// A miner's own update, which the mean replaces.
    Update(Arc<Vec<f32>>),
}

/// The peers' mean delta of `e`, then their state of `e + 1`.
pub(super) async fn one_window(
    run: &WindowRun,
    e: Window,
    exchange: Exchange,
    own: OwnStep,
) -> Result<Advanced, RuntimeError> {
    let (delta_slices, applied_mean) = match exchange {
        Exchange::Update => mean_update_in(run, e, own).await?,
        Exchange::Seed => (run.average_and_apply(SliceKind::Delta, e).await?, None),
    };
    // The state average holds values at the end of `e` (so every peer's own update, but
    // not the outer scaling, which is added back where the two windows' positions meet).
    let state_slices = run.average_and_apply(SliceKind::State, e + 1).await?;
    if let Some(mean) = applied_mean
        && state_slices > 0
    {
        restore_outer_scaling(run, e + 1, &mean).await?;
    }
    Ok(Advanced { state_slices, delta_slices })
}

/// Adds `outer_lr · mean(updates of e)` (less the own update, which it replaces) at the
/// positions of `e`. Returns how many updates were averaged and their mean, when applied.
async fn mean_update_in(
    run: &WindowRun,
    e: Window,
    own: OwnStep,
) -> Result<(u32, Option<Arc<Vec<f32>>>), RuntimeError> {
    let ctx = &run.ctx;
    let (mean, accepted) = run.fetch_mean(SliceKind::Delta, e).await;
    let Some(mean) = mean else { return Ok((0, None)) };
    let outer_lr = run.outer_lr();
    let step: Vec<f32> = match &own {
        OwnStep::None => mean.iter().map(|m| outer_lr * m).collect(),
        OwnStep::Update(own) if own.len() == mean.len() => {
            mean.iter().zip(own.iter()).map(|(m, o)| outer_lr * m - o).collect()
        }
        OwnStep::Update(_) => {
            warn!(miner = %ctx.id.name, window = e, "the mean update does not match the own update's length; skipped");
            return Ok((0, None));
        }
    };
    let indices = ctx.indices(e).await?;
    run.engine.run(move |ops| ops.add(&indices, &step)).await??;
    Ok((accepted, Some(mean)))
}

/// After the state average of `window` overwrote positions that the mean update of
/// `window - 1` had just moved, adds back what the state values lack there:
/// `(outer_lr − 1) · mean update` (they already hold the plain mean update).
async fn restore_outer_scaling(run: &WindowRun, window: Window, mean: &[f32]) -> Result<(), RuntimeError> {
    let outer_lr = run.outer_lr();
    if outer_lr == 1.0 || window == 0 {
        return Ok(());
    }
    let (state, delta) = (run.ctx.indices(window).await?, run.ctx.indices(window - 1).await?);
    let mut extra = vec![0f32; state.total_len()];
    for (at_state, at_delta) in state.overlap(&delta) {
        extra[at_state] = (outer_lr - 1.0) * mean[at_delta];
    }
    run.engine.run(move |ops| ops.add(&state, &extra)).await??;
    Ok(())
}
