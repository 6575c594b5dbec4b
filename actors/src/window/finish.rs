//! Phase `finish`, the window's end for every node: the held-out evaluation when due, the
//! window's summary (logged, given to the telemetry hook, recorded), and a checkpoint
//! when due.

use std::sync::Arc;

use tessera_data::{PageSelection, WindowData, WindowSpec};
use tracing::{debug, info, warn};

use super::WindowRun;
use super::advance::Advanced;
use super::train::{Trained, idle_reason, token_batches};
use crate::context::lock;
use crate::deadlines::PAGE_FETCH_CONCURRENCY;
use crate::error::RuntimeError;
use crate::stats::{MinerStats, WindowSummary};

/// What the window did before its end, as the summary reports it.
pub(super) struct Finished {
    summary: WindowSummary,
}

impl Finished {
    /// A miner's window (trained, or idle with its reason).
    pub fn trained(trained: &Trained, slices: Advanced, run: &WindowRun) -> Self {
        let report = &trained.report;
        let idle_reason = (report.micro_batches == 0).then(|| match &run.ctx.misbehaviour {
            None => idle_reason(trained),
            Some(m) => m.idle_reason(),
        });
        let summary = WindowSummary {
            window: run.window,
            loss: report.mean_loss,
            tokens: report.tokens,
            tokens_per_sec: report.tokens as f64 / trained.train_secs,
            micro_batches: report.micro_batches,
            sample_rate: report.sample_rate,
            utilization: utilization(run, trained.train_secs),
            lr: trained.lr,
            step: trained.step,
            state_slices: slices.state_slices,
            delta_slices: slices.delta_slices,
            idle_reason,
            eval_loss: None,
            bytes_downloaded: MinerStats::get(&run.ctx.telemetry.stats.bytes_downloaded)
                .saturating_sub(trained.bytes_before),
            model_hash: slices.model_hash,
        };
        Self { summary }
    }

    /// A validator's window: nothing trained, the model stepped forward.
    pub fn validated(run: &WindowRun, slices: Advanced) -> Self {
        let mut summary = WindowSummary::untrained(
            run.window,
            slices.state_slices,
            slices.delta_slices,
            "a validator does not train".to_owned(),
        );
        summary.model_hash = slices.model_hash;
        Self { summary }
    }
}

pub(super) async fn run(run: &WindowRun, finished: Finished) -> Result<(), RuntimeError> {
    let (ctx, window) = (&run.ctx, run.window);
    let mut summary = finished.summary;
    let eval_every = ctx.settings.eval_every;
    if eval_every > 0 && window.is_multiple_of(eval_every) {
        match evaluate(run).await {
            Ok(loss) => summary.eval_loss = Some(loss),
            Err(e) => warn!(miner = %ctx.id.name, window, error = %e, "held-out evaluation failed"),
        }
    }
    log(run, &summary);
    let hook = lock(&ctx.telemetry.window_hook).clone();
    if let Some(hook) = hook {
        hook(ctx, &summary);
    }
    ctx.telemetry.stats.record_window(summary);
    let completed = MinerStats::get(&ctx.telemetry.stats.windows_completed);
    if completed.is_multiple_of(ctx.settings.checkpoint_every.max(1)) {
        let meta = run.engine.run(move |ops| ops.checkpoint(window)).await??;
        // Up to three model-sized buffers: written off the async threads.
        let saver = ctx.clone();
        tokio::task::spawn_blocking(move || saver.save_sparse_state(window)).await?;
        MinerStats::add(&ctx.telemetry.stats.checkpoints_written, 1);
        debug!(miner = %ctx.id.name, window, step = meta.step, "checkpoint written");
    }
    Ok(())
}

fn log(run: &WindowRun, s: &WindowSummary) {
    let name = &run.ctx.id.name;
    let (window, eval_loss, state_slices, delta_slices) = (s.window, s.eval_loss, s.state_slices, s.delta_slices);
    match &s.idle_reason {
        None => info!(
            miner = %name,
            window,
            loss = s.loss,
            eval_loss,
            tokens_per_sec = s.tokens_per_sec.round(),
            micro_batches = s.micro_batches,
            sample_rate = s.sample_rate,
            lr = s.lr,
            state_slices,
            delta_slices,
            "window done"
        ),
        Some(reason) => {
            info!(miner = %name, window, eval_loss, state_slices, delta_slices, reason = %reason, "window done without training")
        }
    }
}

/// Mean loss on the held-out pages (loaded once), on the engine thread.
pub(crate) async fn evaluate(run: &WindowRun) -> Result<f32, RuntimeError> {
    let ctx = &run.ctx;
    let batches = ctx
        .model
        .held_out
        .get_or_try_init(|| async {
            let pages = ctx.model.spec.source.held_out_pages(ctx.settings.eval_pages.max(1)).await?;
            let spec = WindowSpec {
                selection: PageSelection::Random,
                window: 0,
                n_pages: pages.len(),
                seq_len: ctx.network.hparams.sequence_length,
                batch_size: ctx.settings.batch_size.max(1),
                max_concurrent_fetches: PAGE_FETCH_CONCURRENCY,
            };
            let mut data =
                WindowData::load_pages(ctx.model.spec.source.as_ref(), &ctx.model.spec.tokenizer, &spec, pages).await?;
            data.batches.truncate(ctx.settings.eval_batches.max(1));
            Ok::<_, RuntimeError>(Arc::new(data.batches))
        })
        .await?
        .clone();
    let loss = run.engine.run(move |ops| ops.eval(&token_batches(&batches))).await??;
    MinerStats::add(&ctx.telemetry.stats.evaluations, 1);
    Ok(loss)
}

/// Training time over the window's duration (observed block times, else nominal).
fn utilization(run: &WindowRun, train_secs: f64) -> f64 {
    let ctx = &run.ctx;
    let block_ms = ctx.settings.block_time.as_millis() as u64;
    let window_secs = match run.bounds() {
        Some((start, end)) if end > start => (end - start) as f64 / 1000.0,
        _ => (ctx.network.schedule.window_length() * block_ms) as f64 / 1000.0,
    };
    (train_secs / window_secs.max(1e-3)).clamp(0.0, 1.0)
}
