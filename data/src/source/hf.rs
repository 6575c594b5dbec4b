//! The Hugging Face datasets-server API the seed read fineweb-edu from: `/size` for configs and row
//! counts, `/rows` for 100 rows at a time. The public service rate-limits and has transient 5xx, so every
//! request has a timeout, bounded retries with exponential backoff, and a body-size cap.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;
use tracing::{debug, warn};
use url::Url;

use super::{PageSource, error_chain};
use crate::error::DataError;
use crate::pages::{ConfigInfo, DatasetInfo, Page};

/// The public datasets-server.
pub const DEFAULT_HF_BASE_URL: &str = "https://datasets-server.huggingface.co";
/// The seed's dataset (`DatasetLoader.name`).
pub const DEFAULT_DATASET: &str = "HuggingFaceFW/fineweb-edu-score-2";

/// Where and how politely to talk to the datasets-server.
#[derive(Debug, Clone)]
pub struct HfRowsConfig {
    /// Base URL; `/size` and `/rows` are appended to its path.
    pub base_url: String,
    pub dataset: String,
    /// Only this split is used (the seed's datasets only have `train`).
    pub split: String,
    /// Per-request timeout (connect + body).
    pub timeout: Duration,
    /// Total attempts for a retryable failure (5xx, 429, network), at least 1.
    pub max_attempts: u32,
    /// First backoff delay; doubled after each failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
}

impl Default for HfRowsConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_HF_BASE_URL.to_owned(),
            dataset: DEFAULT_DATASET.to_owned(),
            split: "train".to_owned(),
            timeout: Duration::from_secs(30),
            max_attempts: 8,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_response_bytes: 64 << 20,
        }
    }
}

/// [`PageSource`] over the datasets-server; the `/size` answer is cached after the first success.
pub struct HfRowsSource {
    client: reqwest::Client,
    base: Url,
    config: HfRowsConfig,
    info: OnceCell<DatasetInfo>,
}

#[derive(Deserialize)]
struct SizeResponse {
    size: SizeBody,
}

#[derive(Deserialize)]
struct SizeBody {
    splits: Vec<SplitSize>,
}

#[derive(Deserialize)]
struct SplitSize {
    config: String,
    split: String,
    num_rows: u64,
}

#[derive(Deserialize)]
struct RowsResponse {
    rows: Vec<RowEntry>,
}

#[derive(Deserialize)]
struct RowEntry {
    row: RowBody,
    #[serde(default)]
    truncated_cells: Vec<String>,
}

#[derive(Deserialize)]
struct RowBody {
    text: Option<String>,
}

/// Whether a failed attempt is worth repeating.
enum Failure {
    Retry(DataError),
    Fatal(DataError),
}

impl HfRowsSource {
    /// A source for `config`; fails only on an unusable base URL or HTTP client set-up.
    pub fn new(config: HfRowsConfig) -> Result<Self, DataError> {
        let base = Url::parse(&config.base_url)
            .map_err(|e| DataError::InvalidUrl { url: config.base_url.clone(), message: e.to_string() })?;
        if base.cannot_be_a_base() {
            return Err(DataError::InvalidUrl { url: config.base_url.clone(), message: "cannot append paths".into() });
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| DataError::InvalidArgument(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self { client, base, config, info: OnceCell::new() })
    }

    /// `base/<endpoint>?<query>`.
    fn endpoint(&self, endpoint: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(endpoint);
        }
        url.query_pairs_mut().extend_pairs(query);
        url
    }

    /// GET `url` and parse its JSON body, retrying transient failures with backoff.
    async fn get_json<T: DeserializeOwned>(&self, url: &Url, field: &str) -> Result<T, DataError> {
        let attempts = self.config.max_attempts.max(1);
        let mut delay = self.config.backoff;
        let mut attempt = 1;
        let body = loop {
            match self.fetch_once(url).await {
                Ok(body) => break body,
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry(mut err)) => {
                    if let DataError::Network { attempts: n, .. } = &mut err {
                        *n = attempt;
                    }
                    if attempt >= attempts {
                        return Err(err);
                    }
                    warn!(%url, attempt, ?delay, error = %err, "datasets-server request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
            }
        };
        serde_json::from_slice(&body).map_err(|e| DataError::MalformedJson {
            origin: url.to_string(),
            field: field.to_owned(),
            message: e.to_string(),
        })
    }

    async fn fetch_once(&self, url: &Url) -> Result<Vec<u8>, Failure> {
        let network = |e: reqwest::Error| {
            Failure::Retry(DataError::Network { url: url.to_string(), attempts: 1, message: error_chain(&e) })
        };
        let mut response = self.client.get(url.clone()).send().await.map_err(network)?;
        let status = response.status();
        let limit = self.config.max_response_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(Failure::Fatal(DataError::ResponseTooLarge { url: url.to_string(), limit }));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            if body.len() + chunk.len() > limit {
                return Err(Failure::Fatal(DataError::ResponseTooLarge { url: url.to_string(), limit }));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let snippet: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        let err =
            DataError::HttpStatus { status: status.as_u16(), url: url.to_string(), body: snippet.trim().to_owned() };
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Retry(err))
        } else {
            Err(Failure::Fatal(err))
        }
    }

    async fn fetch_info(&self) -> Result<DatasetInfo, DataError> {
        let url = self.endpoint("size", &[("dataset", &self.config.dataset)]);
        let size: SizeResponse = self.get_json(&url, "size.splits[].{config,split,num_rows}").await?;
        let mut configs: Vec<ConfigInfo> = size
            .size
            .splits
            .into_iter()
            .filter(|s| s.split == self.config.split && s.num_rows > 0)
            .map(|s| ConfigInfo { name: s.config, split: s.split, num_rows: s.num_rows })
            .collect();
        // The seed skipped `default`, which duplicates the per-crawl configs; keep it when it is all there is.
        if configs.iter().any(|c| c.name != "default") {
            configs.retain(|c| c.name != "default");
        }
        if configs.is_empty() {
            return Err(DataError::EmptyDataset(format!(
                "{} (split {:?}, from {url})",
                self.config.dataset, self.config.split
            )));
        }
        debug!(dataset = %self.config.dataset, configs = configs.len(), "fetched dataset sizes");
        Ok(DatasetInfo { configs })
    }
}

#[async_trait::async_trait]
impl PageSource for HfRowsSource {
    async fn info(&self) -> Result<DatasetInfo, DataError> {
        self.info.get_or_try_init(|| self.fetch_info()).await.cloned()
    }

    async fn rows(&self, page: &Page) -> Result<Vec<String>, DataError> {
        let offset = page.offset.to_string();
        let length = page.rows.to_string();
        let url = self.endpoint(
            "rows",
            &[
                ("dataset", &self.config.dataset),
                ("config", &page.config),
                ("split", &page.split),
                ("offset", &offset),
                ("length", &length),
            ],
        );
        let response: RowsResponse = self.get_json(&url, "rows[].row.text").await?;
        if response.rows.len() != page.rows as usize {
            warn!(%url, got = response.rows.len(), expected = page.rows, "datasets-server returned a short page");
        }
        response
            .rows
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                if entry.truncated_cells.iter().any(|c| c == "text") {
                    warn!(%url, row = i, "datasets-server truncated this row's text");
                }
                entry.row.text.ok_or_else(|| DataError::MalformedJson {
                    origin: url.to_string(),
                    field: format!("rows[{i}].row.text"),
                    message: "missing or null".to_owned(),
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("{} at {}", self.config.dataset, self.base)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Answers `(status, body)` for a request path+query and how many times that path was asked before.
    type Script = dyn Fn(&str, usize) -> (u16, String) + Send + Sync;

    /// A one-thread HTTP/1.1 server on 127.0.0.1:0 answering from `script`; returns its base URL and the
    /// request targets it saw.
    async fn serve(script: Arc<Script>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen_in = seen.clone();
        tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let path = target.split('?').next().unwrap_or("").to_owned();
                let n = counts.entry(path).or_default();
                let (status, body) = script(&target, *n);
                *n += 1;
                seen_in.lock().expect("lock").push(target);
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (format!("http://{addr}/api"), seen)
    }

    fn size_json() -> String {
        serde_json::json!({
            "size": {
                "dataset": {"dataset": "org/ds", "num_rows": 1500},
                "configs": [],
                "splits": [
                    {"dataset": "org/ds", "config": "default", "split": "train", "num_rows": 1500, "num_columns": 2},
                    {"dataset": "org/ds", "config": "CC-MAIN-2024-10", "split": "train", "num_rows": 1000, "num_columns": 2},
                    {"dataset": "org/ds", "config": "CC-MAIN-2013-20", "split": "train", "num_rows": 500, "num_columns": 2},
                    {"dataset": "org/ds", "config": "CC-MAIN-2013-20", "split": "test", "num_rows": 7, "num_columns": 2}
                ]
            },
            "pending": [], "failed": [], "partial": false
        })
        .to_string()
    }

    fn rows_json(offset: u64, n: u64) -> String {
        let rows: Vec<_> = (offset..offset + n)
            .map(|i| serde_json::json!({"row_idx": i, "row": {"text": format!("doc {i}"), "score": 3.1}, "truncated_cells": []}))
            .collect();
        serde_json::json!({"features": [], "rows": rows, "num_rows_total": 1000, "num_rows_per_page": 100, "partial": false})
            .to_string()
    }

    fn source(base: String) -> HfRowsSource {
        HfRowsSource::new(HfRowsConfig {
            base_url: base,
            dataset: "org/ds".into(),
            timeout: Duration::from_secs(10),
            max_attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..HfRowsConfig::default()
        })
        .expect("source")
    }

    fn page() -> Page {
        Page { config: "CC-MAIN-2024-10".into(), split: "train".into(), offset: 200, rows: 3 }
    }

    #[tokio::test]
    async fn hf_info_and_rows_from_local_server() {
        let (base, seen) = serve(Arc::new(|target: &str, _| {
            if target.starts_with("/api/size?") {
                (200, size_json())
            } else if target.starts_with("/api/rows?") {
                (200, rows_json(200, 3))
            } else {
                (404, "{}".into())
            }
        }))
        .await;
        let src = source(base);
        let info = src.info().await.expect("info");
        let names: Vec<(&str, u64)> = info.configs.iter().map(|c| (c.name.as_str(), c.num_rows)).collect();
        assert_eq!(names, [("CC-MAIN-2024-10", 1000), ("CC-MAIN-2013-20", 500)], "default and test split dropped");
        assert_eq!(src.info().await.expect("cached info"), info);
        let rows = src.rows(&page()).await.expect("rows");
        assert_eq!(rows, ["doc 200", "doc 201", "doc 202"]);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "size is cached: {seen:?}");
        assert_eq!(seen[0], "/api/size?dataset=org%2Fds");
        assert_eq!(seen[1], "/api/rows?dataset=org%2Fds&config=CC-MAIN-2024-10&split=train&offset=200&length=3");
    }

    #[tokio::test]
    async fn hf_retries_a_500_then_succeeds() {
        let (base, seen) =
            serve(Arc::new(
                |_: &str, n| {
                    if n == 0 { (500, r#"{"error":"boom"}"#.into()) } else { (200, rows_json(200, 3)) }
                },
            ))
            .await;
        let rows = source(base).rows(&page()).await.expect("rows after retry");
        assert_eq!(rows.len(), 3);
        assert_eq!(seen.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn hf_gives_up_after_max_attempts_on_429() {
        let (base, seen) = serve(Arc::new(|_: &str, _| (429, r#"{"error":"slow down"}"#.into()))).await;
        let err = source(base).rows(&page()).await.expect_err("429 forever");
        match &err {
            DataError::HttpStatus { status, url, body } => {
                assert_eq!(*status, 429);
                assert!(url.contains("/api/rows?"), "{url}");
                assert!(body.contains("slow down"), "{body}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(seen.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn hf_404_is_a_clear_error_without_retry() {
        let (base, seen) = serve(Arc::new(|_: &str, _| (404, r#"{"error":"Not found."}"#.into()))).await;
        let err = source(base).info().await.expect_err("404");
        let msg = err.to_string();
        assert!(matches!(err, DataError::HttpStatus { status: 404, .. }), "{err:?}");
        assert!(
            msg.contains("HTTP 404") && msg.contains("/api/size?dataset=org%2Fds") && msg.contains("Not found"),
            "{msg}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 1, "4xx is not retried");
    }

    #[tokio::test]
    async fn hf_garbage_json_names_url_and_field() {
        let (base, _) = serve(Arc::new(|target: &str, _| {
            if target.starts_with("/api/rows") {
                (200, r#"{"rows":[{"row":{"title":"no text"}}]}"#.into())
            } else {
                (200, "<html>not json".into())
            }
        }))
        .await;
        let src = source(base);
        let err = src.info().await.expect_err("garbage");
        match &err {
            DataError::MalformedJson { origin, field, .. } => {
                assert!(origin.contains("/api/size?"), "{origin}");
                assert!(field.contains("num_rows"), "{field}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = src.rows(&page()).await.expect_err("missing text");
        assert!(matches!(&err, DataError::MalformedJson { field, .. } if field == "rows[0].row.text"), "{err:?}");
    }

    #[tokio::test]
    async fn hf_caps_response_size() {
        let (base, _) = serve(Arc::new(|_: &str, _| (200, rows_json(0, 100)))).await;
        let src =
            HfRowsSource::new(HfRowsConfig { base_url: base, max_response_bytes: 256, ..HfRowsConfig::default() })
                .expect("source");
        let err = src.rows(&page()).await.expect_err("too large");
        assert!(matches!(err, DataError::ResponseTooLarge { limit: 256, .. }), "{err:?}");
    }

    #[tokio::test]
    async fn hf_network_error_names_url_and_attempts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = source(format!("http://{addr}")).info().await.expect_err("refused");
        match &err {
            DataError::Network { url, attempts, .. } => {
                assert!(url.starts_with(&format!("http://{addr}/size?")), "{url}");
                assert_eq!(*attempts, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn hf_rejects_bad_base_url() {
        let bad = HfRowsConfig { base_url: "not a url".into(), ..HfRowsConfig::default() };
        assert!(matches!(HfRowsSource::new(bad), Err(DataError::InvalidUrl { .. })));
    }
}
