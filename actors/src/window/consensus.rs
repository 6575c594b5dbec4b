//! The window's consensus update: the control the validator measures each miner's own
//! improvement against ([`tessera_core::validator::Evaluation::specificity`]).
//!
//! Each update is read as miners apply it (clipped), summed once per window, and for
//! each miner the mean of the *others* is applied to its own batches: none of them
//! trained on those batches, so whatever they improve there is the part of the
//! improvement every update shares.

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera_core::slice::{Exchange, SliceIndices};
use tessera_core::window::Window;
use tessera_model::engine::{EngineError, ModelOps};
use tracing::debug;

use super::WindowRun;
use super::score::{Delta, Reference};
use crate::context::MinerContext;
use crate::error::RuntimeError;
use crate::sparse::delta_values;

/// The sum of the window's counted updates as applied.
pub(super) struct Consensus {
    sum: Vec<f32>,
    members: Vec<u16>,
}

impl Consensus {
    /// The mean of the members other than `uid` (whose applied change is `own`); `None`
    /// when there is no other.
    pub fn others(&self, uid: u16, own: &[f32]) -> Option<Vec<f32>> {
        let included = self.members.binary_search(&uid).is_ok();
        let others = self.members.len() - usize::from(included);
        if others == 0 || own.len() != self.sum.len() {
            return None;
        }
        let n = others as f32;
        let mean = if included {
            self.sum.iter().zip(own).map(|(s, o)| (s - o) / n).collect()
        } else {
            self.sum.iter().map(|s| s / n).collect()
        };
        Some(mean)
    }
}

/// The consensus of the updates in `deltas` whose UIDs are in `members` (those scored
/// this window: copies left out, so a copy of a miner's update cannot stand in its
/// control); `None` with fewer than two, or when one cannot be read.
pub(super) async fn consensus(
    run: &WindowRun,
    e: Window,
    deltas: &BTreeMap<u16, Delta>,
    members: &[u16],
    reference: &Reference,
) -> Result<Option<Consensus>, RuntimeError> {
    if members.len() < 2 {
        return Ok(None);
    }
    let mut sum = vec![0f32; reference.theta.len()];
    for uid in members {
        let Some(delta) = deltas.get(uid) else { return Ok(None) };
        let change = applied_change(&run.ctx, delta, e, &reference.theta).await?;
        sum.iter_mut().zip(&change).for_each(|(s, c)| *s += c);
    }
    debug!(miner = %run.ctx.id.name, window = e, members = members.len(), "consensus summed");
    let mut members = members.to_vec();
    members.sort_unstable();
    Ok(Some(Consensus { sum, members }))
}

/// What `delta` changes at the window's positions as miners apply it: its clip scale
/// times the update (update exchange) or times its values less the model's (seed
/// exchange). Read back from the cache and checked again, one update in memory at a time.
pub(super) async fn applied_change(
    ctx: &Arc<MinerContext>,
    delta: &Delta,
    e: Window,
    theta: &Arc<Vec<f32>>,
) -> Result<Vec<f32>, RuntimeError> {
    let (path, work, hotkey, scale) = (delta.slice.path.clone(), ctx.clone(), delta.hotkey, delta.scale);
    let theta = theta.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<f32>, RuntimeError> {
        let bytes = std::fs::read(&path).map_err(|source| RuntimeError::CachedSlice { path: path.clone(), source })?;
        let values = delta_values(&work, &bytes, e, Some(hotkey), None)?.values;
        Ok(match work.exchange() {
            Exchange::Update | Exchange::SparseLoco | Exchange::Gradient => values.iter().map(|u| scale * u).collect(),
            Exchange::Seed => values.iter().zip(theta.iter()).map(|(v, t)| scale * (v - t)).collect(),
        })
    })
    .await?
}

/// Applies `change` to the model at `indices` (whose values are `theta`) as miners apply
/// an aggregate: added at the outer learning rate (update exchange) or set as `theta +
/// change` (seed exchange).
pub(super) fn apply_change(
    ops: &mut dyn ModelOps,
    exchange: Exchange,
    indices: &SliceIndices,
    theta: &[f32],
    change: &[f32],
    outer_lr: f32,
) -> Result<(), EngineError> {
    match exchange {
        Exchange::Update | Exchange::SparseLoco | Exchange::Gradient => {
            let step: Vec<f32> = change.iter().map(|c| outer_lr * c).collect();
            ops.add(indices, &step)
        }
        Exchange::Seed => {
            let values: Vec<f32> = theta.iter().zip(change).map(|(t, c)| t + c).collect();
            ops.apply(indices, &values)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Consensus;

    #[test]
    fn the_others_mean_leaves_the_miner_out_and_needs_another() {
        let c = Consensus { sum: vec![6.0, -3.0], members: vec![1, 4, 7] };
        assert_eq!(c.others(4, &[2.0, -1.0]), Some(vec![2.0, -1.0]), "(sum − own) / 2");
        assert_eq!(c.others(9, &[0.0, 0.0]), Some(vec![2.0, -1.0]), "not a member: the mean of all three");
        assert_eq!(c.others(4, &[1.0]), None, "another length");
        let alone = Consensus { sum: vec![1.0], members: vec![3] };
        assert_eq!(alone.others(3, &[1.0]), None, "no other update");
    }
}
