//! Phase `train`: the window's pages (the own UID's, or with `--random` pages from the own
//! key), trained on the engine thread until the window ends, the node stops, or the fixed
//! number of micro-batches is done.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::slice::Exchange;
use tessera_data::{Batch, PageSelection, WindowData, WindowSpec};
use tessera_model::engine::{EngineError, ModelOps};
use tessera_model::train::{SampleRate, TokenBatch, WindowReport};
use tracing::info;

use super::WindowRun;
use crate::context::lock;
use crate::deadlines::PAGE_FETCH_CONCURRENCY;
use crate::error::RuntimeError;
use crate::stats::MinerStats;

/// Purpose of a `--random` miner's keyed page draw (`LoadedHotkey::private_seed`).
const RANDOM_PAGES_PURPOSE: &str = "miner random pages";
/// Purpose of the sample-rate coin's keyed draw (the seed's adaptive skipping): from the
/// node's own key and the window, so miners do not all skip the same micro-batches (and
/// so not all the ones a validator scores), and a run repeats.
const SKIP_COIN_PURPOSE: &str = "miner skip coin";

/// Taken when the window's task starts, before anything waits.
pub(super) struct Started {
    at: Instant,
    late_secs: f64,
    bytes_before: u64,
}

impl Started {
    pub fn now(run: &WindowRun) -> Self {
        let late_secs =
            run.bounds().map_or(0.0, |(start, _)| ((crate::context::unix_ms() - start).max(0) as f64) / 1000.0);
        Self { at: Instant::now(), late_secs, bytes_before: MinerStats::get(&run.ctx.telemetry.stats.bytes_downloaded) }
    }
}

/// What the training of a window did.
pub(super) struct Trained {
    pub report: WindowReport,
    /// The model's values at the window's delta positions before training (updates exchanged).
    pub update_start: Option<Arc<Vec<f32>>>,
    pub step: u64,
    pub lr: f64,
    pub train_secs: f64,
    pub batches: usize,
    /// How late the task started, and how long its averages and data took.
    pub late_secs: f64,
    pub prep_secs: f64,
    pub bytes_before: u64,
}

/// `exchange` is `None` for a baseline miner.
pub(super) async fn run(
    run: &WindowRun,
    exchange: Option<Exchange>,
    started: Started,
) -> Result<Trained, RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    let mut batches = load_data(run).await?.batches;
    if let Some(m) = &ctx.misbehaviour {
        batches = m.train_on(batches);
    }
    let batches = Arc::new(batches);
    let update_start = match exchange {
        Some(exchange) if exchange.exchanges_updates() => Some(run.gather_delta(window).await?),
        _ => None,
    };
    let prep_secs = started.at.elapsed().as_secs_f64();
    if let Some(since) = run.ready_since {
        let ms = since.elapsed().as_millis() as u64;
        ctx.telemetry.stats.last_restart_ready_ms.store(ms.max(1), Ordering::Relaxed);
        info!(miner = %ctx.id.name, window, ready_ms = ms, "training again after a restart");
    }
    let rate = *lock(&run.rate);
    let clock = ctx.network.clock.subscribe();
    let (stop_ctx, cancel) = (ctx.clone(), run.cancel.clone());
    let fixed = ctx.settings.fixed_micro_batches;
    let limit = match &ctx.misbehaviour {
        Some(m) if !m.trains() => 0,
        _ if fixed > 0 => fixed,
        _ => batches.len(),
    };
    let train_batches = batches.clone();
    let coin_seed = ctx.id.hotkey.private_seed(SKIP_COIN_PURPOSE, &window.to_le_bytes());
    let per_step = ctx.network.hparams.micro_batches_per_step.unwrap_or(0) as usize;
    let train_started = Instant::now();
    let (report, rate) = run
        .engine
        .run(move |ops| {
            let mut rate = rate;
            let mut rng = StdRng::from_seed(coin_seed);
            let window_ended = || {
                stop_ctx.faults.maybe_panic_engine();
                // With fixed compute the clock waits for the miners, not the reverse.
                (fixed == 0 && clock.borrow().window != window)
                    || stop_ctx.is_stopping()
                    || cancel.load(Ordering::Acquire)
            };
            let token_batches = token_batches(&train_batches[..limit.min(train_batches.len())]);
            let mut coin = || if fixed > 0 { 0.0 } else { rng.random::<f64>() };
            // The gradient exchange steps on the peers' aggregate, at the next window's start.
            let report = match exchange {
                Some(Exchange::Gradient) => ops.accumulate(&token_batches, &mut rate, &mut coin, &window_ended),
                _ => train_steps(ops, &token_batches, per_step, &mut rate, &mut coin, &window_ended),
            };
            (report.map(|r| (r, ops.step_count(), ops.current_lr())), rate)
        })
        .await?;
    let (report, step, lr) = report?;
    *lock(&run.rate) = rate;
    Ok(Trained {
        report,
        update_start,
        step,
        lr,
        train_secs: train_started.elapsed().as_secs_f64().max(1e-9),
        batches: batches.len(),
        late_secs: started.late_secs,
        prep_secs,
        bytes_before: started.bytes_before,
    })
}

/// The window's micro-batches in steps of `per_step` (0: one step over all), until the
/// window ends; one report for them all (the last step's, the sums, the mean loss).
fn train_steps(
    ops: &mut dyn ModelOps,
    batches: &[TokenBatch<'_>],
    per_step: usize,
    rate: &mut SampleRate,
    coin: &mut dyn FnMut() -> f64,
    window_ended: &dyn Fn() -> bool,
) -> Result<WindowReport, EngineError> {
    let per_step = if per_step == 0 { batches.len().max(1) } else { per_step };
    let mut total: Option<WindowReport> = None;
    for chunk in batches.chunks(per_step) {
        let report = ops.train(chunk, rate, coin, window_ended)?;
        let exhausted = report.exhausted;
        total = Some(match total {
            None => report,
            Some(t) => {
                let trained = t.micro_batches + report.micro_batches;
                let loss_sum = |r: &WindowReport| {
                    if r.micro_batches > 0 { f64::from(r.mean_loss) * r.micro_batches as f64 } else { 0.0 }
                };
                WindowReport {
                    micro_batches: trained,
                    skipped: t.skipped + report.skipped,
                    mean_loss: if trained > 0 {
                        ((loss_sum(&t) + loss_sum(&report)) / trained as f64) as f32
                    } else {
                        f32::NAN
                    },
                    tokens: t.tokens + report.tokens,
                    exhausted,
                    step: report.step.or(t.step),
                    sample_rate: report.sample_rate,
                }
            }
        });
        if exhausted {
            break;
        }
    }
    match total {
        Some(report) => Ok(report),
        None => ops.train(&[], rate, coin, window_ended),
    }
}

async fn load_data(run: &WindowRun) -> Result<WindowData, RuntimeError> {
    let ctx = &run.ctx;
    let spec = WindowSpec {
        // `--random`: pages from this miner's own key, which no validator can predict
        // (as the seed's random pages) and a restart draws again.
        selection: if ctx.settings.random {
            PageSelection::Keyed(ctx.id.hotkey.private_seed(RANDOM_PAGES_PURPOSE, &[]))
        } else {
            PageSelection::Uid(ctx.id.uid)
        },
        window: run.window,
        n_pages: ctx.settings.pages_per_window.max(1),
        seq_len: ctx.network.hparams.sequence_length,
        batch_size: ctx.settings.batch_size.max(1),
        max_concurrent_fetches: PAGE_FETCH_CONCURRENCY,
    };
    Ok(WindowData::load(ctx.model.spec.source.as_ref(), &ctx.model.spec.tokenizer, &spec).await?)
}

/// The engine's view of the data's micro-batches (borrowed, no copy).
pub fn token_batches(batches: &[Batch]) -> Vec<TokenBatch<'_>> {
    batches
        .iter()
        .map(|b| TokenBatch {
            tokens: &b.tokens,
            loss_mask: &b.loss_mask,
            batch_size: b.batch_size,
            seq_len: b.seq_len,
        })
        .collect()
}

/// Why a window trained nothing, in words an operator can act on.
pub(super) fn idle_reason(trained: &Trained) -> String {
    let report = &trained.report;
    if trained.batches == 0 {
        "no training data for this window".to_owned()
    } else if report.exhausted {
        format!(
            "the window ended before training began: it started {:.1}s late (the last window's uploads, averages \
             and evaluation ran into it) and its averages and data took {:.1}s",
            trained.late_secs, trained.prep_secs
        )
    } else if report.skipped > 0 {
        format!("the sample rate ({:.3}) skipped all {} micro-batches", report.sample_rate, report.skipped)
    } else {
        "nothing to train".to_owned()
    }
}
