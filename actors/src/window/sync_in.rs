//! Phase `sync_in` of a miner: the state replayed after a restart, then the peers'
//! averages at the window's start. Under the update exchanges the peers' mean update of
//! the last window replaces the own one first ([`advance::one_window`], as a validator
//! steps); under the seed exchange only the state average comes in here (the deltas come
//! in at the window's end, in [`super::publish`]). Under SparseLoCo there is no state
//! average: the outer step leaves every miner that read the same payloads with the same
//! model, whose values at this window's positions it then publishes as its state.

use tessera_core::slice::{Exchange, SliceKind};
use tracing::{debug, info, warn};

use super::WindowRun;
use super::advance::{self, Advanced, OwnStep};
use super::join::{self, InStep};
use crate::error::RuntimeError;
use crate::sparse::ObjectBody;

pub(super) async fn run(run: &WindowRun, exchange: Exchange) -> Result<Advanced, RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    if let Some(from) = run.resync_from {
        run.replay_state(from).await?;
    }
    if exchange.is_compressed() {
        if exchange == Exchange::SparseLoco && is_new(run) {
            join::from_snapshot(run, "joining the network").await?;
        }
        let mut advanced = catch_up(run, exchange).await?;
        if exchange == Exchange::SparseLoco
            && let Some(resynced) = resync_if_out_of_step(run, exchange).await?
        {
            advanced = resynced;
        }
        if ctx.faults.take_model_drift() {
            let all = ctx.all_positions();
            let drift = vec![1e-3f32; all.total_len()];
            run.engine.run(move |ops| ops.add(&all, &drift)).await??;
            warn!(miner = %ctx.id.name, window, "injected fault: the model drifted from the network's");
        }
        let mut state = run.gather(window).await?;
        if let Some(m) = &ctx.misbehaviour {
            state = m.state(ctx, window, state);
        }
        run.upload(SliceKind::State, window, ObjectBody::Values(state));
        return Ok(advanced);
    }
    if exchange == Exchange::Update && window > 0 {
        match ctx.own_update(window - 1) {
            Some(own) => return advance::one_window(run, window - 1, exchange, OwnStep::Update(own)).await,
            // Not trained here (joined or restarted since): the model holds no own update
            // of that window to replace, and the state averages bring it in step.
            None => {
                debug!(miner = %ctx.id.name, window = window - 1, "no own update of this window; nothing to replace")
            }
        }
    }
    let state_slices = run.average_and_apply(SliceKind::State, window).await?;
    Ok(Advanced { state_slices, delta_slices: 0, model_hash: None })
}

/// A compressed exchange's outer steps up to this window: every window since the last one
/// applied (one in step; more after a restart or a skipped window, as far back as the
/// peers keep their payloads), the first from the values it started from when this miner
/// trained it, the others on the model as it is (it trained none of them).
async fn catch_up(run: &WindowRun, exchange: Exchange) -> Result<Advanced, RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    let Some(last) = window.checked_sub(1) else {
        return Ok(Advanced { model_hash: Some(run.model_hash().await?), ..Advanced::default() });
    };
    let mut from = match ctx.applied_through() {
        // Already in the model (this window's task runs again after a Trainer restart).
        Some(applied) if applied >= last => {
            return Ok(Advanced { model_hash: Some(run.model_hash().await?), ..Advanced::default() });
        }
        Some(applied) => applied + 1,
        None => last,
    };
    let history = ctx.network.max_history.load(std::sync::atomic::Ordering::Relaxed).max(1);
    if last - from >= history {
        warn!(miner = %ctx.id.name, from, window, history, "out of step beyond the peers' history: stepping from the oldest payloads kept");
        from = last + 1 - history;
    }
    let mut advanced = Advanced::default();
    for e in from..=last {
        let own = match ctx.own_update(e) {
            Some(start) if e == from && exchange == Exchange::SparseLoco => OwnStep::Start(start),
            _ => OwnStep::None,
        };
        let step = advance::one_window(run, e, exchange, own).await?;
        ctx.note_applied(Some(e));
        if e < last {
            info!(miner = %ctx.id.name, window = e, payloads = step.delta_slices, "caught up an outer step");
        }
        advanced = Advanced { delta_slices: advanced.delta_slices + step.delta_slices, ..step };
    }
    Ok(advanced)
}

/// A node that holds none of the network's outer steps and trained none of its last
/// window: it started without a checkpoint while the network ran (a model of its own
/// initialisation would never meet the others').
fn is_new(run: &WindowRun) -> bool {
    let ctx = &run.ctx;
    run.window > 0 && ctx.applied_through().is_none() && ctx.own_update(run.window - 1).is_none()
}

/// When the peers' state slices of the last window say this node's model was not theirs,
/// the network's model from a snapshot and the outer steps since; at most once in
/// `max_history` windows (a hostile majority in the sample costs a download, not a loop).
async fn resync_if_out_of_step(run: &WindowRun, exchange: Exchange) -> Result<Option<Advanced>, RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    let Some(previous) = window.checked_sub(1) else { return Ok(None) };
    let history = ctx.network.max_history.load(std::sync::atomic::Ordering::Relaxed).max(1);
    if ctx.resynced_at().is_some_and(|at| window < at + history) {
        return Ok(None);
    }
    let InStep::No { agreeing, majority } = join::in_step(run, previous).await else { return Ok(None) };
    warn!(miner = %ctx.id.name, window = previous, agreeing, majority, "this model is not the one the peers held: resynchronising");
    if join::from_snapshot(run, "out of step").await?.is_none() {
        // Tried: not again before the cool-down (no snapshot yet, or none valid).
        ctx.note_resync_attempt(window);
        return Ok(None);
    }
    Ok(Some(catch_up(run, exchange).await?))
}
