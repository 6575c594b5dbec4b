//! One window of the validator, run as a task its Evaluator starts. In window `W` it
//! scores window `e = W − offset` (the hparams' `validator_eval_offset`: the deltas of `e`
//! are all uploaded by then) and then brings its model one window forward, exactly as a
//! miner does but without training: the mean delta of `e` in, the state mean of `e + 1`
//! in. So the model it scores against is the one every miner started window `e` from.
//!
//! Scoring `e`: every registered miner's delta is fetched and validated as a miner
//! would (a rejected or late one is missing); copies are found by body hash and by the
//! cosine of a secret sketch; then, least recently scored first and while the window's
//! time lasts, each update is applied to the model's positions of `e`, the loss measured
//! on the miner's own first micro-batches and on random ones, and the positions restored.
//! Every computation runs on the engine thread; the scores are saved atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{Exchange, SliceKind, decode};
use tessera_core::validator::{
    CopyCandidate, Evaluation, ScoreBook, ScoringParams, WindowOutcome, find_copies, sketch, sketch_positions,
};
use tessera_core::window::Window;
use tessera_data::{Batch, PageSelection, WindowData, WindowSpec};
use tracing::{debug, info, warn};

use crate::context::{ActorKind, MinerContext, NodeRole, lock, lookup};
use crate::error::RuntimeError;
use crate::messages::{FetchOutcome, FetchedSlice, SliceDownloaderMsg, WeightSetterMsg, WindowOutcome as JobOutcome};
use crate::stats::{MinerStats, ScoredWindow, UidReport, WindowSummary};
use crate::window_job::{WindowJob, token_batches};

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
    match &ctx.role {
        NodeRole::Validator { state_dir } => Some(state_dir.join("scores.json")),
        NodeRole::Miner => None,
    }
}

/// One window of the validator (the shared steps are the miner's [`WindowJob`]'s).
pub(crate) struct ValidatorJob {
    pub base: WindowJob,
}

/// A miner's valid delta of the window, read back from the cache when evaluated.
struct Delta {
    uid: u16,
    hotkey: Hotkey,
    slice: FetchedSlice,
}

impl ValidatorJob {
    pub async fn run(self) -> Result<JobOutcome, RuntimeError> {
        let base = &self.base;
        let (ctx, window) = (&base.ctx, base.window);
        let params = ScoringParams::from_hparams(&ctx.hparams);
        if let Some(from) = base.resync_from {
            base.replay_state(from).await?;
        }
        let evaluated = window.checked_sub(params.eval_offset);
        if let Some(e) = evaluated {
            match self.score(e, &params).await {
                Ok(report) => {
                    MinerStats::add(&ctx.validator_stats.miners_scored, u64::from(report.scored));
                    MinerStats::add(&ctx.validator_stats.miners_skipped, u64::from(report.skipped));
                    log_report(ctx, &report);
                    ctx.validator_stats.record_window(report);
                    if let Some(setter) = lookup::<WeightSetterMsg>(&ctx.name, ActorKind::WeightSetter) {
                        let _ = setter.cast(WeightSetterMsg::ScoresUpdated { window: e });
                    }
                }
                Err(e2) => warn!(miner = %ctx.name, window = e, error = %e2, "scoring failed this window"),
            }
        }
        // One window forward, as the miners went: the mean delta of `e`, the state of `e + 1`.
        let (mut state_slices, mut delta_slices) = (0, 0);
        if let Some(e) = evaluated {
            match ctx.exchange() {
                Exchange::Update => {
                    let (mean, accepted) = base.fetch_mean(SliceKind::Delta, e).await;
                    if let Some(mean) = mean {
                        let outer_lr = base.outer_lr();
                        let scaled: Vec<f32> = mean.iter().map(|m| outer_lr * m).collect();
                        let indices = ctx.indices(e).await?;
                        base.engine.run(move |ops| ops.add(&indices, &scaled)).await??;
                        delta_slices = accepted;
                        state_slices = base.average_and_apply(SliceKind::State, e + 1).await?;
                        if state_slices > 0 {
                            base.restore_outer_scaling(e + 1, &mean).await?;
                        }
                    } else {
                        state_slices = base.average_and_apply(SliceKind::State, e + 1).await?;
                    }
                }
                Exchange::Seed => {
                    delta_slices = base.average_and_apply(SliceKind::Delta, e).await?;
                    state_slices = base.average_and_apply(SliceKind::State, e + 1).await?;
                }
            }
        }
        let eval_every = ctx.settings.eval_every;
        let eval_loss = if eval_every > 0 && window.is_multiple_of(eval_every) {
            base.evaluate().await.map_err(|e| warn!(miner = %ctx.name, error = %e, "held-out evaluation failed")).ok()
        } else {
            None
        };
        let summary = WindowSummary {
            window,
            loss: f32::NAN,
            tokens: 0,
            tokens_per_sec: 0.0,
            micro_batches: 0,
            sample_rate: 0.0,
            utilization: 0.0,
            lr: 0.0,
            step: 0,
            state_slices,
            delta_slices,
            idle_reason: Some("a validator does not train".to_owned()),
            eval_loss,
            bytes_downloaded: 0,
        };
        base.finish(summary).await?;
        Ok(JobOutcome { window, trained: false })
    }

    /// Scores every registered miner's delta of window `e` and folds the outcomes into
    /// the score book, which is saved before this returns.
    async fn score(&self, e: Window, params: &ScoringParams) -> Result<ScoredWindow, RuntimeError> {
        let base = &self.base;
        let ctx = &base.ctx;
        let view = ctx.peer_view();
        let neurons = view.metagraph.neurons.clone();
        let miners: Vec<(u16, Hotkey)> =
            neurons.iter().enumerate().map(|(u, h)| (u as u16, *h)).filter(|(u, _)| *u != ctx.uid).collect();

        let mut book = self.book()?;
        for uid in book.sync_metagraph(&neurons) {
            info!(miner = %ctx.name, uid, "a new hotkey holds this UID: its score starts from zero");
        }

        let (deltas, candidates) = self.valid_deltas(e, &miners).await;
        let copiers = find_copies(&candidates, params.copy_similarity);
        let mut outcomes: BTreeMap<u16, (WindowOutcome, Option<Evaluation>)> = BTreeMap::new();
        for (&copier, &original) in &copiers {
            outcomes.insert(copier, (WindowOutcome::Copier { original }, None));
        }

        // The random micro-batches (pages no miner was assigned), and the positions of `e`.
        // More random micro-batches than own ones: the random improvement is the
        // reference every miner's own improvement is compared with, so its noise is
        // kept low (it is measured once per window before and once per miner after).
        let random_batches = params.eval_batches.max(RANDOM_BATCHES_MIN);
        let random_pages = PageSelection::Keyed(ctx.hotkey.private_seed(RANDOM_PAGES_PURPOSE, &[]));
        let random = Arc::new(self.load_batches(random_pages, e, random_batches).await?);
        let indices = ctx.indices(e).await?;
        let theta = base.gather(e).await?;
        let random_before = {
            let random = random.clone();
            f64::from(base.engine.run(move |ops| ops.eval(&token_batches(&random))).await??)
        };

        let deadline = self.deadline();
        let order = book.eval_order(&deltas.keys().copied().filter(|u| !copiers.contains_key(u)).collect::<Vec<_>>());
        let (mut scored, mut skipped, mut eval_secs) = (0u32, Vec::new(), 0.0f64);
        for uid in order {
            if deadline.is_some_and(|d| Instant::now() >= d) || ctx.is_stopping() {
                skipped.push(uid);
                continue;
            }
            let started = Instant::now();
            let delta = &deltas[&uid];
            match self.evaluate_one(delta, e, params, &indices, &theta, &random, random_before).await {
                Ok(eval) => {
                    outcomes.insert(uid, (WindowOutcome::Scored(eval), Some(eval)));
                    scored += 1;
                    eval_secs += started.elapsed().as_secs_f64();
                }
                Err(err) => {
                    warn!(miner = %ctx.name, uid, window = e, error = %err, "could not evaluate this delta; scored as missing");
                    outcomes.insert(uid, (WindowOutcome::Missing, None));
                }
            }
        }

        let mut report = ScoredWindow {
            window: e,
            scored,
            skipped: skipped.len() as u32,
            missing: 0,
            copiers: copiers.len() as u32,
            eval_secs_per_miner: if scored > 0 { eval_secs / f64::from(scored) } else { 0.0 },
            uids: Vec::new(),
        };
        let mut window_scores = HashMap::new();
        for &(uid, hotkey) in &miners {
            if skipped.contains(&uid) {
                continue; // no time this window: neither rewarded nor penalised
            }
            let (outcome, _) = outcomes.get(&uid).copied().unwrap_or((WindowOutcome::Missing, None));
            if outcome == WindowOutcome::Missing {
                report.missing += 1;
            }
            window_scores.insert(uid, book.record(e, uid, hotkey, outcome, params));
        }
        book.finish_window(e);
        let weights: HashMap<u16, f64> = book.weights(params).into_iter().collect();
        for &(uid, _) in &miners {
            let Some(entry) = book.uids.get(&uid) else { continue };
            let (label, eval) = match outcomes.get(&uid) {
                _ if skipped.contains(&uid) => ("skipped", None),
                Some((WindowOutcome::Scored(_), eval)) => ("scored", *eval),
                Some((WindowOutcome::Copier { .. }, _)) => ("copier", None),
                _ => ("missing", None),
            };
            report.uids.push(UidReport {
                uid,
                outcome: label,
                score: window_scores.get(&uid).copied(),
                own_improvement: eval.map(|v| v.own_improvement()),
                random_improvement: eval.map(|v| v.random_improvement()),
                moving: entry.moving,
                indicator: entry.indicator,
                weight: weights.get(&uid).copied().unwrap_or(0.0),
            });
        }
        if let Some(path) = scores_path(ctx) {
            let saved = book.clone();
            tokio::task::spawn_blocking(move || saved.save(&path))
                .await
                .map_err(|e| RuntimeError::Task(e.to_string()))?
                .map_err(|e| RuntimeError::Task(e.to_string()))?;
        }
        *lock(&ctx.scores) = Some(book);
        Ok(report)
    }

    /// The score book: in memory, else from the state directory (a restarted process
    /// loses nothing), else new.
    fn book(&self) -> Result<ScoreBook, RuntimeError> {
        let ctx = &self.base.ctx;
        if let Some(book) = lock(&ctx.scores).clone() {
            return Ok(book);
        }
        let loaded = match scores_path(ctx) {
            Some(path) => ScoreBook::load(&path).map_err(|e| RuntimeError::Task(e.to_string()))?,
            None => None,
        };
        if let Some(book) = &loaded {
            info!(miner = %ctx.name, window = book.window, uids = book.uids.len(), "validator scores reloaded");
        }
        Ok(loaded.filter(|b| b.netuid == ctx.netuid).unwrap_or_else(|| ScoreBook::new(ctx.netuid)))
    }

    /// Every registered miner's valid delta of `e` (validated as a miner validates it),
    /// and the copy check's view of each.
    async fn valid_deltas(&self, e: Window, miners: &[(u16, Hotkey)]) -> (BTreeMap<u16, Delta>, Vec<CopyCandidate>) {
        let ctx = self.base.ctx.clone();
        let Some(downloader) = lookup::<SliceDownloaderMsg>(&ctx.name, ActorKind::SliceDownloader) else {
            warn!(miner = %ctx.name, "no slice downloader running; nothing scored this window");
            return (BTreeMap::new(), Vec::new());
        };
        let deadline = ctx.settings.peer_deadline * 4 + Duration::from_secs(5);
        let fetched = match downloader
            .call(|reply| SliceDownloaderMsg::Fetch { kind: SliceKind::Delta, window: e, reply }, Some(deadline))
            .await
        {
            Ok(CallResult::Success(outcome)) => outcome,
            _ => FetchOutcome::default(),
        };
        let uid_of: HashMap<Hotkey, u16> = miners.iter().map(|(u, h)| (*h, *u)).collect();
        let [s0, s1, s2, s3, s4, s5, s6, s7, ..] = ctx.hotkey.private_seed(SKETCH_PURPOSE, &e.to_le_bytes());
        let sketch_seed = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let positions = sketch_positions(ctx.slice_value_count(), SKETCH_LEN, sketch_seed);
        let work = ctx.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let view = work.peer_view();
            let registered = (view.refreshed_ms > 0).then_some(&view.registered);
            let mut out = Vec::new();
            for slice in fetched.slices {
                let Some(&uid) = uid_of.get(&slice.key.hotkey) else { continue };
                let bytes = match std::fs::read(&slice.path) {
                    Ok(b) => b,
                    Err(err) => {
                        warn!(miner = %work.name, path = %slice.path.display(), error = %err, "cannot read a cached delta");
                        continue;
                    }
                };
                match decode(&bytes, &work.expected_slice(SliceKind::Delta, e, Some(slice.key.hotkey), registered)) {
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
                        debug!(miner = %work.name, uid, reason = err.reason(), error = %err, "rejected a delta: scored as missing");
                        work.stats.reject(err.reason());
                    }
                }
            }
            out
        })
        .await
        .unwrap_or_default();
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

    /// Losses before and after one miner's update on its own and on random micro-batches;
    /// the model's positions of `e` are restored afterwards.
    #[allow(clippy::too_many_arguments)]
    async fn evaluate_one(
        &self,
        delta: &Delta,
        e: Window,
        params: &ScoringParams,
        indices: &Arc<tessera_core::slice::SliceIndices>,
        theta: &Arc<Vec<f32>>,
        random: &Arc<Vec<Batch>>,
        random_before: f64,
    ) -> Result<Evaluation, RuntimeError> {
        let base = &self.base;
        let ctx = &base.ctx;
        let own = self.load_batches(PageSelection::Uid(delta.uid), e, params.eval_batches).await?;
        let (path, work, hotkey) = (delta.slice.path.clone(), ctx.clone(), delta.hotkey);
        let values: Vec<f32> = tokio::task::spawn_blocking(move || -> Result<Vec<f32>, String> {
            // One update in memory at a time: read back from the cache, checked again.
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let view = decode(&bytes, &work.expected_slice(SliceKind::Delta, e, Some(hotkey), None))
                .map_err(|e| e.to_string())?;
            Ok(view.values().into_owned())
        })
        .await
        .map_err(|e| RuntimeError::Task(e.to_string()))?
        .map_err(RuntimeError::Task)?;
        let exchange = ctx.exchange();
        let (indices, theta, random) = (indices.clone(), theta.clone(), random.clone());
        let result = base
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
        let (own_before, own_after, random_after) = result;
        debug!(miner = %ctx.name, window = e, hotkey = %hotkey, own_before, own_after, random_after, "evaluated");
        Ok(Evaluation { own_before, own_after, random_before, random_after })
    }

    /// The first `n` micro-batches of the pages `selection` gives for window `e` (a miner
    /// trains its micro-batches in order, so its first ones are those it surely trained).
    async fn load_batches(&self, selection: PageSelection, e: Window, n: usize) -> Result<Vec<Batch>, RuntimeError> {
        let ctx = &self.base.ctx;
        let pages = match selection {
            PageSelection::Uid(_) => ctx.settings.pages_per_window,
            // Random pages: enough of them for `n` micro-batches from several pages.
            PageSelection::Random | PageSelection::Keyed(_) => ctx.settings.pages_per_window.max(n),
        };
        let spec = WindowSpec {
            selection,
            window: e,
            n_pages: pages.max(1),
            seq_len: ctx.hparams.sequence_length,
            batch_size: ctx.settings.batch_size.max(1),
            max_concurrent_fetches: 4,
        };
        let mut data = WindowData::load(ctx.model.source.as_ref(), &ctx.model.tokenizer, &spec).await?;
        data.batches.truncate(n.max(1));
        Ok(data.batches)
    }

    /// When scoring must stop so the window's own work fits: 70% into the current window;
    /// none under fixed compute, where the clock waits for every node.
    fn deadline(&self) -> Option<Instant> {
        let ctx = &self.base.ctx;
        if ctx.settings.fixed_micro_batches > 0 {
            return None;
        }
        let block_ms = ctx.settings.block_time.as_millis() as u64;
        let (start, end) = lock(&ctx.block_times).window_bounds(&ctx.schedule, self.base.window, block_ms)?;
        let until = start + (end - start) * 7 / 10;
        let left = (until - crate::context::unix_ms()).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(left))
    }
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
        miner = %ctx.name,
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
