//! Phase `score` of a validator. In window `W` it scores window `e = W − offset` (the
//! hparams' `validator_eval_offset`: the deltas of `e` are all uploaded by then), on the
//! model every miner started window `e` from (it then advances one window, as they did).
//!
//! Every registered miner's delta is fetched and validated as a miner would (a rejected
//! or late one is missing); copies are found by body hash and by the cosine of a secret
//! sketch; then, least recently scored first and while the window's time lasts, each
//! update is applied to the model's positions of `e`, the loss measured on the miner's
//! own first micro-batches and on random ones, and the positions restored. Every
//! computation runs on the engine thread; the scores are saved atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use rand::SeedableRng;
use std::str::FromStr;
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{
    CLIP_FACTOR, Exchange, SliceIndices, SliceKind, Zeros, centred_radius, clip_radius, deviation_norm, far_beyond,
    scales_within,
};

use tessera_core::storage::BucketLocation;
use tessera_core::validator::{
    Control, CopyCandidate, Evaluation, ScoreBook, ScoringParams, Sighting, WindowOutcome, find_copies, order_keys,
    sketch, sketch_positions,
};
use tessera_core::window::Window;
use tessera_data::{Batch, PageSelection, WindowData, WindowSpec};
use tessera_model::engine::EngineError;
use tracing::{debug, info, warn};

use super::WindowRun;
use super::consensus::{Consensus, applied_change, apply_change, consensus};
use super::train::token_batches;
use crate::bounds::STATE_VERDICT_WINDOWS_KEPT as STATE_VERDICT_WINDOWS;
use crate::context::{ActorKind, MinerContext, NodeRole, ValidatorState, lock, lookup};
use crate::deadlines::{Deadlines, PAGE_FETCH_CONCURRENCY};
use crate::error::RuntimeError;
use crate::messages::{FetchOutcome, FetchedSlice, SliceDownloaderMsg, SliceVerdict, WeightSetterMsg};
use crate::sparse::delta_values;
use crate::stats::{MinerStats, ScoredWindow, UidOutcome, UidReport};

/// Values per update compared for copies.
const SKETCH_LEN: usize = 4096;

/// The validator's own draws, from its secret key ([`LoadedHotkey::private_seed`]): no
/// miner can predict the random pages or the copy sketch's positions (to train on them,
/// or to hide a copy), and the same validator draws the same ones for a window again, so
/// a lockstep devnet scores the same way every run.
///
/// [`LoadedHotkey::private_seed`]: tessera_core::wallet::LoadedHotkey::private_seed
const RANDOM_PAGES_PURPOSE: &str = "validator random pages";
const SKETCH_PURPOSE: &str = "validator copy sketch";
const OWN_SAMPLE_PURPOSE: &str = "validator own sample";

/// At least this many random micro-batches per evaluation.
const RANDOM_BATCHES_MIN: usize = 4;

/// The scores file in the validator's state directory.
pub fn scores_path(ctx: &MinerContext) -> Option<PathBuf> {
    match &ctx.id.role {
        NodeRole::Validator { state_dir } => Some(state_dir.join("scores.json")),
        NodeRole::Miner => None,
    }
}

/// A miner's valid delta of the window, read back from the cache when evaluated.
pub(super) struct Delta {
    pub(super) uid: u16,
    pub(super) hotkey: Hotkey,
    pub(super) slice: FetchedSlice,
    /// Its distance from the clip centre (as every miner's aggregate measures it).
    pub(super) distance: f64,
    /// The clip's scale for it among the window's deltas: scored as miners apply it.
    pub(super) scale: f32,
    /// Its distance over the window's median: paid per norm beyond 1 ([`Evaluation::per_norm`]).
    pub(super) norm_ratio: f64,
}

/// What every miner's update is measured against: the model at the positions of `e`,
/// and the random micro-batches with their loss before any update.
pub(super) struct Reference {
    pub(super) indices: Arc<SliceIndices>,
    pub(super) theta: Arc<Vec<f32>>,
    pub(super) random: Arc<Vec<Batch>>,
    pub(super) random_before: f64,
}

/// Scores window `e`, records and logs the report, and tells the WeightSetter.
pub(super) async fn run(run: &WindowRun, e: Window) {
    let ctx = &run.ctx;
    let Some(validator) = ctx.validator.as_ref() else {
        warn!(miner = %ctx.id.name, "not a validator: nothing scored");
        return;
    };
    let params = ScoringParams::from_hparams(&ctx.network.hparams);
    match score(run, validator, e, &params).await {
        Ok(report) => {
            MinerStats::add(&validator.stats.miners_scored, u64::from(report.scored));
            MinerStats::add(&validator.stats.miners_skipped, u64::from(report.skipped));
            log_report(ctx, &report);
            validator.stats.record_window(report);
            if let Some(setter) = lookup::<WeightSetterMsg>(&ctx.id.name, ActorKind::WeightSetter) {
                let _ = setter.cast(WeightSetterMsg::ScoresUpdated { window: e });
            }
        }
        Err(err) => warn!(miner = %ctx.id.name, window = e, error = %err, "scoring failed this window"),
    }
}

/// Scores every registered miner's delta of window `e` and folds the outcomes into
/// the score book, which is saved before this returns.
async fn score(
    run: &WindowRun,
    validator: &ValidatorState,
    e: Window,
    params: &ScoringParams,
) -> Result<ScoredWindow, RuntimeError> {
    let ctx = &run.ctx;
    let neurons = ctx.peer_view().metagraph.neurons.clone();
    let miners: Vec<(u16, Hotkey)> =
        neurons.iter().enumerate().map(|(u, h)| (u as u16, *h)).filter(|(u, _)| *u != ctx.id.uid).collect();
    let mut book = book(ctx, validator)?;
    for uid in book.sync_metagraph(&neurons) {
        info!(miner = %ctx.id.name, uid, "a new hotkey holds this UID: its score starts from zero");
    }
    let reference = reference(run, e, params).await?;
    let center = (ctx.exchange() == Exchange::Seed).then(|| reference.theta.clone());
    let (deltas, candidates, not_read) = valid_deltas(run, e, &miners, center).await;
    let mut candidates = candidates;
    for candidate in &mut candidates {
        candidate.vouched = book.uids.get(&candidate.uid).is_some_and(|s| s.gate() > 0.0);
    }
    let novelty = params.copy_novelty;
    // The validator's own poll slot (not the order key, whose same-server rank does not
    // order two servers: a time liar on its own server would rank first in a slot it shares
    // with its victim, measured branding `miner1` a copier in 3–11 of 18 real-time windows).
    let slot = |uid: u16| deltas.get(&uid).and_then(|d| d.slice.first_seen_ms.or(d.slice.last_modified_ms));
    let seen: HashMap<u16, (Option<i64>, [u8; 32])> =
        candidates.iter().map(|c| (c.uid, (slot(c.uid), c.body_hash))).collect();
    let copiers = tokio::task::spawn_blocking(move || find_copies(&candidates, novelty)).await?;
    let mut outcomes: BTreeMap<u16, WindowOutcome> = BTreeMap::new();
    for (&copier, &original) in &copiers {
        // The same bytes seen in the same poll slot: which came first is not observed (a
        // Sybil pair, or a copier as fast as the watcher). Neither is paid; neither is branded.
        let tied = seen.get(&copier).is_some_and(|c| c.0.is_some() && seen.get(&original) == Some(c));
        if tied {
            info!(miner = %ctx.id.name, window = e, copier, original, "identical updates first seen together: neither paid");
            outcomes.insert(copier, WindowOutcome::Missing);
            outcomes.insert(original, WindowOutcome::Missing);
        } else {
            debug!(miner = %ctx.id.name, window = e, copier, original, "a copy");
            outcomes.entry(copier).or_insert(WindowOutcome::Copier { original });
        }
    }
    let order = book.eval_order(&deltas.keys().copied().filter(|u| !outcomes.contains_key(u)).collect::<Vec<_>>());
    let deadline = scoring_deadline(run);
    let consensus = match consensus(run, e, &deltas, &order, &reference).await {
        Ok(c) => c,
        Err(err) => {
            warn!(miner = %ctx.id.name, window = e, error = %err, "no consensus measured: own data against random only");
            None
        }
    };
    // Miners whose bucket was not even tried (skipped for failing): not scored this window.
    let (mut skipped, mut eval_secs) = (not_read, 0.0f64);
    for uid in order {
        if deadline.is_some_and(|d| Instant::now() >= d) || ctx.is_stopping() {
            skipped.push(uid);
            continue;
        }
        let started = Instant::now();
        match evaluate_one(run, &deltas[&uid], e, params, &reference, consensus.as_ref()).await {
            Ok(eval) => {
                outcomes.insert(uid, WindowOutcome::Scored(eval));
                eval_secs += started.elapsed().as_secs_f64();
            }
            Err(err) => {
                warn!(miner = %ctx.id.name, uid, window = e, error = %err, "could not evaluate this delta; scored as missing");
                outcomes.insert(uid, WindowOutcome::Missing);
            }
        }
    }
    let scored: Vec<u16> =
        outcomes.iter().filter(|(_, o)| matches!(o, WindowOutcome::Scored(_))).map(|(uid, _)| *uid).collect();
    // The scale: those whose update improved the random batches (they trained usefully);
    // lazy and noise updates are scored too, but their senders' states sit near the validator.
    let trained: Vec<u16> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, WindowOutcome::Scored(eval) if eval.random_improvement() > 0.0))
        .map(|(uid, _)| *uid)
        .collect();
    for uid in state_faults(validator, e, &miners, &scored, &trained) {
        if let Some(WindowOutcome::Scored(eval)) = outcomes.get(&uid).copied() {
            info!(miner = %ctx.id.name, window = e, uid, "its state slice was withheld, refused or far beyond the others': the window pays nothing");
            outcomes.insert(uid, WindowOutcome::StateFault(eval));
        }
    }
    let report = record(&mut book, e, params, &miners, &outcomes, &skipped, eval_secs);
    if let Some(path) = scores_path(ctx) {
        let saved = book.clone();
        tokio::task::spawn_blocking(move || saved.save(&path)).await??;
    }
    *lock(&validator.scores) = Some(book);
    Ok(report)
}

/// Keeps what became of each miner's state slice of `window` in this validator's average.
pub(super) fn note_state_verdicts(validator: &ValidatorState, window: Window, verdicts: Vec<(Hotkey, SliceVerdict)>) {
    let mut kept = lock(&validator.state_verdicts);
    kept.insert(window, verdicts);
    while kept.len() > STATE_VERDICT_WINDOWS {
        kept.pop_first();
    }
}

/// The miners among `scored` whose state slice of window `e` was refused or lies
/// [`far_beyond`] the median distance of the states of `trained` (scored miners whose
/// update improved the random batches: the validator, which does not train, is farther
/// from each of them by its training; lazy or noisy peers sit near it and would shrink
/// the scale: measured, with them in the scale every trainer was a fault in 1–4 windows per
/// real-time run); none when no average of `e` ran here.
/// A state absent from the average is not a fault: in real time a slice not fetched in
/// time looks the same as one withheld (measured: honest miners flagged at a run's end).
fn state_faults(
    validator: &ValidatorState,
    e: Window,
    miners: &[(u16, Hotkey)],
    scored: &[u16],
    trained: &[u16],
) -> Vec<u16> {
    let Some(verdicts) = lock(&validator.state_verdicts).remove(&e) else { return Vec::new() };
    let verdict_of: HashMap<Hotkey, SliceVerdict> = verdicts.into_iter().collect();
    let judged: Vec<(u16, SliceVerdict)> = miners
        .iter()
        .filter(|(uid, _)| scored.contains(uid))
        .filter_map(|(uid, hotkey)| verdict_of.get(hotkey).map(|v| (*uid, *v)))
        .collect();
    let distances: Vec<f64> = judged
        .iter()
        .filter(|(uid, _)| trained.contains(uid))
        .filter_map(|(_, v)| match v {
            SliceVerdict::Counted { distance } => Some(*distance),
            SliceVerdict::Rejected => None,
        })
        .collect();
    let median = clip_radius(&distances, 1.0, Zeros::Count);
    judged
        .into_iter()
        .filter(|(uid, verdict)| {
            let fault = match verdict {
                SliceVerdict::Counted { distance } => far_beyond(*distance, median),
                SliceVerdict::Rejected => true,
            };
            if fault {
                debug!(window = e, uid, ?verdict, median, "a state fault");
            }
            fault
        })
        .map(|(uid, _)| uid)
        .collect()
}

/// Folds the window's outcomes into the score book and reports every miner's.
fn record(
    book: &mut ScoreBook,
    e: Window,
    params: &ScoringParams,
    miners: &[(u16, Hotkey)],
    outcomes: &BTreeMap<u16, WindowOutcome>,
    skipped: &[u16],
    eval_secs: f64,
) -> ScoredWindow {
    let outcome_of = |uid: u16| match outcomes.get(&uid) {
        _ if skipped.contains(&uid) => UidOutcome::Skipped,
        Some(WindowOutcome::Scored(_)) => UidOutcome::Scored,
        Some(WindowOutcome::StateFault(_)) => UidOutcome::StateFault,
        Some(WindowOutcome::Copier { .. }) => UidOutcome::Copier,
        _ => UidOutcome::Missing,
    };
    let mut window_scores = HashMap::new();
    for &(uid, hotkey) in miners {
        if !skipped.contains(&uid) {
            // No time this window: neither rewarded nor penalised.
            let outcome = outcomes.get(&uid).copied().unwrap_or(WindowOutcome::Missing);
            window_scores.insert(uid, book.record(e, uid, hotkey, outcome, params));
        }
    }
    book.finish_window(e);
    let weights: HashMap<u16, f64> = book.weights(params).into_iter().collect();
    let uids: Vec<UidReport> = miners
        .iter()
        .filter_map(|&(uid, _)| {
            let entry = book.uids.get(&uid)?;
            let eval = match outcomes.get(&uid) {
                Some(WindowOutcome::Scored(eval) | WindowOutcome::StateFault(eval)) if !skipped.contains(&uid) => {
                    Some(*eval)
                }
                _ => None,
            };
            Some(UidReport {
                uid,
                outcome: outcome_of(uid),
                score: window_scores.get(&uid).copied(),
                own_improvement: eval.map(|v| v.own_improvement()),
                random_improvement: eval.map(|v| v.random_improvement()),
                specificity: eval.map(|v| v.specificity()),
                moving: entry.moving,
                indicator: entry.indicator,
                weight: weights.get(&uid).copied().unwrap_or(0.0),
            })
        })
        .collect();
    let count = |o: UidOutcome| miners.iter().filter(|(uid, _)| outcome_of(*uid) == o).count() as u32;
    let scored = count(UidOutcome::Scored) + count(UidOutcome::StateFault);
    ScoredWindow {
        window: e,
        scored,
        skipped: skipped.len() as u32,
        missing: count(UidOutcome::Missing),
        copiers: outcomes.values().filter(|o| matches!(o, WindowOutcome::Copier { .. })).count() as u32,
        eval_secs_per_miner: if scored > 0 { eval_secs / f64::from(scored) } else { 0.0 },
        uids,
    }
}

/// The score book: in memory, else from the state directory (a restarted process
/// loses nothing), else new.
fn book(ctx: &MinerContext, validator: &ValidatorState) -> Result<ScoreBook, RuntimeError> {
    if let Some(book) = lock(&validator.scores).clone() {
        return Ok(book);
    }
    let loaded = match scores_path(ctx) {
        Some(path) => {
            let (loaded, aside) = ScoreBook::load_or_set_aside(&path)?;
            if let Some(aside) = aside {
                warn!(
                    miner = %ctx.id.name,
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "the validator's scores file was damaged: moved aside, scoring starts again from zero"
                );
            }
            loaded
        }
        None => None,
    };
    if let Some(book) = &loaded {
        info!(miner = %ctx.id.name, window = book.window, uids = book.uids.len(), "validator scores reloaded");
    }
    Ok(loaded.filter(|b| b.netuid == ctx.id.netuid).unwrap_or_else(|| ScoreBook::new(ctx.id.netuid)))
}

/// The random micro-batches (pages no miner was assigned) with their loss, and the model
/// at the positions of `e`. More random micro-batches than own ones: the random
/// improvement is the reference every miner's own improvement is compared with, so its
/// noise is kept low (it is measured once per window before and once per miner after).
async fn reference(run: &WindowRun, e: Window, params: &ScoringParams) -> Result<Reference, RuntimeError> {
    let ctx = &run.ctx;
    let random_batches = random_batches(params);
    let random_pages = PageSelection::Keyed(ctx.id.hotkey.private_seed(RANDOM_PAGES_PURPOSE, &[]));
    let random = Arc::new(load_batches(ctx, random_pages, e, random_batches).await?);
    let indices = ctx.positions(SliceKind::Delta, e).await?;
    let theta = run.gather_delta(e).await?;
    let measured = random.clone();
    let random_before = f64::from(run.engine.run(move |ops| ops.eval(&token_batches(&measured))).await??);
    Ok(Reference { indices, theta, random, random_before })
}

/// Every registered miner's valid delta of `e` (validated as a miner validates it),
/// and the copy check's view of each.
async fn valid_deltas(
    run: &WindowRun,
    e: Window,
    miners: &[(u16, Hotkey)],
    center: Option<Arc<Vec<f32>>>,
) -> (BTreeMap<u16, Delta>, Vec<CopyCandidate>, Vec<u16>) {
    let ctx = run.ctx.clone();
    let Some(downloader) = lookup::<SliceDownloaderMsg>(&ctx.id.name, ActorKind::SliceDownloader) else {
        warn!(miner = %ctx.id.name, "no slice downloader running; nothing scored this window");
        return (BTreeMap::new(), Vec::new(), Vec::new());
    };
    let deadline = ctx.deadlines().fetch();
    let fetched = match downloader
        .call(|reply| SliceDownloaderMsg::Fetch { kind: SliceKind::Delta, window: e, reply }, Some(deadline))
        .await
    {
        Ok(CallResult::Success(outcome)) => outcome,
        _ => FetchOutcome::default(),
    };
    let uid_of: HashMap<Hotkey, u16> = miners.iter().map(|(u, h)| (*h, *u)).collect();
    let committers = ctx.committers_by_bucket();
    let mut not_read: Vec<u16> = fetched
        .not_tried
        .iter()
        .filter_map(|bucket| committers.get(bucket))
        .flatten()
        .filter_map(|hotkey| uid_of.get(hotkey).copied())
        .collect();
    not_read.sort_unstable();
    not_read.dedup();
    let center_values = center.clone();
    let checked = tokio::task::spawn_blocking(move || check_deltas(&ctx, e, fetched, &uid_of, center.as_deref()))
        .await
        .unwrap_or_default();
    let mut deltas = BTreeMap::new();
    let mut candidates = Vec::new();
    let mut sightings = Vec::new();
    for (delta, candidate) in checked {
        if deltas.contains_key(&delta.uid) {
            continue; // one delta per miner (a second bucket holding one is ignored)
        }
        let origin = BucketLocation::from_str(&delta.slice.bucket).ok().and_then(|l| l.endpoint_origin());
        sightings.push(Sighting {
            first_seen_ms: candidate.first_seen_ms,
            origin: origin.unwrap_or_else(|| "aws".into()),
            last_modified_ms: delta.slice.last_modified_ms,
        });
        candidates.push(candidate);
        deltas.insert(delta.uid, delta);
    }
    for ((candidate, key), sighting) in candidates.iter_mut().zip(order_keys(&sightings)).zip(&sightings) {
        debug!(miner = %run.ctx.id.name, window = e, uid = candidate.uid, first_seen_ms = sighting.first_seen_ms, last_modified_ms = ?sighting.last_modified_ms, origin = %sighting.origin, "sighting");
        candidate.first_seen_ms = key;
    }
    // Each update clipped as every miner's aggregate clips it among the same updates.
    let distances: Vec<f64> = deltas.values().map(|d| d.distance).collect();
    let zeros = if center_values.is_some() { Zeros::Count } else { Zeros::Skip };
    let radius = match &center_values {
        Some(center) => centred_radius(&distances, center),
        // SparseLoCo's aggregate pulls each update back to the median norm.
        None if run.ctx.exchange().is_compressed() => clip_radius(&distances, 1.0, zeros),
        None => clip_radius(&distances, CLIP_FACTOR, zeros),
    };
    let scales = scales_within(&distances, radius);
    let median = clip_radius(&distances, 1.0, zeros);
    for (delta, scale) in deltas.values_mut().zip(scales) {
        delta.scale = scale;
        delta.norm_ratio = if median > 0.0 { delta.distance / median } else { 1.0 };
    }
    // Copies are compared as applied too: a poisoner's huge update must not dominate the
    // others' comparison.
    for candidate in &mut candidates {
        let scale = deltas.get(&candidate.uid).map_or(1.0, |d| d.scale);
        candidate.sketch.iter_mut().for_each(|v| *v *= scale);
    }
    (deltas, candidates, not_read)
}

/// Decodes and validates each fetched delta (off the async threads) and sketches it.
fn check_deltas(
    ctx: &MinerContext,
    e: Window,
    fetched: FetchOutcome,
    uid_of: &HashMap<Hotkey, u16>,
    center: Option<&Vec<f32>>,
) -> Vec<(Delta, CopyCandidate)> {
    let [s0, s1, s2, s3, s4, s5, s6, s7, ..] = ctx.id.hotkey.private_seed(SKETCH_PURPOSE, &e.to_le_bytes());
    let positions = sketch_positions(
        ctx.value_count(SliceKind::Delta),
        SKETCH_LEN,
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    );
    let view = ctx.peer_view();
    let registered = (view.refreshed_ms > 0).then_some(&view.registered);
    let mut out = Vec::new();
    for slice in fetched.slices {
        let Some(&uid) = uid_of.get(&slice.key.hotkey) else { continue };
        let bytes = match std::fs::read(&slice.path) {
            Ok(b) => b,
            Err(err) => {
                warn!(miner = %ctx.id.name, path = %slice.path.display(), error = %err, "cannot read a cached delta");
                continue;
            }
        };
        match delta_values(ctx, &bytes, e, Some(slice.key.hotkey), registered) {
            Ok(view) => {
                let values = view.values;
                // What the slice changes: its values less the centre (seed exchange), or the update.
                let change = match center {
                    Some(center) => values.iter().zip(center.iter()).map(|(v, c)| v - c).collect(),
                    None => values.to_vec(),
                };
                let candidate = CopyCandidate {
                    uid,
                    body_hash: view.body_hash,
                    // The validator's own sighting (it watched the window); its claimed
                    // upload time only when it did not.
                    first_seen_ms: slice.first_seen_ms.or(slice.last_modified_ms).unwrap_or(0),
                    sketch: sketch(&change, &positions),
                    vouched: false,
                };
                let distance = deviation_norm(&values, center.map(Vec::as_slice));
                out.push((
                    Delta { uid, hotkey: slice.key.hotkey, slice, distance, scale: 1.0, norm_ratio: 1.0 },
                    candidate,
                ));
            }
            Err(err) => {
                debug!(miner = %ctx.id.name, uid, reason = err.reason(), error = %err, "rejected a delta: scored as missing");
                ctx.telemetry.stats.reject(err.reason());
            }
        }
    }
    out
}

/// Losses before and after one miner's update on its own and on random micro-batches,
/// and on its own under the others' consensus; the model's positions of `e` are restored
/// afterwards.
async fn evaluate_one(
    run: &WindowRun,
    delta: &Delta,
    e: Window,
    params: &ScoringParams,
    reference: &Reference,
    consensus: Option<&Consensus>,
) -> Result<Evaluation, RuntimeError> {
    let ctx = &run.ctx;
    let own = own_sample(ctx, delta.uid, e, random_batches(params)).await?;
    let change = applied_change(ctx, delta, e, &reference.theta).await?;
    let others = consensus.and_then(|c| c.others(delta.uid, &change));
    let (exchange, outer_lr, hotkey) = (ctx.exchange(), run.outer_lr(), delta.hotkey);
    let (indices, theta, random) = (reference.indices.clone(), reference.theta.clone(), reference.random.clone());
    let (own_before, own_after, random_after, control) = run
        .engine
        .run(move |ops| -> Result<(f64, f64, f64, Option<Control>), EngineError> {
            let own = token_batches(&own);
            let own_before = ops.eval(&own)?;
            // As miners apply it: clipped, and an update at the outer learning rate.
            apply_change(ops, exchange, &indices, &theta, &change, outer_lr)?;
            let measured = ops.eval(&own).and_then(|own_after| Ok((own_after, ops.eval(&token_batches(&random))?)));
            // Restored whatever the measurement did.
            ops.apply(&indices, &theta)?;
            let (own_after, random_after) = measured?;
            // The control: the same batches under the mean of the others' updates.
            let control = match others {
                Some(others) => {
                    apply_change(ops, exchange, &indices, &theta, &others, outer_lr)?;
                    let measured = ops.eval(&own).and_then(|o| Ok((o, ops.eval(&token_batches(&random))?)));
                    ops.apply(&indices, &theta)?;
                    let (own_after, random_after) = measured?;
                    Some(Control { own_after: f64::from(own_after), random_after: f64::from(random_after) })
                }
                None => None,
            };
            Ok((f64::from(own_before), f64::from(own_after), f64::from(random_after), control))
        })
        .await??;
    debug!(miner = %ctx.id.name, window = e, hotkey = %hotkey, own_before, own_after, random_after, ?control, "evaluated");
    Ok(Evaluation { own_before, own_after, random_before: reference.random_before, random_after, control }
        .per_norm(delta.norm_ratio))
}

/// Random micro-batches per evaluation (own ones are as many, where the miner has them).
fn random_batches(params: &ScoringParams) -> usize {
    params.eval_batches.max(RANDOM_BATCHES_MIN)
}

/// `n` of the micro-batches miner `uid` was to train in window `e`, drawn with a seed only
/// this validator knows: a miner cannot tell which it will be scored on, so only
/// training on all of them pays. The micro-batches it was to train are the first
/// `fixed_micro_batches` under fixed compute, else all of its pages'.
async fn own_sample(ctx: &MinerContext, uid: u16, e: Window, n: usize) -> Result<Vec<Batch>, RuntimeError> {
    let mut batches = load_batches(ctx, PageSelection::Uid(uid), e, usize::MAX).await?;
    let fixed = ctx.settings.fixed_micro_batches;
    if fixed > 0 {
        batches.truncate(fixed);
    }
    if batches.len() <= n {
        return Ok(batches);
    }
    let seed = ctx.id.hotkey.private_seed(OWN_SAMPLE_PURPOSE, &[&uid.to_le_bytes()[..], &e.to_le_bytes()[..]].concat());
    let mut rng = rand::rngs::StdRng::from_seed(seed);
    let mut chosen = rand::seq::index::sample(&mut rng, batches.len(), n).into_vec();
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(|i| batches[i].clone()).collect())
}

/// The first `n` micro-batches of the pages `selection` gives for window `e`.
async fn load_batches(
    ctx: &MinerContext,
    selection: PageSelection,
    e: Window,
    n: usize,
) -> Result<Vec<Batch>, RuntimeError> {
    let pages = match selection {
        PageSelection::Uid(_) => ctx.settings.pages_per_window,
        // Random pages: enough of them for `n` micro-batches from several pages.
        PageSelection::Random | PageSelection::Keyed(_) => ctx.settings.pages_per_window.max(n),
    };
    let spec = WindowSpec {
        selection,
        window: e,
        n_pages: pages.max(1),
        seq_len: ctx.network.hparams.sequence_length,
        batch_size: ctx.settings.batch_size.max(1),
        max_concurrent_fetches: PAGE_FETCH_CONCURRENCY,
    };
    let mut data = WindowData::load(ctx.model.spec.source.as_ref(), &ctx.model.spec.tokenizer, &spec).await?;
    data.batches.truncate(n.max(1));
    Ok(data.batches)
}

/// When scoring must stop so the window's own work fits ([`Deadlines::scoring_cutoff_ms`]);
/// none under fixed compute, where the clock waits for every node.
fn scoring_deadline(run: &WindowRun) -> Option<Instant> {
    if run.ctx.settings.fixed_micro_batches > 0 {
        return None;
    }
    let (start, end) = run.bounds()?;
    let left = (Deadlines::scoring_cutoff_ms(start, end) - crate::context::unix_ms()).max(0) as u64;
    Some(Instant::now() + Duration::from_millis(left))
}

fn log_report(ctx: &MinerContext, report: &ScoredWindow) {
    let scores: Vec<String> = report
        .uids
        .iter()
        .map(|u| match u.score {
            Some(s) => format!("{}:{}:{s:+.4}/w{:.3}", u.uid, u.outcome, u.weight),
            None => format!("{}:{}/w{:.3}", u.uid, u.outcome, u.weight),
        })
        .collect();
    info!(
        miner = %ctx.id.name,
        window = report.window,
        scored = report.scored,
        skipped = report.skipped,
        missing = report.missing,
        copiers = report.copiers,
        eval_secs_per_miner = format!("{:.3}", report.eval_secs_per_miner),
        scores = scores.join(" "),
        "validator scored a window"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_withheld_refused_or_far_beyond_is_a_fault_and_an_unjudged_window_none() {
        let validator = ValidatorState::default();
        let miners: Vec<(u16, Hotkey)> = (0..6u8).map(|i| (u16::from(i), Hotkey([i; 32]))).collect();
        let counted = |distance: f64| SliceVerdict::Counted { distance };
        let verdicts = vec![
            (Hotkey([0; 32]), counted(1.0)),
            (Hotkey([1; 32]), counted(1.2)),
            (Hotkey([2; 32]), counted(0.9)),
            (Hotkey([3; 32]), counted(1e6)),
            (Hotkey([4; 32]), SliceVerdict::Rejected),
            // UID 5's state is not among them (withheld, or not fetched in time).
        ];
        let all: Vec<u16> = (0..6).collect();
        note_state_verdicts(&validator, 5, verdicts.clone());
        assert_eq!(
            state_faults(&validator, 4, &miners, &all, &all),
            Vec::<u16>::new(),
            "no average of window 4 ran here"
        );
        assert_eq!(state_faults(&validator, 5, &miners, &all, &all), vec![3, 4], "far and refused; UID 5's is absent");
        assert_eq!(state_faults(&validator, 5, &miners, &all, &all), Vec::<u16>::new(), "each window judged once");
        // Only scored miners are judged, and only they set the scale: many non-training
        // peers near the validator (distance ~0) do not make the trainers "far".
        let mut crowd = verdicts;
        crowd.extend((10..30u8).map(|i| (Hotkey([i; 32]), counted(0.001))));
        note_state_verdicts(&validator, 6, crowd);
        assert_eq!(state_faults(&validator, 6, &miners, &[0, 1, 2, 3], &[0, 1, 2, 3]), vec![3]);
        // Scored but untrained peers (lazy, noise) near the validator do not set the scale.
        let mut lazy = vec![(Hotkey([0; 32]), counted(1.0)), (Hotkey([1; 32]), counted(1.1))];
        lazy.extend((2..6u8).map(|i| (Hotkey([i; 32]), counted(0.001))));
        note_state_verdicts(&validator, 7, lazy);
        assert_eq!(state_faults(&validator, 7, &miners, &all, &[0, 1]), Vec::<u16>::new());
        for w in 0..20 {
            note_state_verdicts(&validator, w, Vec::new());
        }
        assert_eq!(lock(&validator.state_verdicts).len(), STATE_VERDICT_WINDOWS, "bounded");
    }
}
