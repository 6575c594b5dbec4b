//! `tessera devnet`: the whole system on one machine, in the foreground. Prints a line per
//! miner and window as they complete, then a summary table and how the exchanging miners
//! compare with a baseline on held-out loss; `--check` turns that into an exit status, and
//! `--report DIR` writes the figures and a plot.
//!
//! The parts, in the order of a run: [`options`] (the flags), [`banner`] (the opening
//! lines), [`table`] (the live table), then [`summary`], [`verdict`], [`bandwidth`],
//! [`memory`] and the [`validator`]'s weights, and [`report`] (`--report DIR`).

mod bandwidth;
mod banner;
mod memory;
mod options;
mod report;
mod summary;
mod table;
mod validator;
mod verdict;
mod window_log;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tessera_actors::devnet::{Devnet, Role};
use tessera_actors::task::AbortOnDrop;
use tessera_actors::{MinerContext, observe};
use tessera_core::model::ParamLayout;

use crate::cli::DevnetArgs;
pub use options::ExchangeFlag;
use report::MinerRun;
use table::{SliceCounts, Watched};
use validator::WeightRow;
use window_log::WindowLog;

/// Window length of the devnet, in blocks (the live subnet's).
const WINDOW_LENGTH: u64 = 2;

pub async fn run(args: DevnetArgs) -> Result<()> {
    options::init_logging(&args.logs);
    let state = options::StateDir::open(args.state_dir.as_deref())?;
    let devnet_options = options::devnet_options(&args, &state.path)?;
    let layout = ParamLayout::llama(&devnet_options.hparams.model_shape())?;
    let object_bytes = bandwidth::object_bytes(&layout, &devnet_options.hparams)?;
    let started = Instant::now();
    let net = Devnet::start(devnet_options).await?;
    // Weights every window: the dev chain's rate limit is one window.
    net.chain.set_weights_rate_limit(WINDOW_LENGTH);
    let nodes = Nodes::of(&net);
    let _endpoint = serve_metrics(&net, &nodes, args.metrics_listen).await?;
    let validator = !nodes.validators.is_empty();
    banner::print(&mut std::io::stdout().lock(), &net.options, layout.total_numel(), validator, &state)?;

    // The windows' log: beside the report when there is one, so the state directory's
    // size (which the soak follows) holds only what the nodes keep.
    let log_dir = args.report.as_deref().unwrap_or(&net.options.state_dir).join("devnet-windows");
    let mut watched = table::watch(&net, &nodes, args.windows, started, &log_dir).await?;
    let elapsed = started.elapsed();
    let runs = miner_runs(&nodes, &mut watched.windows)?;
    let weights = weights_on_chain(&net, &nodes).await?;
    net.shutdown().await;

    let conclusion = conclude(&mut std::io::stdout().lock(), &args, &runs, &weights, &watched, elapsed, object_bytes)?;
    if let Some(dir) = &args.report {
        let outcome = report::Outcome {
            params: layout.total_numel(),
            comparisons: &conclusion.comparisons,
            bandwidth: &conclusion.bandwidth,
            memory: &watched.memory,
            weights: &weights,
            validator_windows: nodes
                .validators
                .iter()
                .filter_map(|v| v.validator_stats())
                .map(|s| s.windows_evaluated() as usize)
                .sum(),
            check_ok: conclusion.reasons.is_empty(),
            elapsed,
            models: verdict::fingerprints(&runs),
        };
        report::write(dir, &runs, &report::summary_json(&args, &outcome)?)?;
        println!("report: {}", dir.display());
    }
    if args.check && !conclusion.reasons.is_empty() {
        bail!("devnet check failed: {}", conclusion.reasons.join("; "));
    }
    Ok(())
}

/// The devnet's nodes, as the output groups them.
pub struct Nodes {
    pub all: Vec<Arc<MinerContext>>,
    /// The miners' table and checks; the validator has its own lines.
    pub miners: Vec<Arc<MinerContext>>,
    pub validators: Vec<Arc<MinerContext>>,
    /// Each node's UID and name, for the validator's lines.
    pub names: Vec<(u16, String)>,
    /// Each node's role, as the devnet started it.
    roles: HashMap<String, Role>,
}

impl Nodes {
    fn of(net: &Devnet) -> Self {
        let all: Vec<Arc<MinerContext>> = net.miners().to_vec();
        let (validators, miners) = all.iter().cloned().partition(|m| m.is_validator());
        let names = all.iter().map(|m| (m.id.uid, m.id.name.clone())).collect();
        let roles = all.iter().map(|m| (m.id.name.clone(), net.role(&m.id.name).unwrap_or(Role::Exchanging))).collect();
        Self { all, miners, validators, names, roles }
    }

    pub fn role(&self, node: &MinerContext) -> Role {
        self.roles.get(&node.id.name).copied().unwrap_or(Role::Exchanging)
    }
}

/// Serves /metrics, /healthz and /readyz for every node on `listen`, while the returned
/// handle lives.
async fn serve_metrics(
    net: &Devnet,
    nodes: &Nodes,
    listen: Option<SocketAddr>,
) -> Result<Option<(SocketAddr, AbortOnDrop)>> {
    let Some(listen) = listen else { return Ok(None) };
    let status = net.host.as_ref().map(|h| h.status_receiver()).context("the devnet has no host")?;
    let endpoint = observe::serve(listen, nodes.all.clone(), status)
        .await
        .with_context(|| format!("serving metrics on {listen}"))?;
    Ok(Some(endpoint))
}

/// Each miner's run as it stands, read before the devnet shuts down: its windows from the
/// live table's log.
fn miner_runs(nodes: &Nodes, log: &mut WindowLog) -> Result<Vec<MinerRun>> {
    nodes
        .miners
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(MinerRun {
                name: m.id.name.clone(),
                role: nodes.role(m),
                exchange: if m.settings.baseline { "none".into() } else { m.exchange().to_string() },
                windows: log.read(i)?,
                slices: SliceCounts::of(m),
                restarts: m.telemetry.stats.restarts().values().sum(),
                resumed: m.telemetry.stats.resumed(),
            })
        })
        .collect()
}

/// The weights each validator set on the dev chain, by validator name.
async fn weights_on_chain(net: &Devnet, nodes: &Nodes) -> Result<Vec<(String, Vec<WeightRow>)>> {
    let mut weights = Vec::new();
    for v in &nodes.validators {
        weights.push((v.id.name.clone(), validator::chain_weights(net, v, &nodes.all).await?));
    }
    Ok(weights)
}

/// What the summary found: the check's reasons (none: it passed) and the figures the
/// report keeps.
struct Conclusion {
    reasons: Vec<String>,
    comparisons: Vec<summary::GroupComparison>,
    bandwidth: Vec<bandwidth::GroupBandwidth>,
}

/// Prints the summary after the run, judging as it goes: the table, the comparisons with
/// the baseline, the bandwidth, memory, the weights on the chain, and the verdict.
fn conclude(
    out: &mut impl Write,
    args: &DevnetArgs,
    runs: &[MinerRun],
    weights: &[(String, Vec<WeightRow>)],
    watched: &Watched,
    elapsed: Duration,
    object_bytes: tessera_core::slice::ObjectBytes,
) -> Result<Conclusion> {
    summary::print_table(out, runs)?;
    let mut reasons = verdict::judge_miners(runs);
    let comparisons = summary::comparisons(runs);
    summary::print_comparisons(out, &comparisons)?;
    let fresh = !runs.iter().any(|r| r.resumed);
    reasons.extend(verdict::judge_against_baseline(&comparisons, fresh));
    reasons.extend(verdict::judge_against_ideal(&comparisons, fresh));
    let (differing, compared) = verdict::fingerprints(runs);
    if compared > 0 {
        writeln!(
            out,
            "models: the exchanging miners held the same model in {} of {compared} windows",
            compared - differing.len()
        )?;
    }
    reasons.extend(verdict::judge_fingerprints(runs));
    let bandwidth = bandwidth::per_group(runs, args.exchange.0, args.max_peers, object_bytes);
    bandwidth::print(out, &bandwidth, object_bytes)?;
    watched.memory.print(out)?;
    for (name, rows) in weights {
        validator::print_weights_and_verdict(out, name, rows, args.adversaries.is_some(), &mut reasons)?;
    }
    if watched.idle_windows > 0 {
        writeln!(out, "{} window line(s) trained nothing; the reason is on each line", watched.idle_windows)?;
    }
    summary::print_ending(out, watched.interrupted, elapsed, watched.first_window_at, &reasons)?;
    Ok(Conclusion { reasons, comparisons, bandwidth })
}
