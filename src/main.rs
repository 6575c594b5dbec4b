//! The `tessera` binary: command line, logging and process wiring. The protocol and the
//! configuration rules live in `tessera-core`; this file only connects them.

mod checkpoint;
mod cli;
mod devnet;
mod eval;
mod export;
mod miner;
mod status;
mod validator;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use tessera_core::config::{ConfigError, ConfigSources, HparamsSettings, LogFormat, MinerConfig};
use tessera_core::hparams::{LoadedHparams, load_hparams};
use tessera_core::model::ParamLayout;
use tessera_core::window::WindowSchedule;
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::cli::{Cli, Command, HparamsArgs, MinerArgs};

/// jemalloc, not glibc's malloc: a long run's freed memory goes back to the system
/// (docs/DESIGN.md §15).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for configuration errors, as for command-line usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before any thread exists: the environment is only safe to change while nothing else
    // can read it.
    tessera_model::backend::use_every_core_for_cpu_matmuls();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(tessera_actors::bounds::BLOCKING_THREADS_MAX)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let overrides = cli::overrides(&matches);
    let result = match cli.command {
        Command::Miner(args) => node(*args, overrides, false).await,
        Command::Validator(args) => node(*args, overrides, true).await,
        Command::Hparams(args) => hparams(args, overrides).await,
        Command::Devnet(args) => devnet::run(args).await,
        Command::Checkpoint(args) => checkpoint::run(args),
        Command::Export(args) => export::run(args),
        Command::Status(args) => status::run(args).await,
        Command::Eval(args) => eval::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // The library names settings; the command line has a flag for this one.
            if let Some(ConfigError::MissingBucket) = err.downcast_ref::<ConfigError>() {
                eprintln!("hint: or pass --bucket NAME");
            }
            if err.downcast_ref::<ConfigError>().is_some() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

type LogHandle = reload::Handle<EnvFilter, Registry>;

/// Logs go to stderr; stdout is kept for the CLI's own output. `RUST_LOG`, when set,
/// replaces the level the flags choose. Text for people (with the span of the window
/// being trained, so each line names the miner and window), or one JSON object per line.
fn init_logging(debug: bool, trace: bool, format: LogFormat) -> LogHandle {
    init_logging_with(log_filter(debug, trace), format)
}

fn init_logging_with(filter: EnvFilter, format: LogFormat) -> LogHandle {
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Fails only if a subscriber is already set, which nothing else here does.
    let _ = match format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr))
            .try_init(),
        // No colour codes where stderr is a file or a pipe (pm2, docker logs).
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    };
    handle
}

/// The `log_format` setting of `sources` (flags and environment included), read before
/// logging starts so that it holds from the first line; text when the configuration does
/// not load (its error is reported once logging runs).
fn log_format(sources: &ConfigSources) -> LogFormat {
    MinerConfig::load_log_format(sources).unwrap_or_default()
}

fn log_filter(debug: bool, trace: bool) -> EnvFilter {
    if let Ok(spec) = std::env::var("RUST_LOG")
        && !spec.trim().is_empty()
    {
        match EnvFilter::try_new(&spec) {
            Ok(filter) => return filter,
            Err(e) => eprintln!("warning: ignoring RUST_LOG={spec:?}: {e}"),
        }
    }
    // --debug/--trace raise tessera's own crates; dependencies stay at info, as their
    // debug output (HTTP, TLS, websockets) would drown the miner's.
    let ours = match (trace, debug) {
        (true, _) => "trace",
        (false, true) => "debug",
        (false, false) => "info",
    };
    EnvFilter::new(format!("info,tessera={ours},tessera_core={ours},tessera_actors={ours}"))
}

/// `tessera miner` and `tessera validator`: the same configuration and start-up checks;
/// a validator runs one hotkey, reads every bucket, and scores instead of training.
async fn node(args: MinerArgs, overrides: Vec<(String, String)>, validator: bool) -> Result<()> {
    let sources = ConfigSources::from_process(args.common.config.clone(), overrides);
    let format = log_format(&sources);
    let log = init_logging(args.debug, args.trace, format);
    let config = MinerConfig::load(&sources)?;
    let effective = config.effective_toml();
    if args.print_config {
        print!("{effective}");
        return Ok(());
    }
    // debug/trace may also come from a file or the environment.
    if (config.debug || config.trace) && !(args.debug || args.trace) {
        let _ = log.reload(log_filter(config.debug, config.trace));
    }
    let kind = if validator { "validator" } else { "miner" };
    info!(version = env!("CARGO_PKG_VERSION"), "tessera {kind} starting");
    info!("effective configuration:\n{effective}");
    if config.autoupdate {
        warn!("--autoupdate is not applicable: tessera is updated by image or binary version; ignoring it");
    }

    let loaded = load_network_hparams(&config.hparams_settings()).await?;
    let hp = &loaded.hparams;
    let layout = ParamLayout::llama(&hp.model_shape()).context("building the model layout")?;
    let schedule = WindowSchedule::new(hp.window_length).context("building the window schedule")?;
    info!(
        source = %loaded.origin,
        parameters = layout.total_numel(),
        tensors = layout.len(),
        fingerprint = %layout.fingerprint(),
        window_length = schedule.window_length(),
        compression = hp.compression,
        max_history = hp.max_history,
        "model"
    );

    let instances = config.instances();
    if validator {
        validator::check_config(&config, &instances)?;
    }
    let mut hotkeys = Vec::new();
    for instance in &instances {
        hotkeys.push(miner::load_wallet(instance).with_context(|| format!("starting miner {}", instance.name))?);
    }
    let shared = miner::Shared::new(&config, loaded.hparams.clone()).await?;
    let mut prepared = Vec::new();
    for (instance, hotkey) in instances.iter().zip(hotkeys) {
        let ready = miner::prepare(instance, hotkey, &shared).await;
        prepared.push(ready.with_context(|| format!("starting miner {}", instance.name))?);
    }
    let data = miner::DataInputs::load(&config, &shared.hparams).await?;
    let miners =
        prepared.into_iter().map(|p| miner::build(p, &shared, &data, validator)).collect::<Result<Vec<_>>>()?;
    if validator {
        for ctx in &miners {
            validator::check_weights_policy(ctx).await?;
        }
    }
    miner::run(miners, &config).await
}

/// The errors of `load_hparams` already name the file or URL and the cache.
async fn load_network_hparams(settings: &HparamsSettings) -> Result<LoadedHparams> {
    Ok(load_hparams(&settings.source, &settings.cache_path).await?)
}

async fn hparams(args: HparamsArgs, overrides: Vec<(String, String)>) -> Result<()> {
    init_logging(false, false, LogFormat::Text);
    let sources = ConfigSources::from_process(args.common.config.clone(), overrides);
    let settings = HparamsSettings::load(&sources)?;
    let loaded = load_network_hparams(&settings).await?;
    let layout = ParamLayout::llama(&loaded.hparams.model_shape()).context("building the model layout")?;
    let report = serde_json::json!({
        "source": loaded.origin.to_string(),
        "hparams": loaded.hparams,
        "model": {
            "parameters": layout.total_numel(),
            "tensors": layout.len(),
            "fingerprint": layout.fingerprint().to_string(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
