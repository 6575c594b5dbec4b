//! The operator's window into a running host: Prometheus `/metrics` (rendered from the
//! miners' counters at each scrape by `metrics-exporter-prometheus`, so there is one
//! source of truth), `/healthz` (the supervisor is alive: some miner is running) and
//! `/readyz` (every running miner has trained a recent window).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::context::MinerContext;
use crate::stats::MinerStats;
use crate::supervisor::HostStatus;
use crate::task::AbortOnDrop;

/// A miner is ready once it trained a window no more than this many windows ago.
pub const READY_MAX_LAG: u64 = 2;

pub use crate::bounds::STALE_SERIES_AFTER;

/// The recorder `/metrics` renders, dropping gauges idle for `stale_after`.
fn recorder(stale_after: std::time::Duration) -> PrometheusRecorder {
    PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(stale_after)).build_recorder()
}

struct Observer {
    miners: Vec<Arc<MinerContext>>,
    status: watch::Receiver<HostStatus>,
    recorder: PrometheusRecorder,
}

/// Serves the endpoints on `listen` until the returned guard is dropped.
pub async fn serve(
    listen: SocketAddr,
    miners: Vec<Arc<MinerContext>>,
    status: watch::Receiver<HostStatus>,
) -> std::io::Result<(SocketAddr, AbortOnDrop)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let observer = Arc::new(Observer { miners, status, recorder: recorder(STALE_SERIES_AFTER) });
    info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let observer = observer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let observer = observer.clone();
                    async move { Ok::<_, Infallible>(observer.route(&req)) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                    debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok((addr, AbortOnDrop(task)))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

impl Observer {
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.render());
                response
                    .headers_mut()
                    .insert("content-type", hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
                response
            }
            "/healthz" => {
                let status = self.status.borrow().clone();
                if status.running.is_empty() {
                    let failed: Vec<String> = status.failed.iter().map(|(m, r)| format!("{m}: {r}")).collect();
                    text(StatusCode::SERVICE_UNAVAILABLE, format!("no miner running\n{}\n", failed.join("\n")))
                } else {
                    text(StatusCode::OK, format!("ok: {}\n", status.running.join(", ")))
                }
            }
            "/readyz" => {
                let waiting = self.not_ready();
                if waiting.is_empty() && !self.status.borrow().running.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", waiting.join("; ")))
                }
            }
            _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n".into()),
        }
    }

    /// Running miners that have not trained a recent window, with why.
    fn not_ready(&self) -> Vec<String> {
        let running = self.status.borrow().running.clone();
        self.miners
            .iter()
            .filter(|m| running.contains(&m.id.name))
            .filter_map(|m| {
                let clock = m.clock_now();
                let last = m.telemetry.stats.last_window().map(|w| w.window);
                match last {
                    _ if !clock.started => Some(format!("{}: waiting for the first block", m.id.name)),
                    None => Some(format!("{}: syncing, no window trained yet", m.id.name)),
                    Some(w) if clock.window.saturating_sub(w) > READY_MAX_LAG => {
                        Some(format!("{}: last trained window {w}, the clock is at {}", m.id.name, clock.window))
                    }
                    Some(_) => None,
                }
            })
            .collect()
    }

    fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            describe();
            for m in &self.miners {
                record(m);
            }
        });
        self.recorder.handle().render()
    }
}

fn describe() {
    describe_gauge!("tessera_loss", "Mean training loss of the miner's last window.");
    describe_gauge!("tessera_tokens_per_second", "Training throughput of the last window.");
    describe_gauge!("tessera_sample_rate", "Share of the window's micro-batches trained (adapts as the seed's).");
    describe_gauge!("tessera_learning_rate", "Learning rate of the last optimizer step.");
    describe_gauge!("tessera_utilization", "Share of the last window's wall time spent training.");
    describe_gauge!("tessera_window", "The chain clock's current window.");
    describe_gauge!("tessera_window_lag", "Windows between the clock and the last window trained.");
    describe_gauge!("tessera_optimizer_step", "Optimizer steps taken.");
    describe_gauge!(
        "tessera_eval_loss",
        "Mean loss on the held-out pages at the last evaluation (runtime.eval_every)."
    );
    describe_gauge!("tessera_eval_window", "Window of the last held-out evaluation.");
    describe_gauge!("tessera_window_idle", "1 when the last window trained nothing (the log says why), else 0.");
    describe_counter!("tessera_slices_rejected_total", "Peer slices not used, by reason.");
    describe_counter!("tessera_actor_restarts_total", "Restarts of the miner's actors, by actor.");
    describe_gauge!(
        "tessera_miner_info",
        "1, with the node's uid, hotkey, bucket and role (miner or validator) as labels."
    );
    describe_gauge!(
        "tessera_retained",
        "Entries (bytes for slice_cache_bytes) a bounded collection holds now: what a long run keeps (actors/src/bounds.rs)."
    );
    describe_gauge!("tessera_peers", "Registered peers with a bucket commitment, as last read from the chain.");
    describe_gauge!("tessera_window_slices_averaged", "Slices averaged into the model in the last window, by kind.");
    describe_gauge!("tessera_validator_score", "Validator: a UID's score in the last evaluated window.");
    describe_gauge!("tessera_validator_moving_score", "Validator: a UID's moving score.");
    describe_gauge!("tessera_validator_indicator", "Validator: a UID's moving own-data-beats-random indicator.");
    describe_gauge!("tessera_validator_weight", "Validator: a UID's normalised weight from the moving scores.");
    describe_gauge!("tessera_validator_weight_on_chain", "Validator: the u16 weight last confirmed on chain.");
    describe_gauge!("tessera_validator_scored", "Validator: miners scored in the last evaluated window.");
    describe_gauge!("tessera_validator_skipped", "Validator: miners skipped (no time left) in the last window.");
    describe_gauge!("tessera_validator_evaluated_window", "Validator: the last window scored.");
    describe_gauge!("tessera_validator_eval_seconds_per_miner", "Validator: mean time to evaluate one miner.");
    describe_counter!("tessera_validator_weight_submissions_total", "Validator: weight submissions, by result.");
}

fn record_validator(m: &MinerContext, miner: &str) {
    let Some(v) = m.validator.as_ref().map(|v| &v.stats) else { return };
    if let Some(last) = v.last_window() {
        gauge!("tessera_validator_evaluated_window", "miner" => miner.to_owned()).set(last.window as f64);
        gauge!("tessera_validator_scored", "miner" => miner.to_owned()).set(f64::from(last.scored));
        gauge!("tessera_validator_skipped", "miner" => miner.to_owned()).set(f64::from(last.skipped));
        gauge!("tessera_validator_eval_seconds_per_miner", "miner" => miner.to_owned()).set(last.eval_secs_per_miner);
        for u in &last.uids {
            let uid = u.uid.to_string();
            if let Some(score) = u.score {
                gauge!("tessera_validator_score", "miner" => miner.to_owned(), "uid" => uid.clone()).set(score);
            }
            gauge!("tessera_validator_moving_score", "miner" => miner.to_owned(), "uid" => uid.clone()).set(u.moving);
            gauge!("tessera_validator_indicator", "miner" => miner.to_owned(), "uid" => uid.clone()).set(u.indicator);
            gauge!("tessera_validator_weight", "miner" => miner.to_owned(), "uid" => uid).set(u.weight);
        }
    }
    if let Some((_, weights)) = v.last_weights() {
        for (uid, w) in weights {
            gauge!("tessera_validator_weight_on_chain", "miner" => miner.to_owned(), "uid" => uid.to_string())
                .set(f64::from(w));
        }
    }
    for (result, value) in [
        ("set", &v.weights_set),
        ("committed", &v.weights_committed),
        ("revealed", &v.weights_revealed),
        ("refused", &v.weights_refused),
        ("rate_limited", &v.weights_rate_limited),
    ] {
        counter!("tessera_validator_weight_submissions_total", "miner" => miner.to_owned(), "result" => result)
            .absolute(MinerStats::get(value));
    }
    counter!("tessera_validator_miners_scored_total", "miner" => miner.to_owned())
        .absolute(MinerStats::get(&v.miners_scored));
    counter!("tessera_validator_miners_skipped_total", "miner" => miner.to_owned())
        .absolute(MinerStats::get(&v.miners_skipped));
}

fn record(m: &MinerContext) {
    let miner = m.id.name.clone();
    let s = &m.telemetry.stats;
    let clock = m.clock_now();
    gauge!("tessera_window", "miner" => miner.clone()).set(clock.window as f64);
    gauge!(
        "tessera_miner_info",
        "miner" => miner.clone(),
        "uid" => m.id.uid.to_string(),
        "hotkey" => m.own_hotkey().to_string(),
        "bucket" => m.own_location().to_string(),
        "role" => if m.is_validator() { "validator" } else { "miner" },
    )
    .set(1.0);
    let view = m.peer_view();
    if view.refreshed_ms > 0 {
        gauge!("tessera_peers", "miner" => miner.clone()).set(view.peers.len() as f64);
    }
    if m.is_validator() {
        record_validator(m, &miner);
    }
    for (what, entries) in crate::bounds::retained(m) {
        gauge!("tessera_retained", "miner" => miner.clone(), "what" => what).set(entries as f64);
    }
    if let Some(last) = s.last_window() {
        if last.loss.is_finite() {
            gauge!("tessera_loss", "miner" => miner.clone()).set(f64::from(last.loss));
        }
        gauge!("tessera_window_idle", "miner" => miner.clone()).set(if last.idle_reason.is_some() { 1.0 } else { 0.0 });
        gauge!("tessera_tokens_per_second", "miner" => miner.clone()).set(last.tokens_per_sec);
        gauge!("tessera_sample_rate", "miner" => miner.clone()).set(last.sample_rate);
        gauge!("tessera_learning_rate", "miner" => miner.clone()).set(last.lr);
        gauge!("tessera_utilization", "miner" => miner.clone()).set(last.utilization);
        gauge!("tessera_optimizer_step", "miner" => miner.clone()).set(last.step as f64);
        gauge!("tessera_window_lag", "miner" => miner.clone()).set(clock.window.saturating_sub(last.window) as f64);
        for (kind, n) in [("state", last.state_slices), ("delta", last.delta_slices)] {
            gauge!("tessera_window_slices_averaged", "miner" => miner.clone(), "kind" => kind).set(f64::from(n));
        }
    }
    if let Some((window, loss)) = s.last_eval() {
        gauge!("tessera_eval_loss", "miner" => miner.clone()).set(f64::from(loss));
        gauge!("tessera_eval_window", "miner" => miner.clone()).set(window as f64);
    }
    let counters = [
        ("tessera_windows_completed_total", &s.windows_completed),
        ("tessera_slices_uploaded_total", &s.slices_uploaded),
        ("tessera_slices_downloaded_total", &s.slices_downloaded),
        ("tessera_slice_bytes_downloaded_total", &s.bytes_downloaded),
        ("tessera_evaluations_total", &s.evaluations),
        ("tessera_slice_cache_hits_total", &s.cache_hits),
        ("tessera_slices_averaged_total", &s.slices_averaged),
        ("tessera_slices_clipped_total", &s.slices_clipped),
        ("tessera_upload_failures_total", &s.upload_failures),
        ("tessera_uploads_abandoned_total", &s.uploads_abandoned),
        ("tessera_download_failures_total", &s.download_failures),
        ("tessera_peers_skipped_total", &s.peers_skipped),
        ("tessera_checkpoints_written_total", &s.checkpoints_written),
        ("tessera_block_stream_losses_total", &s.block_stream_losses),
        ("tessera_chain_reconnects_total", &s.reconnects),
        ("tessera_engine_rebuilds_total", &s.engine_rebuilds),
        ("tessera_model_resyncs_total", &s.model_resyncs),
        ("tessera_telemetry_dropped_total", &s.telemetry_dropped),
    ];
    for (name, value) in counters {
        counter!(name, "miner" => miner.clone()).absolute(MinerStats::get(value));
    }
    for (reason, n) in s.rejected() {
        counter!("tessera_slices_rejected_total", "miner" => miner.clone(), "reason" => reason).absolute(n);
    }
    for (actor, n) in s.restarts() {
        counter!("tessera_actor_restarts_total", "miner" => miner.clone(), "actor" => actor.as_str()).absolute(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A departed UID's gauge leaves the rendering once idle; a gauge set at every scrape
    /// stays.
    #[test]
    fn gauges_not_set_again_leave_the_metrics() {
        let recorder = recorder(std::time::Duration::from_millis(50));
        let scrape = |departed: bool| {
            metrics::with_local_recorder(&recorder, || {
                gauge!("tessera_validator_score", "uid" => "1").set(1.0);
                if departed {
                    gauge!("tessera_validator_score", "uid" => "2").set(2.0);
                }
            });
            recorder.handle().render()
        };
        assert!(scrape(true).contains("uid=\"2\""));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = scrape(false);
            assert!(text.contains("uid=\"1\""), "{text}");
            if !text.contains("uid=\"2\"") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the idle series stayed: {text}");
            std::thread::yield_now();
        }
    }
}
