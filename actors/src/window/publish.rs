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
use crate::sparse::ObjectBody;

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
        (Exchange::Gradient, _) => {
            // The window's gradient, taken out of the trainer (it took no step): every
            // miner steps on the peers' aggregate at the next window's start.
            let honest = run.engine.run(|ops| ops.take_gradient()).await?.map(Arc::new);
            if let Some(published) = published(run, honest.clone(), exchange).await {
                let body = body_of(run, exchange, published, honest).await?;
                run.upload(SliceKind::Delta, window, body);
            }
        }
        (exchange, Some(start)) if exchange.exchanges_updates() => {
            let end = run.gather_delta(window).await?;
            let update: Vec<f32> = end.iter().zip(start.iter()).map(|(e, s)| e - s).collect();
            let update = Arc::new(update);
            // SparseLoCo keeps where the window started: the outer step sets the model to
            // θ_start + step exactly (θ_end − update + step would round differently on
            // every miner, and their models would drift apart bit by bit).
            let kept = if exchange == Exchange::SparseLoco { start.clone() } else { update.clone() };
            ctx.remember_own_update(window, kept);
            // A window that trained nothing has no update: publishing zeros would only
            // pull the peers' mean towards zero. The own model still takes the peers'
            // mean (its own update being zero) at the next window.
            let honest = (trained.report.micro_batches > 0).then_some(update);
            if let Some(published) = published(run, honest.clone(), exchange).await {
                let body = body_of(run, exchange, published, honest).await?;
                run.upload(SliceKind::Delta, window, body);
            }
        }
        _ => {
            let delta = run.gather(window).await?;
            if let Some(published) = published(run, Some(delta), exchange).await {
                run.upload(SliceKind::Delta, window, ObjectBody::Values(published));
            }
            if window > 0 {
                delta_slices = run.average_and_apply(SliceKind::Delta, window - 1).await?;
            }
        }
    }
    // SparseLoCo publishes its state after the outer step, at the next window's start.
    if !exchange.is_compressed() {
        let mut state = run.gather(window + 1).await?;
        if let Some(m) = &ctx.misbehaviour {
            state = m.state(ctx, window + 1, state);
        }
        run.upload(SliceKind::State, window + 1, ObjectBody::Values(state));
    }
    if let Some(uploader) = lookup::<SliceUploaderMsg>(&ctx.id.name, ActorKind::SliceUploader) {
        let max_history = ctx.network.max_history.load(Ordering::Relaxed);
        let _ = uploader
            .cast(SliceUploaderMsg::Prune { before: window.saturating_sub(max_history), kinds: SliceKind::ALL });
    }
    Ok(delta_slices)
}

/// What a delta of `published` values carries: the values, or under SparseLoCo their
/// payload — the honest update through the error buffer, anything else compressed alone.
async fn body_of(
    run: &WindowRun,
    exchange: Exchange,
    published: Arc<Vec<f32>>,
    honest: Option<Arc<Vec<f32>>>,
) -> Result<ObjectBody, RuntimeError> {
    if !exchange.is_compressed() {
        return Ok(ObjectBody::Values(published));
    }
    let through_buffer = honest.is_some_and(|h| Arc::ptr_eq(&h, &published));
    let ctx = run.ctx.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        if through_buffer { ctx.compress_update(&published) } else { ctx.compress_alone(&published) }
    })
    .await??;
    Ok(ObjectBody::Packed(Arc::new(bytes)))
}

async fn published(run: &WindowRun, honest: Option<Arc<Vec<f32>>>, exchange: Exchange) -> Option<Arc<Vec<f32>>> {
    match &run.ctx.misbehaviour {
        None => honest,
        Some(m) => m.delta(&run.ctx, run.window, exchange, honest).await,
    }
}
