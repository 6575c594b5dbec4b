//! Adversaries that publish someone else's work as their own: a plain copy, a scaled or
//! noised one (to escape a similarity threshold), and the mean of the others' (which
//! matches nobody). The validator's copy check must catch each by what the update adds
//! beyond the updates it saw first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{Exchange, SliceKind};
use tessera_core::window::Window;
use tracing::warn;

use super::idle;
use crate::context::{ActorKind, MinerContext, lookup};
use crate::messages::SliceDownloaderMsg;
use crate::window::Misbehaviour;

/// How long a copier waits for what it copies, and each fetch, in `peer_deadline`s.
const COPY_WAIT_PEER_DEADLINES: u32 = 4;
const COPY_FETCH_PEER_DEADLINES: u32 = 2;
/// Between a copier's fetches while what it copies is not there yet.
const COPY_POLL: Duration = Duration::from_millis(100);
/// A scaled copy's factor: enough to move a cosine or a hash, not the loss.
pub const COPY_SCALE: f32 = 1.05;
/// A noised copy's noise, relative to the copied update's RMS.
pub const COPY_NOISE: f32 = 0.05;
/// Purpose of the noised copy's keyed draw.
const COPY_NOISE_PURPOSE: &str = "devnet noisy copy";
/// A mean echo waits for this many other deltas before averaging them.
const ECHO_PEERS: usize = 2;

/// What a copier does with what it read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CopyKind {
    /// Republished as is.
    Exact,
    /// Every value × [`COPY_SCALE`].
    Scaled,
    /// Plus uniform noise of [`COPY_NOISE`] × the copy's RMS.
    Noised,
    /// The mean of every other node's delta.
    MeanEcho,
}

/// Trains nothing and republishes `victim`'s delta of the window (or the others' mean)
/// under its own key, altered as `kind` says.
pub struct Copier {
    pub victim: Hotkey,
    pub kind: CopyKind,
}

impl Misbehaviour for Copier {
    fn trains(&self) -> bool {
        false
    }

    fn idle_reason(&self) -> String {
        idle(match self.kind {
            CopyKind::Exact => "copier",
            CopyKind::Scaled => "scaled copier",
            CopyKind::Noised => "noisy copier",
            CopyKind::MeanEcho => "mean echo",
        })
    }

    fn delta<'a>(
        &'a self,
        node: &'a MinerContext,
        window: Window,
        _exchange: Exchange,
        _honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>> {
        async move {
            let copied = match self.kind {
                CopyKind::MeanEcho => mean_of_others(node, window).await?,
                _ => deltas_of(node, window, |h| h == self.victim, 1).await?.pop()?,
            };
            Some(Arc::new(self.alter(node, window, copied)))
        }
        .boxed()
    }
}

impl Copier {
    fn alter(&self, node: &MinerContext, window: Window, mut values: Vec<f32>) -> Vec<f32> {
        match self.kind {
            CopyKind::Exact | CopyKind::MeanEcho => {}
            CopyKind::Scaled => values.iter_mut().for_each(|v| *v *= COPY_SCALE),
            CopyKind::Noised => {
                let rms =
                    (values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / values.len().max(1) as f64).sqrt();
                let half_width = (3f64.sqrt() * rms) as f32 * COPY_NOISE;
                let mut rng = StdRng::from_seed(node.id.hotkey.private_seed(COPY_NOISE_PURPOSE, &window.to_le_bytes()));
                values.iter_mut().for_each(|v| *v += rng.random_range(-half_width..=half_width));
            }
        }
        values
    }
}

/// The mean of every other node's delta of `window`, once [`ECHO_PEERS`] are there.
async fn mean_of_others(node: &MinerContext, window: Window) -> Option<Vec<f32>> {
    let own = node.own_hotkey();
    let others = deltas_of(node, window, |h| h != own, ECHO_PEERS).await?;
    let mut mean = vec![0f32; others.first()?.len()];
    for values in &others {
        mean.iter_mut().zip(values).for_each(|(m, v)| *m += v);
    }
    let n = others.len() as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    Some(mean)
}

/// The decoded deltas of `window` signed by hotkeys `wanted` accepts, once at least `least`
/// are there (or whatever is there when the wait ends; `None` if nothing).
async fn deltas_of(
    node: &MinerContext,
    window: Window,
    wanted: impl Fn(Hotkey) -> bool,
    least: usize,
) -> Option<Vec<Vec<f32>>> {
    let downloader = lookup::<SliceDownloaderMsg>(&node.id.name, ActorKind::SliceDownloader)?;
    let peer_deadline = node.settings.peer_deadline;
    let deadline = Instant::now() + peer_deadline * COPY_WAIT_PEER_DEADLINES;
    let mut found = Vec::new();
    while Instant::now() < deadline && !node.is_stopping() {
        let fetched = downloader
            .call(
                |reply| SliceDownloaderMsg::Fetch { kind: SliceKind::Delta, window, reply },
                Some(peer_deadline * COPY_FETCH_PEER_DEADLINES),
            )
            .await;
        if let Ok(CallResult::Success(outcome)) = fetched {
            found = outcome
                .slices
                .iter()
                .filter(|s| wanted(s.key.hotkey))
                .filter_map(|slice| {
                    let bytes = std::fs::read(&slice.path).ok()?;
                    let delta = crate::sparse::delta_values(node, &bytes, window, Some(slice.key.hotkey), None).ok()?;
                    Some(delta.values.into_owned())
                })
                .collect();
            if found.len() >= least {
                return Some(found);
            }
        }
        tokio::time::sleep(COPY_POLL).await;
    }
    if found.is_empty() {
        warn!(miner = %node.id.name, window, "copier: nothing to copy appeared");
        return None;
    }
    Some(found)
}
