//! The validator on a whole network in one process: it scores the miners, sets weights
//! on the dev chain within its rate limit, and loses no scores when its Evaluator or
//! WeightSetter panics or the whole process restarts on the same state directory.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, wait_until};
use tessera_actors::devnet::{Devnet, DevnetOptions};
use tessera_actors::{ActorKind, Fault, MinerContext, MinerStats};
use tessera_core::chain::Chain;
use tessera_core::slice::ObjectKey;
use tessera_core::validator::ScoreBook;

async fn start(dir: &Path, prefix: &str) -> Devnet {
    init_logs();
    let mut options = DevnetOptions::new(dir).unwrap();
    options.name_prefix = prefix.to_owned();
    options.miners = 2;
    options.validator = true;
    options.block_time = Duration::from_millis(300);
    options.settings = tessera_actors::devnet::devnet_settings(options.block_time);
    options.hparams = tessera_actors::devnet::tiny_hparams(3).unwrap();
    let net = Devnet::start(options).await.unwrap();
    net.chain.set_weights_rate_limit(3);
    net
}

fn scored_windows(v: &MinerContext) -> usize {
    v.validator_stats().expect("a validator").windows_evaluated() as usize
}

fn times_scored(v: &MinerContext, uid: u16) -> u64 {
    v.validator
        .as_ref()
        .expect("a validator")
        .scores
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|b| b.uids.get(&uid).map(|s| s.windows_scored))
        .unwrap_or(0)
}

/// The windows of the slices in a slice cache, ascending (`<dir>/<location>/<key>.<version>`).
fn cached_windows(cache: &Path) -> Vec<u64> {
    let mut windows: Vec<u64> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|bucket| std::fs::read_dir(bucket.path()).into_iter().flatten().flatten())
        .filter_map(|file| {
            let name = file.file_name().into_string().ok()?;
            let (key, _version) = name.rsplit_once('.')?;
            key.parse::<ObjectKey>().ok().map(|k| k.window)
        })
        .collect();
    windows.sort_unstable();
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_validator_scores_sets_weights_and_keeps_its_scores_through_panics_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path(), "v-").await;
    let nodes: Vec<Arc<MinerContext>> = net.miners().to_vec();
    let validator = nodes.iter().find(|m| m.is_validator()).expect("a validator").clone();
    let miner = nodes.iter().find(|m| !m.is_validator()).expect("a miner").clone();
    let scores_file = dir.path().join("v-validator1").join("scores.json");

    // Both honest miners earn weight once their moving scores and indicators are up.
    wait_until("weights on chain for both miners", || {
        validator
            .validator_stats()
            .expect("a validator")
            .last_weights()
            .is_some_and(|(_, w)| w.len() == 2 && w.iter().all(|(_, v)| *v > 0))
    })
    .await;
    let on_chain = net.chain.weights(net.options.netuid, validator.id.uid).await.unwrap();
    assert!(on_chain.iter().any(|(uid, w)| *uid == miner.id.uid && *w > 0), "{on_chain:?}");
    let (block, confirmed) =
        validator.validator_stats().expect("a validator").last_weights().expect("confirmed weights");
    assert!(block > 0 && !confirmed.is_empty());
    assert!(confirmed.iter().all(|(uid, _)| *uid != validator.id.uid), "a validator does not weight itself");
    let saved = ScoreBook::load(&scores_file).unwrap().expect("scores saved");
    assert!(saved.window.is_some() && saved.uids.contains_key(&miner.id.uid), "{saved:?}");
    // Never more often than the rate limit: the counter of held-back attempts shows the
    // setter waited rather than being refused by the chain.
    assert_eq!(MinerStats::get(&validator.validator_stats().expect("a validator").weights_refused), 0);

    for kind in [ActorKind::Evaluator, ActorKind::WeightSetter] {
        let (scored, set, times) = (
            scored_windows(&validator),
            MinerStats::get(&validator.validator_stats().expect("a validator").weights_set),
            times_scored(&validator, miner.id.uid),
        );
        validator.faults.arm(Fault::PanicIn(kind));
        wait_until(&format!("the panic in {kind}"), || !validator.faults.is_armed(Fault::PanicIn(kind))).await;
        wait_until(&format!("{kind} restarted"), || {
            validator.telemetry.stats.restarts().get(&kind).copied().unwrap_or(0) >= 1
        })
        .await;
        assert!(times_scored(&validator, miner.id.uid) >= times, "{kind}: the scores were not reset by the restart");
        // A window whose job started late may skip every miner (no time left): wait for
        // the miner to be scored again, not for a number of windows.
        wait_until(&format!("scoring and weights after the {kind} restart"), || {
            scored_windows(&validator) > scored
                && times_scored(&validator, miner.id.uid) > times
                && MinerStats::get(&validator.validator_stats().expect("a validator").weights_set) > set
        })
        .await;
    }

    // Its slice cache keeps the last `max_history` windows, not every slice it ever read
    // (issue 25: 112 MB after 300 windows of 8 devnet miners when it was never collected).
    let cache_dir = dir.path().join("v-validator1").join("slice-cache");
    let history = validator.network.max_history.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("the validator's slice cache collected", || {
        let windows = cached_windows(&cache_dir);
        let (Some(first), Some(last)) = (windows.first(), windows.last()) else { return false };
        last - first <= history + 2 && *last > history + 3
    })
    .await;

    // The whole process again on the same state: the scores come back from the file.
    let before = ScoreBook::load(&scores_file).unwrap().expect("scores saved");
    let times_before = before.uids[&miner.id.uid].windows_scored;
    net.shutdown().await;
    let net = start(dir.path(), "v-").await;
    let validator = net.miners().iter().find(|m| m.is_validator()).expect("a validator").clone();
    wait_until("a scored window after the restart", || scored_windows(&validator) >= 1).await;
    let after =
        validator.validator.as_ref().expect("a validator").scores.lock().unwrap().clone().expect("scores in memory");
    assert!(
        after.uids[&miner.id.uid].windows_scored >= times_before,
        "reloaded, not restarted from zero: {} scored windows before, {} after",
        times_before,
        after.uids[&miner.id.uid].windows_scored
    );
    net.shutdown().await;
}

/// A lockstep devnet waits for the validator's weights only while the chain accepts them:
/// under a rate limit longer than a window it still ends its windows (the limit counts
/// blocks, which lockstep builds the same every run), holds its clock, and the weights
/// set are those of the last scores the limit let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lockstep_devnet_ends_its_windows_under_a_weights_rate_limit() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut options = DevnetOptions::new(dir.path()).unwrap();
    options.name_prefix = "ls-".to_owned();
    options.miners = 2;
    options.validator = true;
    options.lockstep = true;
    // Enough windows for a significance gate to open (5 scored windows, offset 2).
    options.lockstep_windows = Some(10);
    options.block_time = Duration::from_millis(20);
    options.settings = tessera_actors::devnet::devnet_settings(options.block_time);
    options.settings.fixed_micro_batches = 1;
    let net = Devnet::start(options).await.unwrap();
    // Five blocks between settings: more than a window of two blocks.
    net.chain.set_weights_rate_limit(5);
    wait_until("the lockstep clock to hold after its windows", || net.lockstep_held()).await;
    let nodes: Vec<Arc<MinerContext>> = net.miners().to_vec();
    assert!(nodes.iter().all(|m| MinerStats::get(&m.telemetry.stats.windows_completed) >= 10));
    let validator = nodes.iter().find(|m| m.is_validator()).expect("a validator");
    let stats = validator.validator_stats().expect("a validator");
    assert!(MinerStats::get(&stats.weights_set) >= 1, "no weights set in 10 windows");
    assert!(MinerStats::get(&stats.weights_rate_limited) >= 1, "the rate limit never held the weights back");
    net.shutdown().await;
}

/// SparseLoCo: a miner whose model leaves the network's (an injected drift) notices it by
/// its peers' state slices, takes the model from the validator's snapshot and the outer
/// steps since, and holds the same model as the others again; nobody else resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sparseloco_miner_out_of_step_resyncs_from_the_validators_snapshot() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut options = DevnetOptions::new(dir.path()).unwrap();
    options.name_prefix = "rs-".to_owned();
    options.miners = 3;
    options.validator = true;
    options.lockstep = true;
    options.lockstep_windows = Some(12);
    options.block_time = Duration::from_millis(20);
    options.settings = tessera_actors::devnet::devnet_settings(options.block_time);
    options.settings.fixed_micro_batches = 2;
    options.hparams.exchange = tessera_core::slice::Exchange::SparseLoco;
    let net = Devnet::start(options).await.unwrap();
    let nodes: Vec<Arc<MinerContext>> = net.miners().to_vec();
    let miners: Vec<&Arc<MinerContext>> = nodes.iter().filter(|m| !m.is_validator()).collect();
    let drifting = miners[0].clone();
    wait_until("three windows on the drifting miner", || {
        MinerStats::get(&drifting.telemetry.stats.windows_completed) >= 3
    })
    .await;
    drifting.faults.arm(Fault::ModelDrift);
    wait_until("the lockstep clock to hold after its windows", || net.lockstep_held()).await;

    let resyncs: Vec<u64> = miners.iter().map(|m| MinerStats::get(&m.telemetry.stats.model_resyncs)).collect();
    assert_eq!(resyncs, vec![1, 0, 0], "only the drifted miner resynchronised, once");
    // Every window's fingerprint (after its outer step) is the same on the three miners.
    let hashes = |m: &MinerContext| -> Vec<(u64, Option<u64>)> {
        m.telemetry.stats.windows().iter().map(|w| (w.window, w.model_hash)).collect()
    };
    let first = hashes(miners[0]);
    assert!(first.len() >= 10 && first.iter().all(|(_, h)| h.is_some()), "{first:?}");
    for other in &miners[1..] {
        assert_eq!(hashes(other), first, "the miners' models differ");
    }
    net.shutdown().await;
}
