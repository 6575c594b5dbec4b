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
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{Exchange, SliceIndices, SliceKind, decode};
use tessera_core::validator::{
    CopyCandidate, Evaluation, ScoreBook, ScoringParams, WindowOutcome, find_copies, sketch, sketch_positions,
};
use tessera_core::window::Window;
use tessera_data::{Batch, PageSelection, WindowData, WindowSpec};
use tracing::{debug, info, warn};

use super::WindowRun;
use super::train::token_batches;
use crate::context::{ActorKind, MinerContext, NodeRole, ValidatorState, lock, lookup};
use crate::deadlines::{Deadlines, PAGE_FETCH_CONCURRENCY};
use crate::error::RuntimeError;
use crate::messages::{FetchOutcome, FetchedSlice, SliceDownloaderMsg, WeightSetterMsg};
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
struct Delta {
    uid: u16,
    hotkey: Hotkey,
    slice: FetchedSlice,
}

/// What every miner's update is measured against: the model at the positions of `e`,
/// and the random micro-batches with their loss before any update.
struct Reference {
    indices: Arc<SliceIndices>,
    theta: Arc<Vec<f32>>,
    random: Arc<Vec<Batch>>,
    random_before: f64,
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
    let (deltas, candidates) = valid_deltas(run, e, &miners).await;
    let copiers = find_copies(&candidates, params.copy_similarity);
    let mut outcomes: BTreeMap<u16, WindowOutcome> =
        copiers.iter().map(|(&copier, &original)| (copier, WindowOutcome::Copier { original })).collect();
    let reference = reference(run, e, params).await?;
    let order = book.eval_order(&deltas.keys().copied().filter(|u| !copiers.contains_key(u)).collect::<Vec<_>>());
    let deadline = scoring_deadline(run);
    let (mut skipped, mut eval_secs) = (Vec::new(), 0.0f64);
    for uid in order {
        if deadline.is_some_and(|d| Instant::now() >= d) || ctx.is_stopping() {
            skipped.push(uid);
            continue;
        }
        let started = Instant::now();
        match evaluate_one(run, &deltas[&uid], e, params, &reference).await {
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
    let report = record(&mut book, e, params, &miners, &outcomes, &skipped, eval_secs);
    if let Some(path) = scores_path(ctx) {
        let saved = book.clone();
        tokio::task::spawn_blocking(move || saved.save(&path)).await??;
    }
    *lock(&validator.scores) = Some(book);
    Ok(report)
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
                Some(WindowOutcome::Scored(eval)) if !skipped.contains(&uid) => Some(*eval),
                _ => None,
            };
            Some(UidReport {
                uid,
                outcome: outcome_of(uid),
                score: window_scores.get(&uid).copied(),
                own_improvement: eval.map(|v| v.own_improvement()),
                random_improvement: eval.map(|v| v.random_improvement()),
                moving: entry.moving,
                indicator: entry.indicator,
                weight: weights.get(&uid).copied().unwrap_or(0.0),
            })
        })
        .collect();
    let count = |o: UidOutcome| miners.iter().filter(|(uid, _)| outcome_of(*uid) == o).count() as u32;
    let scored = count(UidOutcome::Scored);
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
    let random_batches = params.eval_batches.max(RANDOM_BATCHES_MIN);
    let random_pages = PageSelection::Keyed(ctx.id.hotkey.private_seed(RANDOM_PAGES_PURPOSE, &[]));
    let random = Arc::new(load_batches(ctx, random_pages, e, random_batches).await?);
    let indices = ctx.indices(e).await?;
    let theta = run.gather(e).await?;
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
) -> (BTreeMap<u16, Delta>, Vec<CopyCandidate>) {
    let ctx = run.ctx.clone();
    let Some(downloader) = lookup::<SliceDownloaderMsg>(&ctx.id.name, ActorKind::SliceDownloader) else {
        warn!(miner = %ctx.id.name, "no slice downloader running; nothing scored this window");
        return (BTreeMap::new(), Vec::new());
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
    let checked =
        tokio::task::spawn_blocking(move || check_deltas(&ctx, e, fetched, &uid_of)).await.unwrap_or_default();
    let mut deltas = BTreeMap::new();
    let mut candidates = Vec::new();
    for (delta, candidate) in checked {
        if deltas.contains_key(&delta.uid) {
            continue; // one delta per miner (a second bucket holding one is ignored)
        }
        candidates.push(candidate);
        deltas.insert(delta.uid, delta);
    }
    (deltas, candidates)
}

/// Decodes and validates each fetched delta (off the async threads) and sketches it.
fn check_deltas(
    ctx: &MinerContext,
    e: Window,
    fetched: FetchOutcome,
    uid_of: &HashMap<Hotkey, u16>,
) -> Vec<(Delta, CopyCandidate)> {
    let [s0, s1, s2, s3, s4, s5, s6, s7, ..] = ctx.id.hotkey.private_seed(SKETCH_PURPOSE, &e.to_le_bytes());
    let positions =
        sketch_positions(ctx.slice_value_count(), SKETCH_LEN, u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]));
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
        match decode(&bytes, &ctx.expected_slice(SliceKind::Delta, e, Some(slice.key.hotkey), registered)) {
            Ok(view) => {
                let candidate = CopyCandidate {
                    uid,
                    body_hash: view.header.body_hash,
                    last_modified_ms: slice.last_modified_ms,
                    sketch: sketch(&view.values(), &positions),
                };
                out.push((Delta { uid, hotkey: slice.key.hotkey, slice }, candidate));
            }
            Err(err) => {
                debug!(miner = %ctx.id.name, uid, reason = err.reason(), error = %err, "rejected a delta: scored as missing");
                ctx.telemetry.stats.reject(err.reason());
            }
        }
    }
    out
}

/// Losses before and after one miner's update on its own and on random micro-batches;
/// the model's positions of `e` are restored afterwards.
async fn evaluate_one(
    run: &WindowRun,
    delta: &Delta,
    e: Window,
    params: &ScoringParams,
    reference: &Reference,
) -> Result<Evaluation, RuntimeError> {
    let ctx = &run.ctx;
    let own = load_batches(ctx, PageSelection::Uid(delta.uid), e, params.eval_batches).await?;
    let (path, work, hotkey) = (delta.slice.path.clone(), ctx.clone(), delta.hotkey);
    let values: Vec<f32> = tokio::task::spawn_blocking(move || -> Result<Vec<f32>, RuntimeError> {
        // One update in memory at a time: read back from the cache, checked again.
        let bytes = std::fs::read(&path).map_err(|source| RuntimeError::CachedSlice { path: path.clone(), source })?;
        let view = decode(&bytes, &work.expected_slice(SliceKind::Delta, e, Some(hotkey), None))?;
        Ok(view.values().into_owned())
    })
    .await??;
    let exchange = ctx.exchange();
    let (indices, theta, random) = (reference.indices.clone(), reference.theta.clone(), reference.random.clone());
    let (own_before, own_after, random_after) = run
        .engine
        .run(move |ops| -> Result<(f64, f64, f64), tessera_model::engine::EngineError> {
            let own = token_batches(&own);
            let own_before = ops.eval(&own)?;
            match exchange {
                Exchange::Update => ops.add(&indices, &values)?,
                Exchange::Seed => ops.apply(&indices, &values)?,
            }
            let measured = ops.eval(&own).and_then(|own_after| Ok((own_after, ops.eval(&token_batches(&random))?)));
            // Restored whatever the measurement did.
            ops.apply(&indices, &theta)?;
            let (own_after, random_after) = measured?;
            Ok((f64::from(own_before), f64::from(own_after), f64::from(random_after)))
        })
        .await??;
    debug!(miner = %ctx.id.name, window = e, hotkey = %hotkey, own_before, own_after, random_after, "evaluated");
    Ok(Evaluation { own_before, own_after, random_before: reference.random_before, random_after })
}

/// The first `n` micro-batches of the pages `selection` gives for window `e` (a miner
/// trains its micro-batches in order, so its first ones are those it surely trained).
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
