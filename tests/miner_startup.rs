//! The real `tessera miner` binary against the real subtensor runtime (chopsticks) and an
//! S3 server over HTTP: an unregistered hotkey stops with the registration advice; a
//! registered one commits its bucket, trains window after window, and stops gracefully on
//! SIGTERM with a checkpoint; killed with SIGKILL at random points, it resumes from its
//! checkpoint and leaves no corrupt file in the checkpoint or cache directory.

#[path = "../core/tests/support/chopsticks.rs"]
mod chopsticks;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chopsticks::{BlockProducer, Chopsticks};
use tessera_core::chain::{Chain, SubtensorChain};
use tessera_core::hotkey::{Hotkey, HotkeySigner, dev_keypair};
use tessera_core::storage::{AccessKeys, EmbeddedS3};
use tessera_core::wallet::{WalletSpec, write_hotkey_file};

const SEED: [u8; 32] = [7; 32];

/// The miner's own bucket: an embedded S3 server it reaches over HTTP, as it would a provider.
struct Bucket {
    endpoint: String,
    keys: AccessKeys,
}

fn miner_command(dir: &Path, endpoint: &str, netuid: u16, bucket: &Bucket) -> tokio::process::Command {
    let exe = env!("CARGO_BIN_EXE_tessera");
    let netuid = netuid.to_string();
    let wallets = dir.join("wallets");
    let hparams = dir.join("tiny-hparams.json");
    if !hparams.exists() {
        let tiny = tessera_actors::devnet::tiny_hparams(2).unwrap();
        std::fs::write(&hparams, serde_json::to_vec(&tiny).unwrap()).unwrap();
    }
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["miner", "--bucket", "tessera-test-bucket", "--device", "cpu", "--netuid", &netuid])
        .args(["--subtensor.chain_endpoint", endpoint, "--wallet.name", "op", "--wallet.hotkey", "m1"])
        .args(["--actual_batch_size", "4"])
        .arg("--wallet.path")
        .arg(&wallets)
        .arg("--state_dir")
        .arg(dir.join("state"))
        .arg("--hparams")
        .arg(&hparams)
        .env("TESSERA_CONFIG_DIR", dir.join("no-config"))
        .env("TESSERA__S3__ENDPOINT", &bucket.endpoint)
        .env("TESSERA__S3__ACCESS_KEY_ID", &bucket.keys.access_key)
        .env("TESSERA__S3__SECRET_ACCESS_KEY", &bucket.keys.secret_key)
        .env("TESSERA__DATA__SOURCE", "synthetic")
        // Tests run in parallel: a port of the system's choosing.
        .env("TESSERA__METRICS__LISTEN", "127.0.0.1:0")
        .env("TESSERA__DATA__PAGES_PER_WINDOW", "1")
        .env("TESSERA__RUNTIME__CHECKPOINT_EVERY", "1")
        .env("TESSERA__RUNTIME__REFRESH_SECS", "2")
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .kill_on_drop(true);
    cmd
}

/// Runs the miner to its exit.
async fn run_miner(dir: &Path, endpoint: &str, netuid: u16, bucket: &Bucket) -> Output {
    miner_command(dir, endpoint, netuid, bucket).output().await.expect("run tessera")
}

/// What to do to the miner once its log shows the awaited line.
#[derive(Clone, Copy)]
enum Then {
    Term,
    Kill { after: Duration },
}

/// Runs the miner until its stderr has `lines` lines containing `needle`, then signals it
/// as `then` says; returns its exit status and whole stderr.
async fn run_miner_until(
    dir: &Path,
    endpoint: &str,
    netuid: u16,
    bucket: &Bucket,
    needle: &str,
    lines: usize,
    then: Then,
) -> (std::process::ExitStatus, String) {
    run_until(miner_command(dir, endpoint, netuid, bucket), needle, lines, then).await
}

/// Runs `cmd` until its stderr has `lines` lines containing `needle`, then signals it.
async fn run_until(
    mut cmd: tokio::process::Command,
    needle: &str,
    lines: usize,
    then: Then,
) -> (std::process::ExitStatus, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child =
        cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().expect("spawn tessera");
    let pid = child.id().expect("pid") as i32;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let line = tokio::time::timeout_at(deadline, stderr.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within the deadline:\n{log}"));
        let Some(line) = line.unwrap() else { break };
        log.push_str(&line);
        log.push('\n');
        if line.contains(needle) {
            seen += 1;
            if seen == lines {
                match then {
                    Then::Term => signal(pid, "TERM"),
                    Then::Kill { after } => {
                        // The random point of the kill, not a synchronisation.
                        tokio::time::sleep(after).await;
                        signal(pid, "KILL");
                    }
                }
            }
        }
    }
    let status = tokio::time::timeout_at(deadline, child.wait()).await.expect("exit in time").unwrap();
    (status, log)
}

fn signal(pid: i32, name: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{name} {pid}");
}

/// Every checkpoint on disk loads; every file in the slice cache is a complete slice.
fn assert_state_is_sound(dir: &Path) {
    use tessera_model::LlamaConfig;
    let tiny = tessera_actors::devnet::tiny_hparams(2).unwrap();
    let config = LlamaConfig::from(&tiny.model_shape());
    let ckpts = dir.join("state").join("checkpoints");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&ckpts).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".ckpt") {
            tessera_model::checkpoint::read_checkpoint_meta(&path, &config)
                .unwrap_or_else(|e| panic!("corrupt checkpoint {}: {e}", path.display()));
            loaded += 1;
        }
    }
    assert!(loaded >= 1, "no checkpoint in {}", ckpts.display());
    let layout = tessera_core::model::ParamLayout::llama(&tiny.model_shape()).unwrap();
    let value_count = layout
        .params()
        .iter()
        .map(|p| tessera_core::slice::slice_len(p.numel() as u64, tiny.compression) as usize)
        .sum();
    let mut cached = 0;
    let mut stack = vec![dir.join("state").join("slice-cache")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let Some((key, _)) = name.rsplit_once('.') else { continue };
            let Ok(key) = key.parse::<tessera_core::slice::ObjectKey>() else { continue };
            let bytes = std::fs::read(&path).unwrap();
            let expected = tessera_core::slice::Expected {
                kind: key.kind,
                window: key.window,
                hotkey: Some(key.hotkey),
                registered: None,
                fingerprint: layout.fingerprint(),
                compression: tiny.compression,
                value_count,
                version: 1,
                max_abs: tessera_core::slice::MAX_ABS_VALUE,
            };
            tessera_core::slice::decode(&bytes, &expected)
                .unwrap_or_else(|e| panic!("corrupt cached slice {}: {e}", path.display()));
            cached += 1;
        }
    }
    assert!(cached >= 1, "no cached slice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miner_binary_registers_trains_stops_gracefully_and_survives_sigkill() {
    let node = Chopsticks::start().await;
    let chain = SubtensorChain::connect(&node.endpoint()).await.expect("connect");
    let _producer = BlockProducer::start(node.endpoint(), Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let keyfile = write_hotkey_file(&dir.path().join("wallets"), "op", "m1", &SEED).expect("keyfile");
    let hotkey: Hotkey = WalletSpec { name: "op".into(), hotkey: "m1".into(), path: dir.path().join("wallets") }
        .load_hotkey()
        .expect("load keyfile")
        .hotkey();
    assert!(keyfile.exists());

    let keys = AccessKeys::random();
    let s3 = EmbeddedS3::start(dir.path().join("s3"), keys.clone()).await.expect("embedded S3");
    s3.create_bucket("tessera-test-bucket").await.expect("bucket");
    let bucket = Bucket { endpoint: s3.endpoint().to_string(), keys };
    let committed = format!("{}tessera-test-bucket", s3.endpoint());

    let alice = dev_keypair("Alice").unwrap();
    let netuid = chain.register_network(&alice, &dev_keypair("Bob").unwrap().hotkey()).await.expect("subnet");

    // Not registered yet: a clear stop with the seed's advice.
    let out = run_miner(dir.path(), &node.endpoint(), netuid, &bucket).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not registered on subnet"), "{stderr}");
    assert!(
        stderr.contains(&format!("btcli subnet register --netuid {netuid} --wallet.name op --wallet.hotkey m1")),
        "{stderr}"
    );

    // Registered (and funded for the commitment fee): the miner commits its bucket.
    let ss58 = hotkey.to_string();
    chain
        .raw_request(
            "dev_setStorage",
            serde_json::json!([{ "System": { "Account": [[[ss58], { "providers": 1, "data": { "free": 1_000_000_000_000_000u64 } }]] } }]),
        )
        .await
        .expect("fund the hotkey");
    let uid = chain.register(netuid, &alice, &hotkey).await.expect("register");
    let (status, stderr) =
        run_miner_until(dir.path(), &node.endpoint(), netuid, &bucket, "window done", 2, Then::Term).await;
    assert!(stderr.contains("hotkey is registered") && stderr.contains(&format!("uid={uid}")), "{stderr}");
    assert!(stderr.contains("own bucket is reachable"), "{stderr}");
    assert!(stderr.contains("committed the bucket location"), "{stderr}");
    assert_eq!(chain.commitment(netuid, &hotkey).await.unwrap(), Some(committed.clone()));
    assert!(status.success(), "SIGTERM ends the miner with exit 0: {status}\n{stderr}");
    assert!(stderr.contains("checkpoint written at shutdown") && stderr.contains("stopped"), "{stderr}");

    // A second start finds the commitment current and resumes from the checkpoint.
    let (status, stderr) =
        run_miner_until(dir.path(), &node.endpoint(), netuid, &bucket, "window done", 1, Then::Term).await;
    assert!(stderr.contains("bucket commitment is current"), "{stderr}");
    assert!(stderr.contains("resumed from checkpoint"), "{stderr}");
    assert!(status.success(), "{status}\n{stderr}");

    // Killed at random points: each restart resumes from a sound checkpoint.
    let mut rng = 0x2545_f491_u64;
    for round in 0..3 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_millis(rng % 1500);
        let (status, stderr) =
            run_miner_until(dir.path(), &node.endpoint(), netuid, &bucket, "window done", 1, Then::Kill { after })
                .await;
        assert!(!status.success(), "round {round}: SIGKILL");
        assert!(stderr.contains("resumed from checkpoint"), "round {round}: {stderr}");
        assert_state_is_sound(dir.path());
    }
    let (status, stderr) =
        run_miner_until(dir.path(), &node.endpoint(), netuid, &bucket, "window done", 1, Then::Term).await;
    assert!(stderr.contains("resumed from checkpoint") && status.success(), "{status}\n{stderr}");
    assert_state_is_sound(dir.path());

    // Wrong credentials stop the start-up with the bucket named, before anything is uploaded.
    let wrong = Bucket {
        endpoint: bucket.endpoint.clone(),
        keys: AccessKeys::new(bucket.keys.access_key.clone(), "wrong-secret"),
    };
    let out = run_miner(dir.path(), &node.endpoint(), netuid, &wrong).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("checking access to the own bucket") && stderr.contains("tessera-test-bucket"), "{stderr}");
    assert!(!stderr.contains("wrong-secret"), "a secret leaked into the output: {stderr}");
    s3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_runs_two_miners_from_miners_entries_that_exchange_slices() {
    let node = Chopsticks::start().await;
    let chain = SubtensorChain::connect(&node.endpoint()).await.expect("connect");
    let _producer = BlockProducer::start(node.endpoint(), Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let wallets = dir.path().join("wallets");
    let alice = dev_keypair("Alice").unwrap();
    let netuid = chain.register_network(&alice, &dev_keypair("Bob").unwrap().hotkey()).await.expect("subnet");
    for (name, seed) in [("m1", [11u8; 32]), ("m2", [12u8; 32])] {
        write_hotkey_file(&wallets, "op", name, &seed).expect("keyfile");
        let hotkey = WalletSpec { name: "op".into(), hotkey: name.into(), path: wallets.clone() }
            .load_hotkey()
            .expect("load keyfile")
            .hotkey();
        let ss58 = hotkey.to_string();
        chain
            .raw_request(
                "dev_setStorage",
                serde_json::json!([{ "System": { "Account": [[[ss58], { "providers": 1, "data": { "free": 1_000_000_000_000_000u64 } }]] } }]),
            )
            .await
            .expect("fund the hotkey");
        chain.register(netuid, &alice, &hotkey).await.expect("register");
    }
    let keys = AccessKeys::random();
    let s3 = EmbeddedS3::start(dir.path().join("s3"), keys.clone()).await.expect("embedded S3");
    for bucket in ["tessera-one", "tessera-two", "tessera-test-bucket"] {
        s3.create_bucket(bucket).await.expect("bucket");
    }
    let bucket = Bucket { endpoint: s3.endpoint().to_string(), keys };
    let config = dir.path().join("miners.toml");
    std::fs::write(
        &config,
        "[[miners]]\nname = \"one\"\nwallet = { hotkey = \"m1\" }\nbucket = \"tessera-one\"\n\
         [[miners]]\nname = \"two\"\nwallet = { hotkey = \"m2\" }\nbucket = \"tessera-two\"\n",
    )
    .unwrap();
    let mut cmd = miner_command(dir.path(), &node.endpoint(), netuid, &bucket);
    cmd.arg("--config").arg(&config).arg("--remote");
    // The peers' buckets are on 127.0.0.1, which a miner refuses unless told otherwise.
    cmd.env("TESSERA__RUNTIME__ALLOW_PRIVATE_ENDPOINTS", "true");
    // Enough windows for each to have averaged the other's state slices.
    let (status, stderr) = run_until(cmd, "state_slices=2", 2, Then::Term).await;
    assert!(status.success(), "{status}\n{stderr}");
    for name in ["one", "two"] {
        assert!(stderr.contains(&format!("miner={name}")), "{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("committed the bucket location") && l.contains(&format!("tessera-{name}"))),
            "{stderr}"
        );
    }
    assert_eq!(stderr.matches("checkpoint written at shutdown").count(), 2, "{stderr}");
    s3.stop().await;
}
