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
    options.validator = true;
    let net = Devnet::start(options).await.unwrap();
    net.chain.set_weights_rate_limit(3);
    let miners = net.miners().to_vec();
    let status = net.host.as_ref().unwrap().status_receiver();
    let (addr, _server) = observe::serve("127.0.0.1:0".parse().unwrap(), miners.clone(), status).await.unwrap();
    let base = format!("http://{addr}");

    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 503, "not ready before a window is trained: {body}");

    let start = Instant::now();
    while !miners.iter().all(|m| MinerStats::get(&m.telemetry.stats.windows_completed) >= 2) {
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
        "tessera_retained{miner=\"obs-miner1\",what=\"window_summaries\"}",
        "tessera_retained{miner=\"obs-miner2\",what=\"peer_records\"}",
        "tessera_retained{miner=\"obs-miner1\",what=\"upload_queue\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    // The validator's scores and weights, once it has set weights.
    let validator = miners.iter().find(|m| m.is_validator()).expect("a validator").clone();
    let start = Instant::now();
    while MinerStats::get(&validator.validator_stats().expect("a validator").weights_set) == 0 {
        assert!(start.elapsed() < Duration::from_secs(90), "the validator set no weights");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    for needle in [
        "tessera_validator_moving_score{miner=\"obs-validator1\",uid=\"0\"}",
        "tessera_validator_weight{",
        "tessera_validator_weight_on_chain{",
        "tessera_validator_scored{",
        "tessera_validator_eval_seconds_per_miner{",
        "tessera_validator_weight_submissions_total{miner=\"obs-validator1\",result=\"set\"}",
        "tessera_retained{miner=\"obs-validator1\",what=\"scored_windows\"}",
        "tessera_retained{miner=\"obs-validator1\",what=\"state_verdict_windows\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    let (code, _) = get(&format!("{base}/nope")).await;
    assert_eq!(code, 404);

    net.shutdown().await;
    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(code, 503, "no miner running after shutdown: {body}");
}

/// The Grafana dashboard shipped in deploy/grafana is valid JSON and names only metrics
/// that tessera exports (each a name the metrics code writes).
#[test]
fn the_grafana_dashboard_names_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/tessera-dashboard.json");
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let exported = include_str!("../src/observe.rs");
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("an expression");
            let mut rest = expr;
            while let Some(at) = rest.find("tessera_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 20, "the dashboard covers the metrics: {names:?}");
    for name in &names {
        assert!(exported.contains(&format!("\"{name}\"")), "{name} is not a metric tessera exports");
    }
    // The miner variable reads a gauge every miner has.
    assert!(text.contains("label_values(tessera_window, miner)"));
}
