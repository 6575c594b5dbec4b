//! The operator's endpoints on a running devnet: `/metrics` in Prometheus text with the
//! miners' loss, throughput and slice counters; `/healthz` while miners run; `/readyz` once
//! every miner has trained a recent window.

use std::time::{Duration, Instant};

use tessera_actors::MinerStats;
use tessera_actors::devnet::{Devnet, DevnetOptions, devnet_settings, tiny_hparams};
use tessera_actors::observe;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_health_and_readiness_follow_the_miners() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = DevnetOptions::new(dir.path()).unwrap();
    options.name_prefix = "obs-".into();
    options.miners = 2;
    options.block_time = Duration::from_millis(300);
    options.settings = devnet_settings(options.block_time);
    options.hparams = tiny_hparams(3).unwrap();
    let net = Devnet::start(options).await.unwrap();
    let miners = net.miners().to_vec();
    let status = net.host.as_ref().unwrap().status_receiver();
    let (addr, _server) = observe::serve("127.0.0.1:0".parse().unwrap(), miners.clone(), status).await.unwrap();
    let base = format!("http://{addr}");

    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 503, "not ready before a window is trained: {body}");

    let start = Instant::now();
    while !miners.iter().all(|m| MinerStats::get(&m.stats.windows_completed) >= 2) {
        assert!(start.elapsed() < Duration::from_secs(60), "no windows trained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    for needle in [
        "tessera_loss{miner=\"obs-miner1\"}",
        "tessera_tokens_per_second{miner=\"obs-miner2\"}",
        "tessera_sample_rate",
        "tessera_learning_rate",
        "tessera_utilization",
        "tessera_window_lag",
        "tessera_slices_uploaded_total{miner=\"obs-miner1\"}",
        "tessera_slices_downloaded_total",
        "tessera_windows_completed_total",
        "# TYPE tessera_loss gauge",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    let (code, _) = get(&format!("{base}/nope")).await;
    assert_eq!(code, 404);

    net.shutdown().await;
    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(code, 503, "no miner running after shutdown: {body}");
}
