//! The devnet's opening lines, from the options it runs under: what runs (miners, exchange,
//! model, clock), who scores it, the seed and the compute, where the state is, and the live
//! table's header.

use std::io::Write;

use anyhow::Result;
use tessera_actors::devnet::{Adversary, DevnetOptions};

use super::options::StateDir;
use super::table;

/// Prints the opening lines and the live table's header; `validator`: one runs.
pub fn print(
    out: &mut impl Write,
    options: &DevnetOptions,
    params: usize,
    validator: bool,
    state: &StateDir,
) -> Result<()> {
    writeln!(out, "{}", network_line(options, params))?;
    if let Some(line) = scoring_line(validator, &options.adversaries) {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "{}", compute_line(options))?;
    writeln!(out, "state: {}{}", state.path.display(), if state.is_temporary() { " (temporary)" } else { "" })?;
    writeln!(out, "{}", table::header())?;
    Ok(())
}

/// The miners, the exchange, the model and the clock.
fn network_line(options: &DevnetOptions, params: usize) -> String {
    let seed_exchange = match options.seed_exchange_miners {
        0 => String::new(),
        n => format!(" + {n} on the seed exchange"),
    };
    let baseline = if options.baseline_miners > 0 { " + 1 baseline (trains alone)" } else { "" };
    let ideal = if options.ideal_miner {
        format!(" + 1 ideal (trains alone on {} miners' data per step)", options.miners)
    } else {
        String::new()
    };
    format!(
        "tessera devnet: {} miner{} ({} exchange){seed_exchange}{baseline}{ideal}, a {params}-parameter Llama on CPU, windows of {} blocks x {:?}",
        options.miners,
        plural(options.miners as u64),
        options.hparams.exchange,
        options.hparams.window_length,
        options.block_time,
    )
}

/// Whether a validator scores and which adversaries run; none when neither.
fn scoring_line(validator: bool, adversaries: &[Adversary]) -> Option<String> {
    if !validator && adversaries.is_empty() {
        return None;
    }
    let scoring =
        if validator { "a validator scores every miner's delta each window and sets weights" } else { "no validator" };
    let names: Vec<String> = adversaries.iter().map(|a| format!("{}1", a.name())).collect();
    let adversaries = if names.is_empty() { String::new() } else { format!("; adversaries: {}", names.join(", ")) };
    Some(format!("{scoring}{adversaries}"))
}

/// The seed, the compute per window and how often the held-out loss is measured.
fn compute_line(options: &DevnetOptions) -> String {
    let settings = &options.settings;
    let compute = match settings.fixed_micro_batches {
        0 => "each miner trains until the window ends".to_owned(),
        k => format!(
            "fixed compute: {k} micro-batches of {} x {} tokens per miner and window, the clock waits",
            settings.batch_size, options.hparams.sequence_length
        ),
    };
    format!(
        "seed {} (model initialisation and data); {compute}; held-out loss every {} window{}",
        options.seed,
        settings.eval_every,
        plural(settings.eval_every)
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_lines_name_the_run() {
        let mut options = DevnetOptions::new("/tmp/unused").unwrap();
        options.hparams.exchange = tessera_core::slice::Exchange::Update;
        options.seed_exchange_miners = 1;
        options.baseline_miners = 1;
        options.settings.fixed_micro_batches = 2;
        options.settings.batch_size = 4;
        options.settings.eval_every = 1;
        let network = network_line(&options, 1000);
        assert!(
            network.starts_with(
                "tessera devnet: 3 miners (update exchange) + 1 on the seed exchange + 1 baseline (trains alone), a 1000-parameter Llama"
            ),
            "{network}"
        );
        assert!(network.ends_with("windows of 2 blocks x 500ms"), "{network}");
        let compute = compute_line(&options);
        assert!(compute.contains("fixed compute: 2 micro-batches of 4 x 64 tokens"), "{compute}");
        assert!(compute.ends_with("held-out loss every 1 window"), "{compute}");
    }

    #[test]
    fn the_scoring_line_says_who_scores_and_who_cheats() {
        assert_eq!(scoring_line(false, &[]), None);
        assert_eq!(
            scoring_line(true, &[]).as_deref(),
            Some("a validator scores every miner's delta each window and sets weights")
        );
        assert_eq!(
            scoring_line(false, &Adversary::CLASSIC).unwrap(),
            "no validator; adversaries: copier1, lazy1, noise1, randompages1"
        );
    }
}
