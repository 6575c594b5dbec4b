//! The miner's start-up against the real subtensor runtime (chopsticks): an unregistered
//! hotkey stops with the registration advice; a registered one commits its bucket.

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

async fn run_miner(dir: &Path, endpoint: &str, netuid: u16, bucket: &Bucket) -> Output {
    let exe = env!("CARGO_BIN_EXE_tessera");
    let netuid = netuid.to_string();
    let wallets = dir.join("wallets");
    tokio::process::Command::new(exe)
        .args(["miner", "--bucket", "tessera-test-bucket", "--device", "cpu", "--netuid", &netuid])
        .args(["--subtensor.chain_endpoint", endpoint, "--wallet.name", "op", "--wallet.hotkey", "m1"])
        .arg("--wallet.path")
        .arg(&wallets)
        .arg("--state_dir")
        .arg(dir.join("state"))
        .env("TESSERA_CONFIG_DIR", dir.join("no-config"))
        .env("TESSERA__S3__ENDPOINT", &bucket.endpoint)
        .env("TESSERA__S3__ACCESS_KEY_ID", &bucket.keys.access_key)
        .env("TESSERA__S3__SECRET_ACCESS_KEY", &bucket.keys.secret_key)
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .output()
        .await
        .expect("run tessera")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miner_start_up_checks_registration_and_commits_its_bucket() {
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
    let out = run_miner(dir.path(), &node.endpoint(), netuid, &bucket).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("registration (UID {uid})")), "{stderr}");
    assert!(stderr.contains("own bucket is reachable"), "{stderr}");
    assert!(stderr.contains("committed the bucket location"), "{stderr}");
    assert_eq!(chain.commitment(netuid, &hotkey).await.unwrap(), Some(committed.clone()));

    // A second start finds the commitment current and does not write it again.
    let out = run_miner(dir.path(), &node.endpoint(), netuid, &bucket).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bucket commitment is current"), "{stderr}");

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
