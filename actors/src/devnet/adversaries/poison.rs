//! Adversaries that publish harm or laziness: nothing trained (lazy), noise, values at the
//! largest admissible magnitude in state and delta (poisoner), and an overfitter that
//! trains hard on the one micro-batch it can predict and publishes its update scaled up.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::slice::{Exchange, MAX_ABS_VALUE, SliceKind};
use tessera_core::window::Window;
use tessera_data::Batch;

use super::idle;
use crate::context::MinerContext;
use crate::window::Misbehaviour;

/// Purpose of the noise adversary's keyed draw (`LoadedHotkey::private_seed`).
const NOISE_PURPOSE: &str = "devnet noise";
/// An overfitter's update is published this many times larger than it trained it.
pub const OVERFIT_SCALE: f32 = 4.0;

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
            Exchange::Update | Exchange::SparseLoco | Exchange::Gradient => {
                Some(Arc::new(vec![0.0; node.value_count(SliceKind::Delta)]))
            }
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
        let noise = (0..node.value_count(SliceKind::Delta)).map(|_| rng.random_range(-half_width..=half_width));
        let published = match (exchange, honest) {
            (Exchange::Seed, Some(values)) => values.iter().zip(noise).map(|(v, n)| v + n).collect(),
            _ => noise.collect(),
        };
        futures::future::ready(Some(Arc::new(published))).boxed()
    }
}

/// Publishes ±[`MAX_ABS_VALUE`] (alternating), the largest values a reader admits, whose
/// sum over two peers would be far beyond anything a model survives unclipped: in its
/// state every window, and in its delta every even window. In odd windows it publishes the
/// update it honestly trained, so a validator scores it and must find the poisoned state
/// to withhold the pay (a `state-fault`); its even-window deltas lie beyond one AdamW
/// step's bound and are refused at decode.
pub struct Poisoner;

fn poison(len: usize) -> Arc<Vec<f32>> {
    Arc::new((0..len).map(|i| if i % 2 == 0 { MAX_ABS_VALUE } else { -MAX_ABS_VALUE }).collect())
}

impl Misbehaviour for Poisoner {
    fn trains(&self) -> bool {
        true
    }

    fn idle_reason(&self) -> String {
        idle("poisoner")
    }

    fn delta<'a>(
        &'a self,
        node: &'a MinerContext,
        window: Window,
        _exchange: Exchange,
        honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>> {
        let published = if window % 2 == 1 { honest } else { Some(poison(node.value_count(SliceKind::Delta))) };
        futures::future::ready(published).boxed()
    }

    fn state(&self, node: &MinerContext, _window: Window, _honest: Arc<Vec<f32>>) -> Arc<Vec<f32>> {
        poison(node.slice_value_count())
    }
}

/// Trains all its steps on its first micro-batch (the one a validator that scores the
/// first ones would use) and publishes the update [`OVERFIT_SCALE`] times larger.
pub struct Overfitter;

impl Misbehaviour for Overfitter {
    fn trains(&self) -> bool {
        true
    }

    fn idle_reason(&self) -> String {
        "an overfitter trained nothing this window".to_owned()
    }

    fn delta<'a>(
        &'a self,
        _node: &'a MinerContext,
        _window: Window,
        exchange: Exchange,
        honest: Option<Arc<Vec<f32>>>,
    ) -> BoxFuture<'a, Option<Arc<Vec<f32>>>> {
        let published = match exchange {
            Exchange::Update | Exchange::SparseLoco | Exchange::Gradient => {
                honest.map(|u| Arc::new(u.iter().map(|v| v * OVERFIT_SCALE).collect()))
            }
            Exchange::Seed => honest,
        };
        futures::future::ready(published).boxed()
    }

    fn train_on(&self, assigned: Vec<Batch>) -> Vec<Batch> {
        match assigned.first() {
            Some(first) => vec![first.clone(); assigned.len()],
            None => assigned,
        }
    }
}
