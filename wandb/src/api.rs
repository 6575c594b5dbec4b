//! The slice of W&B's HTTP API the official client uses to create a run and stream its history.
//!
//! Shapes follow wandb's Go core (`core/api/graphql/mutation_run.graphql`,
//! `query_viewer.graphql`, `core/internal/filestream`): GraphQL at `{base}/graphql`, history via
//! `POST {base}/files/{entity}/{project}/{run}/file_stream`, HTTP basic auth `api:<key>`.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value, json};
use url::Url;

/// Why a request failed; [`ApiError::is_retryable`] decides between backing off and giving up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("HTTP request failed: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("GraphQL error: {0}")]
    GraphQl(String),
    #[error("unexpected response: {0}")]
    Decode(String),
    #[error("the API key was not accepted (viewer is null)")]
    NoViewer,
    #[error("invalid base URL: {0}")]
    BadUrl(String),
}

impl ApiError {
    /// Same split as wandb's filestream retry policy: 400/401/403/404/409/410 are permanent;
    /// network errors, 429, 5xx and odd bodies are worth retrying.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => !matches!(status, 400 | 401 | 403 | 404 | 409 | 410),
            Self::Transport(_) | Self::GraphQl(_) | Self::Decode(_) => true,
            Self::NoViewer | Self::BadUrl(_) => false,
        }
    }
}

/// The API key; a newtype so it can never be printed by a derived `Debug`.
#[derive(Clone)]
pub(crate) struct ApiKey(String);

impl ApiKey {
    pub(crate) fn new(key: String) -> Self {
        Self(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What the server says about the run it created (or found).
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) run_id: String,
    pub(crate) entity: String,
    pub(crate) project: String,
    /// Lines already in `wandb-history.jsonl` (non-zero only when the run id existed).
    pub(crate) history_line_count: u64,
}

/// What `upsertBucket` is asked to create.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    pub(crate) run_id: String,
    pub(crate) project: String,
    pub(crate) display_name: String,
    /// `config` as the backend expects it: a JSON string of `{key: {"desc": null, "value": v}}`.
    pub(crate) config_json: String,
    pub(crate) host: Option<String>,
}

const VIEWER_QUERY: &str = "query Viewer {\n  viewer {\n    id\n    entity\n    username\n  }\n}\n";

const UPSERT_BUCKET_MUTATION: &str = r#"mutation UpsertBucket(
  $id: String,
  $name: String,
  $project: String,
  $entity: String,
  $description: String,
  $displayName: String,
  $config: JSONString,
  $host: String
) {
  upsertBucket(input: {
    id: $id,
    name: $name,
    modelName: $project,
    entityName: $entity,
    description: $description,
    displayName: $displayName,
    config: $config,
    host: $host
  }) {
    bucket {
      id
      name
      displayName
      project {
        id
        name
        entity {
          id
          name
        }
      }
      historyLineCount
    }
    inserted
  }
}
"#;

/// An authenticated client for one W&B server.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    key: ApiKey,
}

impl Api {
    pub(crate) fn new(base: Url, key: ApiKey, timeout: Duration) -> Result<Self, ApiError> {
        if base.cannot_be_a_base() {
            return Err(ApiError::BadUrl(base.to_string()));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("tessera-wandb/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(ApiError::Transport)?;
        Ok(Self { http, base, key })
    }

    /// `{base}/{segments...}`, percent-encoding each segment and keeping any base path prefix.
    fn endpoint(&self, segments: &[&str]) -> Result<Url, ApiError> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut().map_err(|()| ApiError::BadUrl(self.base.to_string()))?.pop_if_empty().extend(segments);
        Ok(url)
    }

    async fn post_json(&self, url: Url, body: &Value) -> Result<Value, ApiError> {
        let response = self
            .http
            .post(url)
            .basic_auth("api", Some(&self.key.0))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(ApiError::Transport)?;
        let status = response.status();
        let text = response.text().await.map_err(ApiError::Transport)?;
        if !status.is_success() {
            return Err(ApiError::Status { status: status.as_u16(), body: snippet(&text) });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ApiError::Decode(format!("{e}: {}", snippet(&text))))
    }

    /// Runs one GraphQL operation and returns its `data`, turning `errors` into [`ApiError::GraphQl`].
    async fn graphql(&self, query: &str, variables: Value) -> Result<Value, ApiError> {
        let url = self.endpoint(&["graphql"])?;
        let mut response = self.post_json(url, &json!({ "query": query, "variables": variables })).await?;
        if let Some(errors) = response.get("errors").and_then(Value::as_array).filter(|e| !e.is_empty()) {
            let messages: Vec<&str> =
                errors.iter().map(|e| e.get("message").and_then(Value::as_str).unwrap_or("(no message)")).collect();
            return Err(ApiError::GraphQl(messages.join("; ")));
        }
        match response.get_mut("data").map(Value::take) {
            Some(data) if !data.is_null() => Ok(data),
            _ => Err(ApiError::Decode("GraphQL response without data".into())),
        }
    }

    /// The default entity of the key's user, which the client uses when none is configured.
    pub(crate) async fn viewer_entity(&self) -> Result<String, ApiError> {
        let data = self.graphql(VIEWER_QUERY, json!({})).await?;
        let viewer = data.get("viewer").filter(|v| !v.is_null()).ok_or(ApiError::NoViewer)?;
        viewer
            .get("entity")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Decode("viewer without entity".into()))
    }

    /// Creates (or updates) the run with `upsertBucket`, as `wandb.init` does.
    pub(crate) async fn upsert_run(&self, entity: &str, spec: &RunSpec) -> Result<RunInfo, ApiError> {
        let variables = json!({
            "id": null,
            "name": spec.run_id,
            "project": spec.project,
            "entity": entity,
            "displayName": spec.display_name,
            "config": spec.config_json,
            "host": spec.host,
        });
        let data = self.graphql(UPSERT_BUCKET_MUTATION, variables).await?;
        let bucket = data
            .pointer("/upsertBucket/bucket")
            .filter(|b| !b.is_null())
            .ok_or_else(|| ApiError::Decode("upsertBucket returned no bucket".into()))?;
        let text = |pointer: &str, fallback: &str| {
            bucket.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(fallback).to_owned()
        };
        Ok(RunInfo {
            run_id: text("/name", &spec.run_id),
            entity: text("/project/entity/name", entity),
            project: text("/project/name", &spec.project),
            history_line_count: bucket.get("historyLineCount").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// Posts one file_stream request (history lines, summary, completion or an empty heartbeat).
    pub(crate) async fn file_stream(&self, run: &RunInfo, body: &Value) -> Result<(), ApiError> {
        let url = self.endpoint(&["files", &run.entity, &run.project, &run.run_id, "file_stream"])?;
        self.post_json(url, body).await.map(drop)
    }
}

/// The file_stream request body, shaped like wandb core's `FsTransmitData`.
pub(crate) fn file_stream_body(history_offset: u64, lines: &[String], summary: Option<&str>, complete: bool) -> Value {
    let mut files = Map::new();
    if !lines.is_empty() {
        files.insert("wandb-history.jsonl".into(), json!({ "offset": history_offset, "content": lines }));
    }
    if let Some(summary) = summary {
        files.insert("wandb-summary.json".into(), json!({ "offset": 0, "content": [summary] }));
    }
    let mut body = Map::new();
    if !files.is_empty() {
        body.insert("files".into(), Value::Object(files));
    }
    if complete {
        body.insert("complete".into(), Value::Bool(true));
        body.insert("exitcode".into(), Value::from(0));
    }
    Value::Object(body)
}

/// The run config in the backend's format: every key wrapped as `{"desc": null, "value": v}`.
pub(crate) fn backend_config(config: &Value) -> String {
    let wrap = |v: &Value| json!({ "desc": null, "value": v });
    let wrapped: Map<String, Value> = match config {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), wrap(v))).collect(),
        Value::Null => Map::new(),
        other => std::iter::once(("config".to_owned(), wrap(other))).collect(),
    };
    Value::Object(wrapped).to_string()
}

/// The web UI's address for an API base URL, as `wandb.util.app_url` derives it.
pub(crate) fn app_url(base: &Url) -> String {
    let api = base.as_str().trim_end_matches('/');
    let app = if api.contains("://api.wandb.test") {
        api.replacen("://api.", "://app.", 1)
    } else if api.contains("://api.wandb.") {
        api.replacen("://api.", "://", 1)
    } else if api.contains("://api.") {
        api.replacen("://api.", "://app.", 1)
    } else {
        api.to_owned()
    };
    app.trim_end_matches('/').to_owned()
}

/// A short, char-boundary-safe excerpt of a response body for error messages.
fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_url_matches_python_client() {
        let url = |s: &str| Url::parse(s).expect("literal URL");
        assert_eq!(app_url(&url("https://api.wandb.ai")), "https://wandb.ai");
        assert_eq!(app_url(&url("https://api.example.com/")), "https://app.example.com");
        assert_eq!(app_url(&url("http://127.0.0.1:8080")), "http://127.0.0.1:8080");
    }

    #[test]
    fn config_values_are_wrapped() {
        let config: Value = serde_json::from_str(&backend_config(&json!({ "uid": 7 }))).expect("json");
        assert_eq!(config, json!({ "uid": { "desc": null, "value": 7 } }));
        assert_eq!(backend_config(&Value::Null), "{}");
    }

    #[test]
    fn file_stream_body_shapes() {
        assert_eq!(file_stream_body(5, &[], None, false), json!({}));
        let body = file_stream_body(5, &["{\"a\":1}".into()], Some("{}"), true);
        assert_eq!(
            body,
            json!({
                "files": {
                    "wandb-history.jsonl": { "offset": 5, "content": ["{\"a\":1}"] },
                    "wandb-summary.json": { "offset": 0, "content": ["{}"] },
                },
                "complete": true,
                "exitcode": 0,
            })
        );
    }

    #[test]
    fn endpoint_keeps_base_path_and_encodes_segments() {
        let base = Url::parse("http://host:1/prefix/").expect("literal URL");
        let api = Api::new(base, ApiKey::new("k".into()), Duration::from_secs(1)).expect("client");
        let url = api.endpoint(&["files", "my team", "p", "r", "file_stream"]).expect("url");
        assert_eq!(url.as_str(), "http://host:1/prefix/files/my%20team/p/r/file_stream");
        assert!(!format!("{api:?}").contains("\"k\""));
    }
}
