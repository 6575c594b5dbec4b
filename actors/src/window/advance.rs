//! Phase `advance`: the model one window forward from the peers' slices of window `e` —
//! their mean delta of `e`, then their state of `e + 1`. A validator runs it every window
//! (on the window it scored); a miner under the update exchange runs it at each window's
//! start, where the mean update replaces its own.

use std::borrow::Cow;
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
    /// SparseLoCo: the model's fingerprint after the step ([`super::WindowRun::model_hash`]).
    pub model_hash: Option<u64>,
}

/// What the model already holds of window `e`'s training.
pub(super) enum OwnStep {
    /// Nothing (a validator): the mean update is added.
    None,
    /// A miner's own update, which the mean replaces.
    Update(Arc<Vec<f32>>),
    /// SparseLoCo: the values the miner's window started from, which the step is taken from.
    Start(Arc<Vec<f32>>),
}

/// The peers' mean delta of `e`, then their state of `e + 1`.
pub(super) async fn one_window(
    run: &WindowRun,
    e: Window,
    exchange: Exchange,
    own: OwnStep,
) -> Result<Advanced, RuntimeError> {
    let (delta_slices, applied_mean) = match exchange {
        Exchange::Update | Exchange::SparseLoco => mean_update_in(run, e, own).await?,
        Exchange::Gradient => (gradient_step_in(run, e).await?, None),
        Exchange::Seed => (run.average_and_apply(SliceKind::Delta, e).await?, None),
    };
    if exchange.is_compressed() {
        // Every node that read the same payloads now holds the same model: no state
        // average (states are for nodes that join or fall out of step).
        return Ok(Advanced { state_slices: 0, delta_slices, model_hash: Some(run.model_hash().await?) });
    }
    // The state average holds values at the end of `e` (so every peer's own update, but
    // not the outer scaling, which is added back where the two windows' positions meet).
    let state_slices = run.average_and_apply(SliceKind::State, e + 1).await?;
    if let Some(mean) = applied_mean
        && state_slices > 0
    {
        restore_outer_scaling(run, e + 1, &mean).await?;
    }
    Ok(Advanced { state_slices, delta_slices, model_hash: None })
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
    // SparseLoCo's outer step may carry Nesterov momentum (none: the aggregate itself).
    let direction = match ctx.exchange() {
        Exchange::SparseLoco => Cow::Owned(ctx.outer_direction(&mean)),
        _ => Cow::Borrowed(mean.as_slice()),
    };
    let indices = ctx.positions(SliceKind::Delta, e).await?;
    match &own {
        OwnStep::None => {
            let step: Vec<f32> = direction.iter().map(|m| outer_lr * m).collect();
            run.engine.run(move |ops| ops.add(&indices, &step)).await??;
        }
        OwnStep::Update(own) if own.len() == direction.len() => {
            let step: Vec<f32> = direction.iter().zip(own.iter()).map(|(m, o)| outer_lr * m - o).collect();
            run.engine.run(move |ops| ops.add(&indices, &step)).await??;
        }
        // The same float operation as a node that did not train adds the step to θ_start.
        OwnStep::Start(start) if start.len() == direction.len() => {
            let values: Vec<f32> = start.iter().zip(direction.iter()).map(|(s, m)| s + outer_lr * m).collect();
            run.engine.run(move |ops| ops.apply(&indices, &values)).await??;
        }
        OwnStep::Update(_) | OwnStep::Start(_) => {
            warn!(miner = %ctx.id.name, window = e, "the mean update does not match the own values' length; skipped");
            return Ok((0, None));
        }
    }
    Ok((accepted, Some(mean)))
}

/// Gradient exchange: one optimizer step on the peers' aggregate gradient of `e` (none
/// when no valid gradient came: every node that saw none skips the same step).
async fn gradient_step_in(run: &WindowRun, e: Window) -> Result<u32, RuntimeError> {
    let (mean, accepted) = run.fetch_mean(SliceKind::Delta, e).await;
    let Some(mean) = mean else { return Ok(0) };
    run.engine.run(move |ops| ops.step_with(&mean, accepted as usize)).await??;
    Ok(accepted)
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
