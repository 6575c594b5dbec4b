//! The devnet's adversaries: nodes that publish something other than their honest result,
//! as the Python network saw them, for the validator's tests and `--adversaries`. Each is
//! a [`Misbehaviour`] the devnet gives its node; the production window loop knows none of
//! them. A new adversary is one more variant of [`Adversary`] and its type, here only.

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

use crate::context::{ActorKind, MinerContext, RuntimeSettings, lookup};
use crate::messages::SliceDownloaderMsg;
use crate::window::Misbehaviour;

/// Purpose of the noise adversary's keyed draw (`LoadedHotkey::private_seed`).
const NOISE_PURPOSE: &str = "devnet noise";
/// How long a copier waits for its victim's delta, and each fetch, in `peer_deadline`s.
const COPY_WAIT_PEER_DEADLINES: u32 = 4;
const COPY_FETCH_PEER_DEADLINES: u32 = 2;
/// Between a copier's fetches while the victim's delta is not there yet.
const COPY_POLL: Duration = Duration::from_millis(100);

fn idle(name: &str) -> String {
    format!("a devnet adversary ({name}) does not train")
}

/// Trains nothing and publishes its unchanged state: a zero update (update exchange) or
/// the unchanged values (seed exchange).
pub struct Lazy;

impl Misbehaviour for Lazy {
    fn trains(&self) -> bool {
        false
    }

    fn idle_reason(&self) -> String {
        idle("lazy")
    }

    fn delta<'a>(
        &'a self,
        node: &'a MinerContext,
        _window: Window,
        exchange: Exchange,
        honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>> {
        let published = match exchange {
            Exchange::Update => Some(Arc::new(vec![0.0; node.slice_value_count()])),
            Exchange::Seed => honest,
        };
        futures::future::ready(published).boxed()
    }
}

/// Trains nothing and publishes uniform noise with the standard deviation of one AdamW
/// step (≈ lr), added to the unchanged values under the seed exchange.
pub struct Noise;

impl Misbehaviour for Noise {
    fn trains(&self) -> bool {
        false
    }

    fn idle_reason(&self) -> String {
        idle("noise")
    }

    fn delta<'a>(
        &'a self,
        node: &'a MinerContext,
        window: Window,
        exchange: Exchange,
        honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>> {
        let half_width = (3f64.sqrt() * node.network.hparams.learning_rate) as f32;
        // Drawn from this node's key and the window: the same noise every run.
        let mut rng = StdRng::from_seed(node.id.hotkey.private_seed(NOISE_PURPOSE, &window.to_le_bytes()));
        let noise = (0..node.slice_value_count()).map(|_| rng.random_range(-half_width..=half_width));
        let published = match (exchange, honest) {
            (Exchange::Seed, Some(values)) => values.iter().zip(noise).map(|(v, n)| v + n).collect(),
            _ => noise.collect(),
        };
        futures::future::ready(Some(Arc::new(published))).boxed()
    }
}

/// Trains nothing and republishes `victim`'s delta of the window under its own key.
pub struct Copier {
    pub victim: Hotkey,
}

impl Misbehaviour for Copier {
    fn trains(&self) -> bool {
        false
    }

    fn idle_reason(&self) -> String {
        idle("copier")
    }

    fn delta<'a>(
        &'a self,
        node: &'a MinerContext,
        window: Window,
        _exchange: Exchange,
        _honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>> {
        async move { self.copy_of(node, window).await.map(Arc::new) }.boxed()
    }
}

impl Copier {
    /// The victim's delta of `window`, read from its bucket once it is there.
    async fn copy_of(&self, node: &MinerContext, window: Window) -> Option<Vec<f32>> {
        let downloader = lookup::<SliceDownloaderMsg>(&node.id.name, ActorKind::SliceDownloader)?;
        let peer_deadline = node.settings.peer_deadline;
        let deadline = Instant::now() + peer_deadline * COPY_WAIT_PEER_DEADLINES;
        while Instant::now() < deadline && !node.is_stopping() {
            let fetched = downloader
                .call(
                    |reply| SliceDownloaderMsg::Fetch { kind: SliceKind::Delta, window, reply },
                    Some(peer_deadline * COPY_FETCH_PEER_DEADLINES),
                )
                .await;
            if let Ok(CallResult::Success(outcome)) = fetched
                && let Some(slice) = outcome.slices.iter().find(|s| s.key.hotkey == self.victim)
                && let Ok(bytes) = std::fs::read(&slice.path)
            {
                let expected = node.expected_slice(SliceKind::Delta, window, Some(self.victim), None);
                if let Ok(view) = tessera_core::slice::decode(&bytes, &expected) {
                    return Some(view.values().into_owned());
                }
            }
            tokio::time::sleep(COPY_POLL).await;
        }
        warn!(miner = %node.id.name, window, "copier: the victim's delta never appeared");
        None
    }
}

/// The adversaries a devnet can run, one node each with `--adversaries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Adversary {
    /// Republishes the first exchanging miner's delta.
    Copier,
    /// Publishes a zero update (its state unchanged).
    Lazy,
    /// Publishes noise.
    Noise,
    /// Trains honestly, on random pages instead of its own.
    RandomPages,
}

impl Adversary {
    pub const ALL: [Adversary; 4] = [Adversary::Copier, Adversary::Lazy, Adversary::Noise, Adversary::RandomPages];

    /// Its name in node names (`copier1`), tables and the report.
    pub fn name(self) -> &'static str {
        match self {
            Adversary::Copier => "copier",
            Adversary::Lazy => "lazy",
            Adversary::Noise => "noise",
            Adversary::RandomPages => "randompages",
        }
    }

    /// Sets a node up as this adversary: its settings, and what it publishes instead of
    /// its honest result (`victim`: the honest node a copier copies).
    pub fn equip<E>(
        self,
        settings: &mut RuntimeSettings,
        victim: impl FnOnce() -> Result<Hotkey, E>,
    ) -> Result<Option<Arc<dyn Misbehaviour>>, E> {
        Ok(match self {
            Adversary::Copier => Some(Arc::new(Copier { victim: victim()? })),
            Adversary::Lazy => Some(Arc::new(Lazy)),
            Adversary::Noise => Some(Arc::new(Noise)),
            Adversary::RandomPages => {
                settings.random = true;
                None
            }
        })
    }
}
