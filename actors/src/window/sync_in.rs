//! Phase `sync_in` of a miner: the state replayed after a restart, then the peers'
//! averages at the window's start. Under the update exchange the peers' mean update of
//! the last window replaces the own one first ([`advance::one_window`], as a validator
//! steps); under the seed exchange only the state average comes in here (the deltas come
//! in at the window's end, in [`super::publish`]).

use tessera_core::slice::{Exchange, SliceKind};
use tracing::debug;

use super::WindowRun;
use super::advance::{self, Advanced, OwnStep};
use crate::error::RuntimeError;

pub(super) async fn run(run: &WindowRun, exchange: Exchange) -> Result<Advanced, RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    if let Some(from) = run.resync_from {
        run.replay_state(from).await?;
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
    Ok(Advanced { state_slices, delta_slices: 0 })
}
