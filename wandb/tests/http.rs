//! End-to-end tests against a tiny in-process W&B look-alike served by hyper over real HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tessera_wandb::{WandbLogger, WandbSettings};
use tokio::net::TcpListener;
use tracing_subscriber::layer::SubscriberExt as _;
use url::Url;

const KEY: &str = "0123456789abcdef0123456789abcdef-secret";

/// What the fake server saw and how it should misbehave.
#[derive(Default)]
struct Recorder {
    graphql: Mutex<Vec<Value>>,
    /// (path, body) of accepted file_stream posts.
    streams: Mutex<Vec<(String, Value)>>,
    graphql_failures_left: AtomicUsize,
    stream_failures_left: AtomicUsize,
    failed_requests: AtomicUsize,
    unauthorized: AtomicUsize,
}

impl Recorder {
    fn graphql(&self) -> Vec<Value> {
        self.graphql.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn streams(&self) -> Vec<(String, Value)> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

/// Decrements `counter` if positive; true when this request should fail.
fn take_failure(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

async fn handle(rec: Arc<Recorder>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let expected_auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("api:{KEY}")));
    let authorized = request.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&expected_auth);
    let path = request.uri().path().to_owned();
    let is_post = request.method() == hyper::Method::POST;
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(json_response(StatusCode::BAD_REQUEST, &json!({"error": "body"}))),
    };
    if !authorized {
        rec.unauthorized.fetch_add(1, Ordering::SeqCst);
        return Ok(json_response(StatusCode::UNAUTHORIZED, &json!({"errors": [{"message": "unauthorized"}]})));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return Ok(json_response(StatusCode::BAD_REQUEST, &json!({"error": "not json"})));
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (is_post, segments.as_slice()) {
        (true, ["graphql"]) => {
            if take_failure(&rec.graphql_failures_left) {
                rec.failed_requests.fetch_add(1, Ordering::SeqCst);
                return Ok(json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": "boom"})));
            }
            rec.graphql.lock().unwrap_or_else(PoisonError::into_inner).push(body.clone());
            let query = body["query"].as_str().unwrap_or_default();
            let vars = &body["variables"];
            let data = if query.contains("upsertBucket") {
                json!({"upsertBucket": {"bucket": {
                    "id": "UnVuOnYxOmFiYzpwOnI=",
                    "name": vars["name"],
                    "displayName": vars["displayName"],
                    "description": null,
                    "sweepName": null,
                    "project": {"id": "UHJvamVjdDox", "name": vars["project"],
                                "entity": {"id": "RW50aXR5OjE=", "name": vars["entity"]}},
                    "historyLineCount": 0,
                }, "inserted": true}})
            } else if query.contains("viewer") {
                json!({"viewer": {"id": "VXNlcjox", "entity": "test-entity", "username": "tester"}})
            } else {
                return Ok(json_response(StatusCode::OK, &json!({"errors": [{"message": "unknown query"}]})));
            };
            Ok(json_response(StatusCode::OK, &json!({ "data": data })))
        }
        (true, ["files", _entity, _project, _run, "file_stream"]) => {
            if take_failure(&rec.stream_failures_left) {
                rec.failed_requests.fetch_add(1, Ordering::SeqCst);
                return Ok(json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": "boom"})));
            }
            rec.streams.lock().unwrap_or_else(PoisonError::into_inner).push((path.clone(), body));
            Ok(json_response(StatusCode::OK, &json!({"exitcode": null, "limits": {}})))
        }
        _ => Ok(json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}))),
    }
}

/// Serves the fake API on 127.0.0.1:0 until the test's runtime ends.
async fn serve(rec: Arc<Recorder>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(rec.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn settings(base_url: Url, api_key: Option<&str>) -> WandbSettings {
    WandbSettings {
        base_url,
        api_key: api_key.map(str::to_owned),
        entity: None,
        project: "tessera-test".into(),
        run_name: "M7".into(),
        config: json!({"uid": 7, "lr": 0.001}),
        buffer_rows: 1024,
        flush_interval: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
    }
}

fn local_url(addr: SocketAddr) -> Url {
    Url::parse(&format!("http://{addr}")).expect("server URL")
}

fn row(loss: f64) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("loss".into(), json!(loss));
    row
}

/// Polls `condition` until it holds or `timeout` passes (yielding to the runtime in between).
async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// All history lines the server received, checking offsets are contiguous from 0.
fn history_lines(streams: &[(String, Value)]) -> Vec<Value> {
    let mut lines = Vec::new();
    for (_, body) in streams {
        let Some(history) = body.pointer("/files/wandb-history.jsonl") else { continue };
        let offset = history["offset"].as_u64().expect("offset");
        let content = history["content"].as_array().expect("content");
        // A retried request may resend from an earlier offset; it must never skip ahead.
        assert!(offset as usize <= lines.len(), "offset {offset} skips past {} lines", lines.len());
        lines.truncate(offset as usize);
        lines.extend(content.iter().map(|l| serde_json::from_str::<Value>(l.as_str().expect("line")).expect("json")));
    }
    lines
}

/// Captures tracing events (level and formatted fields) on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Captured {
    fn events(&self) -> Vec<(tracing::Level, String)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("tessera_wandb") {
            return;
        }
        let mut text = FieldText(String::new());
        event.record(&mut text);
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((*event.metadata().level(), text.0));
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    (captured, guard)
}

#[tokio::test]
async fn rows_arrive_in_order_with_steps_offsets_and_config() {
    let (logs, _guard) = capture_logs();
    let rec = Arc::new(Recorder::default());
    let addr = serve(rec.clone()).await;
    let settings = settings(local_url(addr), Some(KEY));
    assert!(!format!("{settings:?}").contains(KEY), "Debug must redact the key");
    let logger = WandbLogger::start(settings);
    assert!(!format!("{logger:?}").contains(KEY));

    for step in 0..20 {
        logger.log(step, row(step as f64 / 10.0));
    }
    assert!(wait_for(Duration::from_secs(10), || logger.sent() == 20).await, "first burst not delivered");
    for step in 20..50 {
        logger.log(step, row(step as f64 / 10.0));
    }
    let url = logger.run_url().expect("run URL once created");
    let probe = logger.clone();
    logger.finish(Duration::from_secs(10)).await;
    assert_eq!((probe.sent(), probe.dropped()), (50, 0));

    // GraphQL: the viewer query supplies the entity, then upsertBucket creates the run.
    let graphql = rec.graphql();
    assert!(graphql[0]["query"].as_str().expect("query").contains("viewer"));
    let upsert =
        graphql.iter().find(|g| g["query"].as_str().is_some_and(|q| q.contains("upsertBucket"))).expect("upsert");
    let vars = &upsert["variables"];
    assert_eq!(vars["displayName"], "M7");
    assert_eq!(vars["project"], "tessera-test");
    assert_eq!(vars["entity"], "test-entity");
    let run_id = vars["name"].as_str().expect("run id").to_owned();
    assert_eq!(run_id.len(), 8);
    let config: Value = serde_json::from_str(vars["config"].as_str().expect("config string")).expect("config json");
    assert_eq!(config["uid"], json!({"desc": null, "value": 7}));
    assert_eq!(config["lr"], json!({"desc": null, "value": 0.001}));
    assert_eq!(url, format!("http://{addr}/test-entity/tessera-test/runs/{run_id}"));

    // file_stream: right path, contiguous increasing offsets, rows in order, then completion.
    let streams = rec.streams();
    assert!(streams.iter().all(|(path, _)| *path == format!("/files/test-entity/tessera-test/{run_id}/file_stream")));
    let offsets: Vec<u64> =
        streams.iter().filter_map(|(_, b)| b.pointer("/files/wandb-history.jsonl/offset")?.as_u64()).collect();
    assert!(offsets.len() >= 2 && offsets[0] == 0 && offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(offsets.contains(&20), "second burst starts at offset 20: {offsets:?}");
    let lines = history_lines(&streams);
    assert_eq!(lines.len(), 50);
    for (step, line) in lines.iter().enumerate() {
        assert_eq!(line["_step"], json!(step));
        assert_eq!(line["loss"], json!(step as f64 / 10.0));
        assert!(line["_timestamp"].is_f64() && line["_runtime"].is_f64());
    }
    let (_, last) = streams.last().expect("final request");
    assert_eq!((&last["complete"], &last["exitcode"]), (&json!(true), &json!(0)));
    let summary = streams.iter().rev().find_map(|(_, b)| b.pointer("/files/wandb-summary.json/content/0")?.as_str());
    let summary: Value = serde_json::from_str(summary.expect("summary sent")).expect("summary json");
    assert_eq!(summary["_step"], json!(49));
    assert_eq!(rec.unauthorized.load(Ordering::SeqCst), 0, "every request carries basic auth api:<key>");

    let events = logs.events();
    assert!(events.iter().any(|(_, text)| text.contains("W&B run created")), "{events:?}");
    assert!(events.iter().all(|(_, text)| !text.contains(KEY)), "the key must never be logged");
}

#[tokio::test]
async fn configured_entity_skips_viewer_query() {
    let rec = Arc::new(Recorder::default());
    let addr = serve(rec.clone()).await;
    let logger =
        WandbLogger::start(WandbSettings { entity: Some("team".into()), ..settings(local_url(addr), Some(KEY)) });
    logger.log(3, row(1.0));
    let probe = logger.clone();
    logger.finish(Duration::from_secs(10)).await;
    assert_eq!(probe.sent(), 1);
    let graphql = rec.graphql();
    assert_eq!(graphql.len(), 1, "only upsertBucket");
    assert_eq!(graphql[0]["variables"]["entity"], "team");
    assert!(rec.streams().iter().all(|(path, _)| path.starts_with("/files/team/tessera-test/")));
}

#[tokio::test]
async fn no_api_key_drops_rows_with_one_warning() {
    let (logs, _guard) = capture_logs();
    let logger = WandbLogger::start(settings(Url::parse("http://127.0.0.1:9").expect("url"), None));
    let started = Instant::now();
    for step in 0..1000 {
        logger.log(step, row(1.0));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "log must not block");
    assert_eq!((logger.sent(), logger.dropped()), (0, 1000));
    assert_eq!(logger.run_url(), None);
    let started = Instant::now();
    let probe = logger.clone();
    logger.finish(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(1), "nothing to wait for");
    assert_eq!(probe.dropped(), 1000);
    let warnings: Vec<_> = logs.events().into_iter().filter(|(level, _)| *level == tracing::Level::WARN).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].1.contains("no API key"));
}

#[tokio::test]
async fn unreachable_server_never_blocks_and_finish_honours_timeout() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let logger = WandbLogger::start(settings(local_url(closed_port), Some(KEY)));
    let started = Instant::now();
    for step in 0..10_000 {
        logger.log(step, row(step as f64));
    }
    assert!(started.elapsed() < Duration::from_secs(3), "10k log calls took {:?}", started.elapsed());
    assert_eq!(logger.sent(), 0);
    assert!(logger.dropped() >= 10_000 - 1024, "queue is bounded: dropped {}", logger.dropped());

    let probe = logger.clone();
    let started = Instant::now();
    logger.finish(Duration::from_millis(500)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(2), "finish took {took:?}");
    assert_eq!((probe.sent(), probe.dropped()), (0, 10_000), "every row is accounted for");
    assert_eq!(probe.run_url(), None);
    probe.log(10_000, row(0.0));
    assert_eq!(probe.dropped(), 10_001, "rows after finish are dropped");
}

#[tokio::test]
async fn decreasing_steps_are_dropped() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("addr");
    let logger = WandbLogger::start(settings(local_url(closed_port), Some(KEY)));
    logger.log(5, row(1.0));
    logger.log(5, row(2.0));
    logger.log(3, row(3.0));
    logger.log(6, row(4.0));
    assert_eq!(logger.dropped(), 1);
    let probe = logger.clone();
    logger.finish(Duration::ZERO).await;
    assert_eq!((probe.sent(), probe.dropped()), (0, 4));
}

#[tokio::test]
async fn server_errors_are_retried_until_delivered() {
    let rec = Arc::new(Recorder::default());
    rec.graphql_failures_left.store(2, Ordering::SeqCst);
    rec.stream_failures_left.store(3, Ordering::SeqCst);
    let addr = serve(rec.clone()).await;
    let logger = WandbLogger::start(settings(local_url(addr), Some(KEY)));
    for step in 0..10 {
        logger.log(step, row(step as f64));
    }
    assert!(wait_for(Duration::from_secs(20), || logger.sent() == 10).await, "rows not delivered after errors");
    assert_eq!(rec.failed_requests.load(Ordering::SeqCst), 5);
    for step in 10..15 {
        logger.log(step, row(step as f64));
    }
    let probe = logger.clone();
    logger.finish(Duration::from_secs(10)).await;
    assert_eq!((probe.sent(), probe.dropped()), (15, 0));
    let lines = history_lines(&rec.streams());
    let steps: Vec<u64> = lines.iter().map(|l| l["_step"].as_u64().expect("step")).collect();
    assert_eq!(steps, (0..15).collect::<Vec<_>>());
}

#[tokio::test]
async fn rejected_key_disables_logging() {
    let rec = Arc::new(Recorder::default());
    let addr = serve(rec.clone()).await;
    let logger = WandbLogger::start(settings(local_url(addr), Some("wrong-key")));
    logger.log(0, row(1.0));
    assert!(wait_for(Duration::from_secs(10), || logger.dropped() == 1).await, "401 should drop the queue");
    logger.log(1, row(1.0));
    assert_eq!(logger.dropped(), 2);
    let started = Instant::now();
    logger.finish(Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(rec.unauthorized.load(Ordering::SeqCst), 1, "401 is not retried");
}
