//! Phase `publish`, at the window's end. Seed exchange: the own delta (values) out, the
//! peers' deltas of the previous window in. Update exchange: the own update out (the
//! peers' mean comes in at the next window's start). Then the state of the next window
//! out and the own history pruned.
//!
//! What is published passes through the node's [`Misbehaviour`], if it has one: the devnet
//! supplies its adversaries that way, so the production loop holds none of them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use tessera_core::slice::{Exchange, SliceKind};
use tessera_core::window::Window;
use tessera_data::Batch;

use super::WindowRun;
use super::train::Trained;
use crate::context::{ActorKind, MinerContext, lookup};
use crate::error::RuntimeError;
use crate::messages::SliceUploaderMsg;

/// A node that publishes something other than its honest result: the devnet's adversaries
/// (`crate::devnet::adversaries`). A production node has none.
pub trait Misbehaviour: Send + Sync + 'static {
    /// Whether the node trains before publishing.
    fn trains(&self) -> bool;
    /// Why the node trained nothing, for its window line.
    fn idle_reason(&self) -> String;
    /// The delta (seed exchange: values) or update to publish for `window`, given the
    /// honest one (`None` when nothing was trained); `None` publishes nothing.
    fn delta<'a>(
        &'a self,
        node: &'a MinerContext,
        window: Window,
        exchange: Exchange,
        honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>>;
    /// The state slice to publish for `window`, given the honest one.
    fn state(&self, _node: &MinerContext, _window: Window, honest: Arc<Vec<f32>>) -> Arc<Vec<f32>> {
        honest
    }
    /// The micro-batches it trains on, given its assigned ones.
    fn train_on(&self, assigned: Vec<Batch>) -> Vec<Batch> {
        assigned
    }
}

/// Returns how many peer deltas were averaged in (seed exchange).
pub(super) async fn run(run: &WindowRun, exchange: Exchange, trained: &Trained) -> Result<u32, RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    let mut delta_slices = 0;
    match (exchange, &trained.update_start) {
        (Exchange::Update, Some(start)) => {
            let end = run.gather(window).await?;
            let update: Vec<f32> = end.iter().zip(start.iter()).map(|(e, s)| e - s).collect();
            let update = Arc::new(update);
            ctx.remember_own_update(window, update.clone());
            // A window that trained nothing has no update: publishing zeros would only
            // pull the peers' mean towards zero. The own model still takes the peers'
            // mean (its own update being zero) at the next window.
            let honest = (trained.report.micro_batches > 0).then_some(update);
            if let Some(published) = published(run, honest, exchange).await {
                run.upload(SliceKind::Delta, window, published);
            }
        }
        _ => {
            let delta = run.gather(window).await?;
            if let Some(published) = published(run, Some(delta), exchange).await {
                run.upload(SliceKind::Delta, window, published);
            }
            if window > 0 {
                delta_slices = run.average_and_apply(SliceKind::Delta, window - 1).await?;
            }
        }
    }
    let mut state = run.gather(window + 1).await?;
    if let Some(m) = &ctx.misbehaviour {
        state = m.state(ctx, window + 1, state);
    }
    run.upload(SliceKind::State, window + 1, state);
    if let Some(uploader) = lookup::<SliceUploaderMsg>(&ctx.id.name, ActorKind::SliceUploader) {
        let max_history = ctx.network.max_history.load(Ordering::Relaxed);
        let _ = uploader.cast(SliceUploaderMsg::Prune { before: window.saturating_sub(max_history) });
    }
    Ok(delta_slices)
}

async fn published(run: &WindowRun, honest: Option<Arc<Vec<f32>>>, exchange: Exchange) -> Option<Arc<Vec<f32>>> {
    match &run.ctx.misbehaviour {
        None => honest,
        Some(m) => m.delta(&run.ctx, run.window, exchange, honest).await,
    }
}
