//! Fault injection on a whole network in one process (dev chain, embedded S3 over HTTP,
//! three miners): panics in every actor kind and in the training engine, an S3 outage of
//! several windows, a dropped block stream, and peers serving hostile slice files. Every
//! wait polls with a deadline.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DEADLINE, init_logs, wait_until};
use tessera_actors::devnet::{Devnet, DevnetOptions};
use tessera_actors::{ActorKind, Fault, MinerContext, MinerStats};
use tessera_core::chain::Chain;
use tessera_core::slice::{Expected, ObjectKey, SliceKind, SliceMeta, decode, encode, encode_unchecked};
use tessera_core::wallet::LoadedHotkey;

fn windows(ctx: &MinerContext) -> u64 {
    MinerStats::get(&ctx.telemetry.stats.windows_completed)
}

fn last_step(ctx: &MinerContext) -> u64 {
    ctx.telemetry.stats.windows().last().map(|w| w.step).unwrap_or(0)
}

async fn start(dir: &Path, prefix: &str, configure: impl FnOnce(&mut DevnetOptions)) -> Devnet {
    init_logs();
    let mut options = DevnetOptions::new(dir).unwrap();
    options.name_prefix = prefix.to_owned();
    options.block_time = Duration::from_millis(300);
    options.settings = tessera_actors::devnet::devnet_settings(options.block_time);
    options.hparams = tessera_actors::devnet::tiny_hparams(3).unwrap();
    configure(&mut options);
    Devnet::start(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn panics_in_every_actor_kind_and_the_engine_are_survived_without_losing_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path(), "p-", |o| o.miners = 2).await;
    let miners: Vec<Arc<MinerContext>> = net.miners().to_vec();
    let target = miners[0].clone();
    wait_until("two windows on every miner", || miners.iter().all(|m| windows(m) >= 2)).await;

    for kind in ActorKind::ALL {
        let before = windows(&target);
        let step_before = last_step(&target);
        target.faults.arm(Fault::PanicIn(kind));
        wait_until(&format!("the injected panic in {kind} to fire"), || !target.faults.is_armed(Fault::PanicIn(kind)))
            .await;
        wait_until(&format!("{kind} to be restarted"), || {
            target.telemetry.stats.restarts().get(&kind).copied().unwrap_or(0) >= 1
        })
        .await;
        wait_until(&format!("a window completed after the {kind} restart"), || windows(&target) >= before + 2).await;
        assert!(
            last_step(&target) > step_before,
            "{kind}: the optimizer step went from {step_before} to {}: the model was reset",
            last_step(&target)
        );
    }
    let ready_ms = MinerStats::get(&target.telemetry.stats.last_restart_ready_ms);
    assert!(ready_ms > 0, "a restarted Trainer reports when it trains again");
    eprintln!("restarted Trainer (engine kept) training again after {ready_ms} ms");

    // The engine holding the model panics: the model comes back from the checkpoint.
    let before = windows(&target);
    let step_before = last_step(&target);
    target.faults.arm(Fault::EnginePanic);
    wait_until("the engine to be rebuilt", || MinerStats::get(&target.telemetry.stats.engine_rebuilds) >= 1).await;
    wait_until("two windows after the engine rebuild", || windows(&target) >= before + 2).await;
    assert!(
        last_step(&target) + 2 >= step_before,
        "after an engine rebuild the model resumed from its checkpoint (step {} vs {step_before} before)",
        last_step(&target)
    );
    let ready_ms = MinerStats::get(&target.telemetry.stats.last_restart_ready_ms);
    eprintln!("restarted Trainer (model from checkpoint) training again after {ready_ms} ms");
    // The other miner never stopped.
    assert!(windows(&miners[1]) >= 6);
    let reports = net.shutdown().await;
    assert!(reports.iter().all(|r| r.checkpoint_window.is_some()), "{reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_of_several_windows_does_not_stop_training_and_uploads_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start(dir.path(), "s3-", |o| o.miners = 2).await;
    let miners: Vec<Arc<MinerContext>> = net.miners().to_vec();
    wait_until("slices uploaded by every miner", || {
        miners.iter().all(|m| MinerStats::get(&m.telemetry.stats.slices_uploaded) >= 2)
    })
    .await;

    net.stop_s3().await;
    let windows_before: Vec<u64> = miners.iter().map(|m| windows(m)).collect();
    let failures_before: Vec<u64> =
        miners.iter().map(|m| MinerStats::get(&m.telemetry.stats.upload_failures)).collect();
    wait_until("three windows trained with S3 down", || {
        miners.iter().zip(&windows_before).all(|(m, &w)| windows(m) >= w + 3)
    })
    .await;
    assert!(miners.iter().zip(&failures_before).all(|(m, &f)| MinerStats::get(&m.telemetry.stats.upload_failures) > f));

    net.restart_s3().await.unwrap();
    let uploaded: Vec<u64> = miners.iter().map(|m| MinerStats::get(&m.telemetry.stats.slices_uploaded)).collect();
    wait_until("uploads to resume", || {
        miners.iter().zip(&uploaded).all(|(m, &u)| MinerStats::get(&m.telemetry.stats.slices_uploaded) >= u + 2)
    })
    .await;
    let s3_root = net.s3_root().to_owned();
    let hparams = net.options.hparams.clone();
    net.shutdown().await;
    assert_no_partial_objects(&s3_root, &hparams, &miners[0]);
}

/// Every object in the S3 server's directory is a complete, valid slice.
fn assert_no_partial_objects(root: &Path, hparams: &tessera_core::hparams::Hparams, ctx: &MinerContext) {
    let mut checked = 0;
    for bucket in std::fs::read_dir(root).unwrap() {
        let bucket = bucket.unwrap().path();
        if !bucket.is_dir() {
            continue;
        }
        for object in std::fs::read_dir(&bucket).unwrap() {
            let path = object.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let Ok(key) = name.parse::<ObjectKey>() else { continue };
            let bytes = std::fs::read(&path).unwrap();
            let expected = Expected {
                kind: key.kind,
                window: key.window,
                hotkey: Some(key.hotkey),
                registered: None,
                fingerprint: ctx.model.spec.layout.fingerprint(),
                compression: hparams.compression,
                value_count: ctx.slice_value_count(),
                version: ctx.exchange().protocol_version(),
                max_abs: tessera_core::slice::MAX_ABS_VALUE,
            };
            decode(&bytes, &expected).unwrap_or_else(|e| panic!("{} is not a complete slice: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked > 0, "no slices found under {}", root.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_block_stream_reconnects_and_windows_continue() {
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path(), "bs-", |o| o.miners = 2).await;
    let miners: Vec<Arc<MinerContext>> = net.miners().to_vec();
    wait_until("a window on every miner", || miners.iter().all(|m| windows(m) >= 1)).await;
    let before: Vec<u64> = miners.iter().map(|m| windows(m)).collect();
    net.chain.drop_connections();
    wait_until("the loss to be noticed and the stream reconnected", || {
        miners.iter().all(|m| {
            MinerStats::get(&m.telemetry.stats.block_stream_losses) >= 1
                && MinerStats::get(&m.telemetry.stats.reconnects) >= 1
        })
    })
    .await;
    wait_until("two more windows", || miners.iter().zip(&before).all(|(m, &w)| windows(m) >= w + 2)).await;
    net.shutdown().await;
}

/// The hostile flavours, one hotkey each. "early" publishes valid slices for a window 8
/// windows ahead: uploaded before that window's time bounds, they must not be used (the
/// copying defence, by the bucket's LastModified).
const FLAVOURS: [&str; 7] = ["truncated", "oversized", "nan", "fingerprint", "forged", "random", "early"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_slices_are_rejected_with_reasons_and_honest_peers_still_averaged() {
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path(), "h-", |o| o.miners = 2).await;
    let miners: Vec<Arc<MinerContext>> = net.miners().to_vec();
    let honest = miners[0].clone();

    // Six registered hostile hotkeys sharing one committed bucket, written with the
    // honest miner's S3 credentials (the server has one key pair).
    let netuid = net.options.netuid;
    let hostile: Vec<LoadedHotkey> =
        FLAVOURS.iter().map(|f| LoadedHotkey::dev(&format!("//hostile-{f}")).unwrap()).collect();
    let bucket_location = honest.own_location().to_string().replace("devnet-h-miner1", "devnet-hostile");
    for key in &hostile {
        net.chain.register(netuid, key.keypair(), &key.hotkey()).await.unwrap();
        net.chain.set_commitment(netuid, key.keypair(), &bucket_location).await.unwrap();
    }
    let location: tessera_core::storage::BucketLocation = bucket_location.parse().unwrap();
    let keys = tessera_core::storage::AccessKeys::new("devnet", "devnet-secret-key");
    let client = tessera_core::storage::BucketClient::new(
        &location,
        "us-east-1",
        keys.to_credentials().unwrap(),
        tessera_core::storage::TransferOptions::default(),
    )
    .unwrap();
    create_bucket(&net, "devnet-hostile").await;

    // Each window, every hostile hotkey publishes its flavour of state and delta slices.
    let writer_ctx = honest.clone();
    let writer = tokio::spawn(async move {
        let mut last = None;
        loop {
            let window = writer_ctx.clock_now().window;
            if last != Some(window) {
                last = Some(window);
                for (flavour, key) in FLAVOURS.iter().zip(&hostile) {
                    let ahead = if *flavour == "early" { 8 } else { 0 };
                    for (kind, w) in [(SliceKind::State, window + 1 + ahead), (SliceKind::Delta, window + ahead)] {
                        let bytes = hostile_slice(&writer_ctx, flavour, key, kind, w);
                        let name = ObjectKey::new(kind, w, key.hotkey()).to_string();
                        let _ = client.put(&name, bytes.into()).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let expected_reasons = [
        "body_size_mismatch",
        "too_large",
        "non_finite_value",
        "fingerprint_mismatch",
        "wrong_hotkey",
        "bad_magic",
        "outside_window_time",
    ];
    wait_until("every hostile flavour rejected with its reason", || {
        let rejected = honest.telemetry.stats.rejected();
        expected_reasons.iter().all(|r| rejected.contains_key(r))
    })
    .await;
    // Honest peers are still averaged: state and delta means with both honest miners.
    let seen = windows(&honest);
    wait_until("two more windows", || windows(&honest) >= seen + 2).await;
    let recent = honest.telemetry.stats.windows();
    let last = recent.last().unwrap();
    assert!(last.state_slices >= 2 && last.delta_slices >= 2, "honest slices were averaged: {last:?}");
    assert!(last.loss.is_finite(), "the model stayed finite: {last:?}");
    writer.abort();
    net.shutdown().await;
}

async fn create_bucket(net: &Devnet, name: &str) {
    // What `EmbeddedS3::create_bucket` does: a bucket is a directory of the server's root.
    let root = net.s3_root().join(name);
    std::fs::create_dir_all(root).unwrap();
}

fn hostile_slice(ctx: &MinerContext, flavour: &str, key: &LoadedHotkey, kind: SliceKind, window: u64) -> Vec<u8> {
    let count = ctx.slice_value_count();
    let values = vec![0.01f32; count];
    let meta = SliceMeta {
        kind,
        window,
        fingerprint: ctx.model.spec.layout.fingerprint(),
        compression: ctx.network.hparams.compression,
        dtype: tessera_core::slice::Dtype::F32,
        version: ctx.exchange().protocol_version(),
    };
    match flavour {
        "truncated" => {
            let mut bytes = encode(meta, &values, key).unwrap();
            bytes.truncate(bytes.len() - 100);
            bytes
        }
        "oversized" => {
            let mut bytes = encode(meta, &values, key).unwrap();
            bytes.extend(std::iter::repeat_n(0u8, 2 * bytes.len()));
            bytes
        }
        "nan" => {
            let mut bad = values.clone();
            bad[count / 2] = f32::NAN;
            encode_unchecked(meta, &bad, key).unwrap()
        }
        "fingerprint" => {
            let other = tessera_core::model::ParamLayout::llama(&tessera_core::model::ModelShape {
                hidden_size: 32,
                ..ctx.network.hparams.model_shape()
            })
            .unwrap()
            .fingerprint();
            encode(SliceMeta { fingerprint: other, ..meta }, &values, key).unwrap()
        }
        "forged" => {
            // Signed by someone else, named after this hotkey.
            let other = LoadedHotkey::dev("//someone-else").unwrap();
            encode(meta, &values, &other).unwrap()
        }
        "early" => encode(meta, &values, key).unwrap(),
        _ => {
            let len = tessera_core::slice::max_encoded_len(count) - 16;
            (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_miner_over_its_restart_limit_stops_alone_and_the_host_stops_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start(dir.path(), "m-", |o| {
        o.miners = 2;
        o.settings.max_restarts = 2;
        o.settings.restart_backoff = Duration::from_millis(20);
    })
    .await;
    let miners: Vec<Arc<MinerContext>> = net.miners().to_vec();
    wait_until("a window on every miner", || miners.iter().all(|m| windows(m) >= 1)).await;

    // miner1's clock keeps crashing: over the limit, the miner stops, miner2 goes on.
    let (first, second) = (miners[0].clone(), miners[1].clone());
    let status = net.host.as_ref().unwrap().status_receiver();
    let start_wait = Instant::now();
    while !status.borrow().failed.iter().any(|(m, _)| m == &first.id.name) {
        assert!(start_wait.elapsed() < DEADLINE, "miner1 never stopped: {:?}", *status.borrow());
        first.faults.arm(Fault::PanicIn(ActorKind::WindowClock));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status.borrow().running, vec![second.id.name.clone()]);
    let stopped_at = windows(&first);
    let before = windows(&second);
    wait_until("miner2 trains on", || windows(&second) >= before + 3).await;
    assert!(windows(&first) <= stopped_at + 1, "a stopped miner's actors stopped too");

    // The last miner over its limit: the host stops, naming both.
    let mut host = net.host.take().unwrap();
    let stopped = tokio::spawn(async move { host.stopped().await });
    let start_wait = Instant::now();
    while !stopped.is_finished() {
        assert!(start_wait.elapsed() < DEADLINE, "the host never stopped");
        second.faults.arm(Fault::PanicIn(ActorKind::WindowClock));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let final_status = stopped.await.unwrap();
    assert!(final_status.running.is_empty());
    let failed: Vec<&str> = final_status.failed.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(failed, ["m-miner1", "m-miner2"]);
    net.stop_s3().await;
}
