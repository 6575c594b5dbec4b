//! `tessera devnet`'s flags turned into what the run needs: `--exchange` as a typed flag,
//! the logging, the state directory and the devnet's options.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;
use clap::builder::PossibleValue;
use tessera_actors::devnet::{DevnetOptions, devnet_settings, tiny_hparams};
use tessera_core::slice::Exchange;
use tracing_subscriber::EnvFilter;

use super::WINDOW_LENGTH;
use crate::cli::{DevnetArgs, LogArgs};

/// `--exchange`: the core's [`Exchange`] as a clap value, spelled as the core spells it
/// ([`Exchange::as_str`]), so the flag and the printed exchange cannot drift apart. A
/// newtype because the core does not depend on clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeFlag(pub Exchange);

/// The devnet runs the update exchange unless told (the core's default is the seed's).
impl Default for ExchangeFlag {
    fn default() -> Self {
        ExchangeFlag(Exchange::Update)
    }
}

impl ValueEnum for ExchangeFlag {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            ExchangeFlag(Exchange::Update),
            ExchangeFlag(Exchange::Seed),
            ExchangeFlag(Exchange::SparseLoco),
            ExchangeFlag(Exchange::Gradient),
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self.0 {
            Exchange::Update => "each window's update, averaged in place of the own one (protocol v2)",
            Exchange::Seed => "the seed's exchange of parameter values (protocol v1)",
            Exchange::SparseLoco => {
                "SparseLoCo: whole updates, top-k compressed with error feedback, one outer step (protocol v3)"
            }
            Exchange::Gradient => {
                "whole gradients, compressed as SparseLoCo's; every miner steps AdamW on the aggregate (protocol v4)"
            }
        };
        Some(PossibleValue::new(self.0.as_str()).help(help))
    }
}

/// Logs to stderr at warnings unless asked for (`--debug`, `--trace`, `RUST_LOG`): the table
/// on stdout is the devnet's output.
pub fn init_logging(logs: &LogArgs) {
    let flag = logs.log_format.iter().map(|f| ("log_format".to_owned(), f.clone())).collect();
    let format = crate::log_format(&tessera_core::config::ConfigSources::from_process(None, flag));
    let asked = logs.debug || logs.trace || std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    let filter = if asked { crate::log_filter(logs.debug, logs.trace) } else { EnvFilter::new("warn") };
    crate::init_logging_with(filter, format);
}

/// Where the devnet keeps its state: `--state-dir`, or a temporary directory removed when
/// this is dropped (at exit).
pub struct StateDir {
    pub path: PathBuf,
    temporary: Option<tempfile::TempDir>,
}

impl StateDir {
    pub fn open(kept: Option<&Path>) -> Result<Self> {
        match kept {
            Some(dir) => Ok(Self { path: dir.to_path_buf(), temporary: None }),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("tessera-devnet-")
                    .tempdir()
                    .context("a temporary state directory")?;
                Ok(Self { path: temp.path().to_path_buf(), temporary: Some(temp) })
            }
        }
    }

    pub fn is_temporary(&self) -> bool {
        self.temporary.is_some()
    }
}

/// The devnet's options from the flags, its state in `dir`.
pub fn devnet_options(args: &DevnetArgs, dir: &Path) -> Result<DevnetOptions> {
    let lockstep = args.fixed_compute > 0;
    let mut options = DevnetOptions::new(dir)?;
    options.miners = usize::from(args.miners);
    // The ideal miner is measured against the baseline: it brings one.
    options.baseline_miners = usize::from(args.baseline_miner || args.ideal_miner);
    options.ideal_miner = args.ideal_miner;
    options.seed_exchange_miners = usize::from(args.seed_exchange_miners);
    options.block_time = args.block_time;
    options.seed = args.seed;
    options.lockstep = lockstep;
    options.lockstep_windows = (args.windows > 0).then_some(args.windows);
    options.validator = !args.no_validator;
    options.adversaries = args.adversaries.clone().map(|list| list.0).unwrap_or_default();
    options.settings = devnet_settings(args.block_time);
    options.settings.eval_every = args.eval_every;
    options.settings.fixed_micro_batches = args.fixed_compute as usize;
    options.hparams = tiny_hparams(WINDOW_LENGTH)?;
    options.hparams.exchange = args.exchange.0;
    options.hparams.compression = args.compression;
    options.hparams.exchange_outer_lr = args.outer_lr;
    options.hparams.exchange_outer_momentum = args.outer_momentum;
    options.hparams.exchange_top_k = args.top_k;
    options.hparams.micro_batches_per_step = args.micro_batches_per_step;
    options.hparams.exchange_max_peers = args.max_peers;
    if let Some(lr) = args.learning_rate {
        options.hparams.learning_rate = lr;
    }
    if lockstep {
        // Under fixed compute a miner trains its first K micro-batches: the validator
        // scores each update on those.
        options.hparams.validator_eval_batches = Some(args.fixed_compute);
    }
    options.hparams.validate()?;
    // A kept state directory continues its windows after a restart: by the wall clock in
    // real time, from the last head in lockstep (so a fresh lockstep run is reproducible).
    let kept = args.state_dir.is_some();
    options.wall_clock_blocks = kept && !lockstep;
    if kept && lockstep {
        options.head_file = Some(dir.join("devnet-head"));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_flag_takes_the_cores_spelling() {
        for flag in ExchangeFlag::value_variants() {
            assert_eq!(ExchangeFlag::from_str(flag.0.as_str(), false), Ok(*flag));
        }
        assert!(ExchangeFlag::from_str("foo", false).is_err());
    }

    #[test]
    fn a_bad_exchange_is_a_clap_error_naming_the_values() {
        use clap::Parser;
        let err = crate::cli::Cli::try_parse_from(["tessera", "devnet", "--exchange", "foo"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("[possible values: update, seed, sparseloco, gradient]"), "{err}");
    }
}
