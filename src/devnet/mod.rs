//! `tessera devnet`: the whole system on one machine, in the foreground. Prints a line per
//! miner and window as they complete, then a summary table and how the exchanging miners
//! compare with a baseline on held-out loss; `--check` turns that into an exit status, and
//! `--report DIR` writes the figures and a plot.

mod options;
mod report;
mod validator;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tessera_actors::devnet::{Devnet, DevnetOptions, Role, devnet_settings, role_of};
use tessera_actors::{MinerContext, MinerStats, WindowSummary, observe};
use tessera_core::slice::{Exchange, download_bytes_per_window, max_encoded_len, slice_len};
use tracing_subscriber::EnvFilter;

use crate::cli::DevnetArgs;
pub use options::ExchangeFlag;
use report::{MinerRun, compare, comparison_line, group_curve};

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

pub async fn run(mut args: DevnetArgs) -> Result<()> {
    if args.adversaries && args.fixed_compute == 0 {
        // Whether a miner trained on its own pages shows in the update of a few
        // micro-batches, each of which the validator scores; under a real-time window of
        // many micro-batches the signal drowns (DESIGN §2b). The adversaries are judged
        // under fixed compute.
        args.fixed_compute = 1;
    }
    let flag = args.logs.log_format.iter().map(|f| ("log_format".to_owned(), f.clone())).collect();
    let format = crate::log_format(&tessera_core::config::ConfigSources::from_process(None, flag));
    // The table is the devnet's output; logs stay at warnings unless asked for.
    let filter = if args.logs.debug || args.logs.trace || std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty())
    {
        crate::log_filter(args.logs.debug, args.logs.trace)
    } else {
        EnvFilter::new("warn")
    };
    crate::init_logging_with(filter, format);
    let exchange = args.exchange.0;

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
    options.seed_exchange_miners = usize::from(args.seed_exchange_miners);
    options.block_time = args.block_time;
    options.seed = args.seed;
    options.lockstep = args.fixed_compute > 0;
    options.validator = !args.no_validator;
    options.adversaries = args.adversaries;
    options.settings = devnet_settings(args.block_time);
    options.settings.eval_every = args.eval_every;
    options.settings.fixed_micro_batches = args.fixed_compute as usize;
    options.hparams = tessera_actors::devnet::tiny_hparams(WINDOW_LENGTH)?;
    options.hparams.exchange = exchange;
    options.hparams.compression = args.compression;
    options.hparams.exchange_outer_lr = args.outer_lr;
    options.hparams.exchange_max_peers = args.max_peers;
    if let Some(lr) = args.learning_rate {
        options.hparams.learning_rate = lr;
    }
    if args.fixed_compute > 0 {
        // Under fixed compute a miner trains its first K micro-batches: the validator
        // scores each update on those.
        options.hparams.validator_eval_batches = Some(args.fixed_compute);
    }
    options.hparams.validate()?;
    // A kept state directory continues its windows after a restart: by the wall clock in
    // real time, from the last head in lockstep (so a fresh lockstep run is reproducible).
    options.wall_clock_blocks = args.state_dir.is_some() && args.fixed_compute == 0;
    if args.state_dir.is_some() && args.fixed_compute > 0 {
        options.head_file = Some(dir.join("devnet-head"));
    }
    let layout = tessera_core::model::ParamLayout::llama(&options.hparams.model_shape())?;
    let params = layout.total_numel();
    let compression = options.hparams.compression;
    let started = Instant::now();
    let net = Devnet::start(options).await?;
    // Weights every window: the dev chain's rate limit is one window.
    net.chain.set_weights_rate_limit(WINDOW_LENGTH);
    let nodes: Vec<Arc<MinerContext>> = net.miners().to_vec();
    let prefix = net.options.name_prefix.clone();
    let validators: Vec<Arc<MinerContext>> = nodes.iter().filter(|m| m.is_validator()).cloned().collect();
    let names: Vec<(u16, String)> = nodes.iter().map(|m| (m.uid, m.name.clone())).collect();
    // The miners' table and checks; the validator has its own lines.
    let miners: Vec<Arc<MinerContext>> = nodes.iter().filter(|m| !m.is_validator()).cloned().collect();
    let _endpoint = match args.metrics_listen {
        Some(listen) => {
            let status = net.host.as_ref().map(|h| h.status_receiver()).context("the devnet has no host")?;
            Some(
                observe::serve(listen, nodes.clone(), status)
                    .await
                    .with_context(|| format!("serving metrics on {listen}"))?,
            )
        }
        None => None,
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "tessera devnet: {} miner{} ({exchange} exchange){}{}, a {params}-parameter Llama on CPU, windows of {WINDOW_LENGTH} blocks x {:?}",
        args.miners,
        if args.miners == 1 { "" } else { "s" },
        if args.seed_exchange_miners > 0 {
            format!(" + {} on the seed exchange", args.seed_exchange_miners)
        } else {
            String::new()
        },
        if args.baseline_miner { " + 1 baseline (trains alone)" } else { "" },
        args.block_time,
    )?;
    if !validators.is_empty() || args.adversaries {
        writeln!(
            out,
            "{}{}",
            if validators.is_empty() {
                "no validator"
            } else {
                "a validator scores every miner's delta each window and sets weights"
            },
            if args.adversaries {
                "; adversaries: copier1 (republishes miner1's delta), lazy1 (state unchanged), noise1, randompages1"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        out,
        "seed {} (model initialisation and data); {}; held-out loss every {} window{}",
        args.seed,
        if args.fixed_compute > 0 {
            format!(
                "fixed compute: {} micro-batches of 4 x 64 tokens per miner and window, the clock waits",
                args.fixed_compute
            )
        } else {
            "each miner trains until the window ends".to_owned()
        },
        args.eval_every,
        if args.eval_every == 1 { "" } else { "s" },
    )?;
    writeln!(out, "state: {}{}", dir.display(), if args.state_dir.is_none() { " (temporary)" } else { "" })?;
    writeln!(
        out,
        "{:>6}  {:<10} {:>7} {:>8} {:>8} {:>4} {:>5} {:>6} {:>4}  {:>11}",
        "window", "miner", "loss", "heldout", "tok/s", "up", "down", "cached", "rej", "averaged"
    )?;
    drop(out);

    let mut seen: HashMap<String, Seen> = miners.iter().map(|m| (m.name.clone(), counters(m))).collect();
    let exchanging: Vec<&Arc<MinerContext>> =
        miners.iter().filter(|m| matches!(role_of(&m.name, &prefix), Role::Exchanging | Role::SeedExchange)).collect();
    let mut validator_lines = vec![0usize; validators.len()];
    let mut first_window_at = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut idle_windows = 0usize;
    // Resident memory whenever the slowest exchanging miner completes a window (soak runs).
    let mut memory: Vec<(f64, f64)> = Vec::new();
    let mut memory_window = 0u64;
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
                let averaged = if m.settings.baseline {
                    "alone".to_owned()
                } else {
                    format!("{}+{}", w.state_slices, w.delta_slices)
                };
                let heldout = w.eval_loss.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into());
                let (loss, tokens, idle) = match &w.idle_reason {
                    None => (format!("{:.3}", w.loss), format!("{:.0}", w.tokens_per_sec), String::new()),
                    Some(reason) => {
                        if !role_of(&m.name, &prefix).is_adversary() {
                            idle_windows += 1;
                        }
                        ("-".into(), "-".into(), format!("  trained nothing: {reason}"))
                    }
                };
                writeln!(
                    out,
                    "{:>6}  {:<10} {:>7} {:>8} {:>8} {:>4} {:>5} {:>6} {:>4}  {:>11}{idle}",
                    w.window,
                    m.name,
                    loss,
                    heldout,
                    tokens,
                    now.up - entry.up,
                    now.down - entry.down,
                    now.cached - entry.cached,
                    now.rejected - entry.rejected,
                    averaged,
                )?;
                *entry = Seen { lines: entry.lines + 1, ..now };
            }
        }
        for (v, printed) in validators.iter().zip(validator_lines.iter_mut()) {
            for w in v.validator_stats.windows_after(*printed) {
                validator::print_window(&mut out, &v.name, &w, &names)?;
                *printed += 1;
            }
        }
        drop(out);
        let slowest = exchanging.iter().map(|m| MinerStats::get(&m.stats.windows_completed)).min().unwrap_or(0);
        if slowest > memory_window {
            memory_window = slowest;
            if let Some(rss) = report::resident_bytes() {
                memory.push((slowest as f64, rss as f64));
            }
        }
        if args.windows > 0 && exchanging.iter().all(|m| MinerStats::get(&m.stats.windows_completed) >= args.windows) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let restarts: HashMap<String, u64> =
        miners.iter().map(|m| (m.name.clone(), m.stats.restarts().values().sum::<u64>())).collect();
    let resumed: HashMap<String, bool> = miners.iter().map(|m| (m.name.clone(), m.stats.resumed())).collect();
    let runs: Vec<MinerRun> = miners
        .iter()
        .map(|m| MinerRun {
            name: m.name.clone(),
            role: role_of(&m.name, &prefix),
            exchange: if m.settings.baseline { "none".into() } else { m.exchange().to_string() },
            windows: m.stats.windows(),
        })
        .collect();
    let final_counters: HashMap<String, Seen> = miners.iter().map(|m| (m.name.clone(), counters(m))).collect();
    let mut weight_rows = Vec::new();
    for v in &validators {
        weight_rows.push((v.name.clone(), validator::chain_weights(&net, v, &nodes).await?));
    }
    net.shutdown().await;

    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:>7} {:>10} {:>9} {:>7} {:>9} {:>8} {:>5} {:>5} {:>6} {:>8} {:>8}",
        "miner",
        "windows",
        "first loss",
        "last loss",
        "change",
        "heldout",
        "tok/s",
        "up",
        "down",
        "cached",
        "rejected",
        "restarts"
    )?;
    let mut ok = true;
    let mut reasons = Vec::new();
    for run in &runs {
        let windows = &run.windows;
        let losses: Vec<f32> = windows.iter().map(|w| w.loss).filter(|l| l.is_finite()).collect();
        let first = mean(losses.iter().take(2));
        let last = mean(losses.iter().rev().take(3));
        let change = if first > 0.0 { (last / first - 1.0) * 100.0 } else { 0.0 };
        let evals: Vec<f32> = windows.iter().filter_map(|w| w.eval_loss).filter(|l| l.is_finite()).collect();
        let trained: Vec<&WindowSummary> = windows.iter().filter(|w| w.idle_reason.is_none()).collect();
        let toks = trained.iter().map(|w| w.tokens_per_sec).sum::<f64>() / trained.len().max(1) as f64;
        let c = final_counters.get(&run.name).copied().unwrap_or_default();
        writeln!(
            out,
            "{:<10} {:>7} {:>10.3} {:>9.3} {:>6.1}% {:>9} {:>8.0} {:>5} {:>5} {:>6} {:>8} {:>8}",
            run.name,
            windows.len(),
            first,
            last,
            change,
            evals.last().map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into()),
            toks,
            c.up,
            c.down,
            c.cached,
            c.rejected,
            restarts.get(&run.name).copied().unwrap_or(0)
        )?;
        if run.role == Role::Baseline || run.role.is_adversary() {
            continue;
        }
        // Judged on held-out loss when evaluated, else on the training loss.
        let (label, curve) = if evals.len() >= 2 { ("held-out loss", &evals) } else { ("loss", &losses) };
        let start = mean(curve.iter().take(1));
        let end = mean(curve.iter().rev().take(2));
        if curve.len() < 2 {
            ok = false;
            reasons.push(format!("{}: too few windows to judge", run.name));
        } else if resumed.get(&run.name).copied().unwrap_or(false) {
            // Resumed from --state-dir (perhaps converged): it must not get worse.
            if end > start * 1.05 + 0.02 {
                ok = false;
                reasons.push(format!("{}: the {label} rose after resuming ({start:.3} -> {end:.3})", run.name));
            }
        } else if end >= start {
            ok = false;
            reasons.push(format!("{}: the {label} did not fall ({start:.3} -> {end:.3})", run.name));
        }
        // Only miners of one exchange read each other: a group of one has no peer to average.
        let group = runs.iter().filter(|r| r.role == run.role).count();
        if group > 1 && !windows.iter().any(|w| w.state_slices >= 2 || w.delta_slices >= 2) {
            ok = false;
            reasons.push(format!("{}: never averaged a peer's slice", run.name));
        }
    }

    // Collaboration against training alone, on held-out loss.
    let first_window = runs.iter().filter_map(|r| r.windows.first().map(|w| w.window)).min().unwrap_or(0);
    let baseline = group_curve(&runs, Role::Baseline, first_window);
    let mut comparisons = serde_json::Map::new();
    writeln!(out)?;
    for (role, label) in [(Role::Exchanging, "exchanging miners"), (Role::SeedExchange, "seed-exchange miners")] {
        let group = group_curve(&runs, role, first_window);
        if group.is_empty() {
            continue;
        }
        let Some(c) = compare(&group, &baseline) else { continue };
        writeln!(out, "{}", comparison_line(&format!("{label} ({})", exchange_of(&runs, role)), &c))?;
        // A resumed run judges only the windows since the restart: no verdict on them.
        let fresh = !resumed.values().any(|&r| r);
        if role == Role::Exchanging && fresh && c.group_final >= c.target {
            ok = false;
            reasons.push(format!(
                "the exchanging miners ended at a held-out loss of {:.3}, not below the baseline's {:.3}",
                c.group_final, c.target
            ));
        }
        comparisons.insert(role.to_string(), serde_json::to_value(&c)?);
    }

    // Bandwidth: what each miner downloaded per window, and what the exchange implies.
    let values: u64 = layout.params().iter().map(|p| slice_len(p.numel() as u64, compression)).sum();
    let slice_bytes = max_encoded_len(values as usize) as u64;
    let mut bandwidth = serde_json::Map::new();
    for role in [Role::Exchanging, Role::SeedExchange] {
        let group: Vec<&MinerRun> = runs.iter().filter(|r| r.role == role).collect();
        let windows: usize = group.iter().map(|r| r.windows.len()).sum();
        if windows == 0 {
            continue;
        }
        let bytes: u64 = group.iter().flat_map(|r| r.windows.iter()).map(|w| w.bytes_downloaded).sum();
        let measured = bytes as f64 / windows as f64;
        // Every node publishing in this exchange is a peer: adversaries too.
        let publishing = if role == Role::Exchanging {
            runs.iter().filter(|r| r.role == role || r.role.is_adversary()).count()
        } else {
            group.len()
        };
        let peers = publishing as u64;
        let max_peers = (role == Role::Exchanging && exchange == Exchange::Update)
            .then_some(args.max_peers)
            .flatten()
            .map(u64::from);
        let computed = download_bytes_per_window(peers.saturating_sub(1), max_peers, slice_bytes);
        writeln!(
            out,
            "{} ({}): downloaded {:.1} KB per miner and window (peers' state + delta slices of {:.1} KB: {:.1} KB expected)",
            role,
            exchange_of(&runs, role),
            measured / 1e3,
            slice_bytes as f64 / 1e3,
            computed as f64 / 1e3
        )?;
        bandwidth.insert(
            role.to_string(),
            serde_json::json!({ "measured_bytes_per_window": measured, "computed_bytes_per_window": computed }),
        );
    }
    // Memory over the second half of the run (after warm-up): should be flat.
    let second_half: Vec<(f64, f64)> = memory.iter().skip(memory.len() / 2).copied().collect();
    let memory_slope = report::slope(&second_half);
    if let (Some(slope), Some(&(_, last))) = (memory_slope, memory.last()) {
        writeln!(
            out,
            "memory: {:.0} MB resident at the end; slope over the second half {:+.1} KB per window",
            last / 1e6,
            slope / 1e3
        )?;
    }
    for (name, rows) in &weight_rows {
        write!(out, "\nweights set on the dev chain by {name}:")?;
        validator::print_weights(&mut out, rows)?;
        let before = reasons.len();
        validator::judge(rows, args.adversaries, &mut reasons);
        if reasons.len() > before {
            ok = false;
        } else if args.adversaries {
            let share: f64 = rows.iter().filter(|r| r.role.is_adversary()).map(|r| r.share).sum();
            writeln!(
                out,
                "every honest miner ends above every adversary; the adversaries hold {:.1}% of the weight",
                share * 100.0
            )?;
        }
    }
    if idle_windows > 0 {
        writeln!(out, "{idle_windows} window line(s) trained nothing; the reason is on each line")?;
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

    if let Some(report_dir) = &args.report {
        let summary = serde_json::json!({
            "seed": args.seed,
            "fixed_compute_micro_batches": args.fixed_compute,
            "exchange": exchange.to_string(),
            "miners": args.miners,
            "seed_exchange_miners": args.seed_exchange_miners,
            "baseline": args.baseline_miner,
            "windows": args.windows,
            "parameters": params,
            "comparisons": comparisons,
            "bandwidth": bandwidth,
            "resident_bytes": memory.last().map(|m| m.1),
            "resident_slope_bytes_per_window": memory_slope,
            "memory_trace": memory,
            "weights": weight_rows.iter().map(|(validator, rows)| serde_json::json!({
                "validator": validator,
                "uids": rows.iter().map(|r| serde_json::json!({
                    "uid": r.uid, "node": r.name, "role": r.role.to_string(),
                    "weight": r.weight, "share": r.share,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "validator_windows": validators.iter().map(|v| v.validator_stats.windows().len()).sum::<usize>(),
            "check_ok": ok,
            "elapsed_secs": elapsed.as_secs_f64(),
        });
        report::write(report_dir, &runs, first_window, &summary)?;
        println!("report: {}", report_dir.display());
    }
    if args.check && !ok {
        bail!("devnet check failed: {}", reasons.join("; "));
    }
    Ok(())
}

fn exchange_of(runs: &[MinerRun], role: Role) -> String {
    runs.iter().find(|r| r.role == role).map(|r| r.exchange.clone()).unwrap_or_default()
}

fn mean<'a>(values: impl Iterator<Item = &'a f32>) -> f32 {
    let (sum, n) = values.fold((0f32, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f32::NAN } else { sum / n as f32 }
}
