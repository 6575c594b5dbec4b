//! `tessera devnet`: the whole system on one machine, in the foreground. Prints a line per
//! miner and window as they complete, then a summary table; `--check` turns the summary
//! into an exit status (the loss fell on every exchanging miner, slices flowed).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tessera_actors::devnet::{Devnet, DevnetOptions, devnet_settings};
use tessera_actors::{MinerContext, MinerStats, WindowSummary, observe};
use tracing_subscriber::EnvFilter;

use crate::cli::DevnetArgs;

/// Window length of the devnet, in blocks (the live subnet's).
const WINDOW_LENGTH: u64 = 2;

/// Cumulative counters of a miner when its last line was printed.
#[derive(Default, Clone, Copy)]
struct Seen {
    lines: usize,
    up: u64,
    down: u64,
    cached: u64,
    rejected: u64,
}

fn counters(m: &MinerContext) -> Seen {
    let s = &m.stats;
    Seen {
        lines: 0,
        up: MinerStats::get(&s.slices_uploaded),
        down: MinerStats::get(&s.slices_downloaded),
        cached: MinerStats::get(&s.cache_hits),
        rejected: s.rejected_total(),
    }
}

pub async fn run(args: DevnetArgs) -> Result<()> {
    let format = crate::log_format(args.logs.log_format.as_deref(), None);
    // The table is the devnet's output; logs stay at warnings unless asked for.
    let filter = if args.logs.debug || args.logs.trace || std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty())
    {
        crate::log_filter(args.logs.debug, args.logs.trace)
    } else {
        EnvFilter::new("warn")
    };
    crate::init_logging_with(filter, format);

    let (dir, _temp) = match &args.state_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp =
                tempfile::Builder::new().prefix("tessera-devnet-").tempdir().context("a temporary state directory")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let mut options = DevnetOptions::new(&dir)?;
    options.miners = usize::from(args.miners);
    options.baseline_miners = usize::from(args.baseline_miner);
    options.block_time = args.block_time;
    options.settings = devnet_settings(args.block_time);
    options.hparams = tessera_actors::devnet::tiny_hparams(WINDOW_LENGTH)?;
    // A kept state directory continues its windows after a restart.
    options.wall_clock_blocks = args.state_dir.is_some();
    let params = tessera_core::model::ParamLayout::llama(&options.hparams.model_shape())?.total_numel();
    let started = Instant::now();
    let net = Devnet::start(options).await?;
    let miners: Vec<Arc<MinerContext>> = net.miners().to_vec();
    let _endpoint = match args.metrics_listen {
        Some(listen) => {
            let status = net.host.as_ref().map(|h| h.status_receiver()).context("the devnet has no host")?;
            Some(
                observe::serve(listen, miners.clone(), status)
                    .await
                    .with_context(|| format!("serving metrics on {listen}"))?,
            )
        }
        None => None,
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "tessera devnet: {} miner{}{}, a {params}-parameter Llama on CPU, windows of {WINDOW_LENGTH} blocks x {:?}",
        args.miners,
        if args.miners == 1 { "" } else { "s" },
        if args.baseline_miner { " + 1 baseline (trains alone)" } else { "" },
        args.block_time,
    )?;
    writeln!(out, "state: {}{}", dir.display(), if args.state_dir.is_none() { " (temporary)" } else { "" })?;
    writeln!(
        out,
        "{:>6}  {:<10} {:>7} {:>8} {:>4} {:>5} {:>6} {:>4}  {:>11}",
        "window", "miner", "loss", "tok/s", "up", "down", "cached", "rej", "averaged"
    )?;
    drop(out);

    let mut seen: HashMap<String, Seen> = miners.iter().map(|m| (m.name.clone(), counters(m))).collect();
    let exchanging: Vec<&Arc<MinerContext>> = miners.iter().filter(|m| !m.settings.baseline).collect();
    let mut first_window_at = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => { interrupted = true; break; }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let mut out = std::io::stdout().lock();
        for m in &miners {
            let entry = seen.entry(m.name.clone()).or_default();
            for w in m.stats.windows_after(entry.lines) {
                first_window_at.get_or_insert_with(|| started.elapsed());
                let now = counters(m);
                writeln!(
                    out,
                    "{:>6}  {:<10} {:>7.3} {:>8.0} {:>4} {:>5} {:>6} {:>4}  {:>11}",
                    w.window,
                    m.name,
                    w.loss,
                    w.tokens_per_sec,
                    now.up - entry.up,
                    now.down - entry.down,
                    now.cached - entry.cached,
                    now.rejected - entry.rejected,
                    if m.settings.baseline {
                        "alone".to_owned()
                    } else {
                        format!("{}+{}", w.state_slices, w.delta_slices)
                    },
                )?;
                *entry = Seen { lines: entry.lines + 1, ..now };
            }
        }
        drop(out);
        if args.windows > 0 && exchanging.iter().all(|m| MinerStats::get(&m.stats.windows_completed) >= args.windows) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let restarts: HashMap<String, u64> =
        miners.iter().map(|m| (m.name.clone(), m.stats.restarts().values().sum::<u64>())).collect();
    let summaries: Vec<(Arc<MinerContext>, Vec<WindowSummary>)> =
        miners.iter().map(|m| (m.clone(), m.stats.windows())).collect();
    net.shutdown().await;

    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:>7} {:>10} {:>9} {:>7} {:>8} {:>5} {:>5} {:>6} {:>8} {:>8}",
        "miner",
        "windows",
        "first loss",
        "last loss",
        "change",
        "tok/s",
        "up",
        "down",
        "cached",
        "rejected",
        "restarts"
    )?;
    let mut ok = true;
    let mut reasons = Vec::new();
    for (m, windows) in &summaries {
        let losses: Vec<f32> = windows.iter().map(|w| w.loss).filter(|l| l.is_finite()).collect();
        let first = mean(losses.iter().take(2));
        let last = mean(losses.iter().rev().take(3));
        let change = if first > 0.0 { (last / first - 1.0) * 100.0 } else { 0.0 };
        let toks = windows.iter().map(|w| w.tokens_per_sec).sum::<f64>() / windows.len().max(1) as f64;
        let c = counters(m);
        writeln!(
            out,
            "{:<10} {:>7} {:>10.3} {:>9.3} {:>6.1}% {:>8.0} {:>5} {:>5} {:>6} {:>8} {:>8}",
            m.name,
            windows.len(),
            first,
            last,
            change,
            toks,
            c.up,
            c.down,
            c.cached,
            c.rejected,
            restarts.get(&m.name).copied().unwrap_or(0)
        )?;
        if m.settings.baseline {
            continue;
        }
        if losses.len() < 3 || last >= first {
            ok = false;
            reasons.push(format!("{}: the loss did not fall ({first:.3} -> {last:.3})", m.name));
        }
        if miners.len() > 1 && !windows.iter().any(|w| w.state_slices >= 2 || w.delta_slices >= 2) {
            ok = false;
            reasons.push(format!("{}: never averaged a peer's slice", m.name));
        }
    }
    writeln!(
        out,
        "\n{} in {:.0?}; first window trained {:.1?} after start",
        if interrupted { "interrupted" } else { "done" },
        elapsed,
        first_window_at.unwrap_or_default()
    )?;
    if ok {
        writeln!(out, "the loss fell on every exchanging miner, and slices flowed between them")?;
    } else {
        writeln!(out, "CHECK FAILED: {}", reasons.join("; "))?;
    }
    drop(out);
    if args.check && !ok {
        bail!("devnet check failed: {}", reasons.join("; "));
    }
    Ok(())
}

fn mean<'a>(values: impl Iterator<Item = &'a f32>) -> f32 {
    let (sum, n) = values.fold((0f32, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f32::NAN } else { sum / n as f32 }
}
