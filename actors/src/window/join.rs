//! Under a compressed exchange every honest node holds the same model, so the model is not
//! something a node can average its way back to: a node that starts without it (a new
//! miner) or loses it (its model left the others') takes the whole model from a snapshot
//! — the values at the start of a window, which validators publish every
//! [`snapshot_every`] windows — and then the outer steps since ([`super::sync_in`]'s
//! catch-up). Whether a node is in step is read off its peers' state slices: under these
//! exchanges every node in step publishes the same values, so the same body hash.
//!
//! What a peer controls here, and its bound: a snapshot is chosen by how many signers
//! published the same bytes, then checked by the next window's comparison (a wrong one is
//! left again, at most once per `max_history` windows); the comparison reads a bounded
//! sample of [`IN_STEP_SAMPLE`] peers drawn per node and window, and needs two of them to
//! agree against this node before it acts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use ractor::rpc::CallResult;
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{SliceKind, decode, snapshot_candidates};
use tessera_core::window::Window;
use tracing::{info, warn};

use super::WindowRun;
use crate::context::{ActorKind, MinerContext, lookup};
use crate::error::RuntimeError;
use crate::messages::{FetchOutcome, FetchedSlice, SliceDownloaderMsg};
use crate::stats::MinerStats;

/// Peers' state slices read per window to tell whether this node is in step (besides its
/// own); each about 4,096 values ([`tessera_core::slice::state_compression`]).
pub(crate) const IN_STEP_SAMPLE: u32 = tessera_core::slice::IN_STEP_SAMPLE as u32;
/// The fewest peers that must agree on a model other than this node's before it resyncs.
const OUT_OF_STEP_QUORUM: usize = 2;

/// Whether this node held its peers' model at the start of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InStep {
    /// Its state slice is the most common one among the sample's.
    Yes,
    /// At least [`OUT_OF_STEP_QUORUM`] peers agree on other values, more than agree with it.
    No { agreeing: usize, majority: usize },
    /// Nothing to compare (no own slice, or too few peers).
    Unknown,
}

/// The model of the newest snapshot the peers offer (as far back as their payloads reach),
/// with the outer steps before it noted as applied. Returns the snapshot's window; `None`
/// when no valid snapshot was found (the model is left as it was).
pub(super) async fn from_snapshot(run: &WindowRun, reason: &str) -> Result<Option<Window>, RuntimeError> {
    let ctx = &run.ctx;
    let history = ctx.network.max_history.load(Ordering::Relaxed);
    for snapshot in snapshot_candidates(run.window, history) {
        let fetched = fetch(ctx, SliceKind::Snapshot, snapshot).await;
        if fetched.slices.is_empty() {
            continue;
        }
        let chooser = ctx.clone();
        let chosen = tokio::task::spawn_blocking(move || choose_snapshot(&chooser, snapshot, &fetched.slices)).await?;
        let Some((values, signers)) = chosen else { continue };
        let all = ctx.all_positions();
        run.engine.run(move |ops| ops.apply(&all, &values)).await??;
        ctx.note_resynced(snapshot, run.window);
        MinerStats::add(&ctx.telemetry.stats.model_resyncs, 1);
        info!(miner = %ctx.id.name, window = run.window, snapshot, signers, reason, "took the network's model from a snapshot");
        return Ok(Some(snapshot));
    }
    warn!(miner = %ctx.id.name, window = run.window, reason, "no valid snapshot of the network's model found; going on with this one");
    Ok(None)
}

/// The snapshot most signers published the same bytes of (ties: the smallest signer), its
/// values, and how many signed it. Invalid objects are skipped.
fn choose_snapshot(ctx: &MinerContext, window: Window, slices: &[FetchedSlice]) -> Option<(Vec<f32>, usize)> {
    let view = ctx.peer_view();
    let mut groups: BTreeMap<[u8; 32], Vec<(Hotkey, &FetchedSlice)>> = BTreeMap::new();
    for slice in slices {
        if let Some(hash) = body_hash(ctx, SliceKind::Snapshot, window, slice, &view.registered) {
            groups.entry(hash).or_default().push((slice.key.hotkey, slice));
        }
    }
    let (_, signers) =
        groups.into_iter().max_by_key(|(_, s)| (s.len(), std::cmp::Reverse(s.iter().map(|(h, _)| h.0).min())))?;
    let (hotkey, slice) = signers.iter().min_by_key(|(h, _)| h.0)?;
    let bytes = std::fs::read(&slice.path).ok()?;
    let expected = ctx.expected_slice(SliceKind::Snapshot, window, Some(*hotkey), Some(&view.registered));
    let values = decode(&bytes, &expected).ok()?.values().into_owned();
    Some((values, signers.len()))
}

/// Compares this node's state slice of `window` with a sample of its peers'.
pub(super) async fn in_step(run: &WindowRun, window: Window) -> InStep {
    let ctx = &run.ctx;
    let fetched = fetch(ctx, SliceKind::State, window).await;
    let checker = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let view = checker.peer_view();
        let own = checker.own_hotkey();
        let mut own_hash = None;
        let mut others: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for slice in &fetched.slices {
            let Some(hash) = body_hash(&checker, SliceKind::State, window, slice, &view.registered) else { continue };
            if slice.key.hotkey == own {
                own_hash = Some(hash);
            } else {
                *others.entry(hash).or_default() += 1;
            }
        }
        judge(own_hash, &others)
    })
    .await
    .unwrap_or(InStep::Unknown)
}

/// The verdict from the own slice's hash and the count of each hash among the peers'.
fn judge(own: Option<[u8; 32]>, others: &BTreeMap<[u8; 32], usize>) -> InStep {
    let Some(own) = own else { return InStep::Unknown };
    let agreeing = others.get(&own).copied().unwrap_or(0);
    let majority = others.iter().filter(|(h, _)| **h != own).map(|(_, n)| *n).max().unwrap_or(0);
    if majority >= OUT_OF_STEP_QUORUM && majority > agreeing {
        InStep::No { agreeing, majority }
    } else if agreeing > 0 || majority > 0 {
        InStep::Yes
    } else {
        InStep::Unknown
    }
}

/// The body hash of a valid `kind` object of `window` (signature, size and values checked).
fn body_hash(
    ctx: &MinerContext,
    kind: SliceKind,
    window: Window,
    slice: &FetchedSlice,
    registered: &std::collections::HashSet<Hotkey>,
) -> Option<[u8; 32]> {
    let bytes = std::fs::read(&slice.path).ok()?;
    let expected = ctx.expected_slice(kind, window, Some(slice.key.hotkey), Some(registered));
    match decode(&bytes, &expected) {
        Ok(view) => Some(view.header.body_hash),
        Err(e) => {
            warn!(miner = %ctx.id.name, %kind, window, hotkey = %slice.key.hotkey, error = %e, "refusing a peer's object");
            None
        }
    }
}

async fn fetch(ctx: &MinerContext, kind: SliceKind, window: Window) -> FetchOutcome {
    let Some(downloader) = lookup::<SliceDownloaderMsg>(&ctx.id.name, ActorKind::SliceDownloader) else {
        warn!(miner = %ctx.id.name, %kind, window, "no slice downloader running");
        return FetchOutcome::default();
    };
    let deadline = ctx.deadlines().fetch();
    match downloader.call(|reply| SliceDownloaderMsg::Fetch { kind, window, reply }, Some(deadline)).await {
        Ok(CallResult::Success(outcome)) => outcome,
        _ => FetchOutcome::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(u8, usize)]) -> BTreeMap<[u8; 32], usize> {
        pairs.iter().map(|(h, n)| ([*h; 32], *n)).collect()
    }

    #[test]
    fn a_node_is_out_of_step_only_when_two_peers_agree_against_it_and_outnumber_its_own() {
        assert_eq!(judge(Some([1; 32]), &counts(&[(1, 3)])), InStep::Yes);
        assert_eq!(judge(Some([1; 32]), &counts(&[(2, 3)])), InStep::No { agreeing: 0, majority: 3 });
        assert_eq!(judge(Some([1; 32]), &counts(&[(1, 1), (2, 2)])), InStep::No { agreeing: 1, majority: 2 });
        // One dissenting peer, or a tie, never moves a node.
        assert_eq!(judge(Some([1; 32]), &counts(&[(2, 1)])), InStep::Yes);
        assert_eq!(judge(Some([1; 32]), &counts(&[(1, 2), (2, 2)])), InStep::Yes);
        // Peers that all disagree with each other (each publishing its own values) neither.
        assert_eq!(judge(Some([1; 32]), &counts(&[(2, 1), (3, 1), (4, 1)])), InStep::Yes);
        assert_eq!(judge(None, &counts(&[(2, 3)])), InStep::Unknown);
        assert_eq!(judge(Some([1; 32]), &counts(&[])), InStep::Unknown);
    }
}
