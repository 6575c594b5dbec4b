//! Fetching a tokenizer from the Hugging Face Hub into the local HF cache, as
//! `huggingface_hub` lays it out (`models--{org}--{name}/snapshots/{commit}/…` and
//! `refs/main`), so that a fresh machine needs no `huggingface-cli` step and a machine that
//! already has the tokenizer never goes to the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;
use url::Url;

use crate::error::DataError;
use crate::tokenizer::{TextTokenizer, default_hub_dirs};

/// The Hub; `HF_ENDPOINT` overrides it, as for the Python client.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// Largest tokenizer file accepted (Llama-3's tokenizer.json is ~9 MB).
const MAX_TOKENIZER_BYTES: usize = 64 << 20;

/// Where and how to fetch from the Hub.
#[derive(Clone)]
pub struct HubClient {
    pub endpoint: Url,
    /// `HF_TOKEN` for gated repositories; never logged.
    pub token: Option<String>,
    /// The cache the files are written to (the first of [`default_hub_dirs`]).
    pub cache_dir: PathBuf,
    pub timeout: Duration,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl HubClient {
    /// From the environment the Python client reads: `HF_ENDPOINT`, `HF_TOKEN`, and the
    /// cache dirs of [`default_hub_dirs`]. `None` when no cache dir can be named.
    pub fn from_env() -> Option<Self> {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
        let endpoint = Url::parse(endpoint.as_deref().unwrap_or(DEFAULT_HF_ENDPOINT)).ok()?;
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty());
        let cache_dir = default_hub_dirs().into_iter().next()?;
        Some(Self { endpoint, token, cache_dir, timeout: Duration::from_secs(60) })
    }

    /// Downloads `tokenizer.json` (and `tokenizer_config.json` when the repository has one)
    /// of `repo` at `main` into the cache; returns the snapshot's `tokenizer.json`.
    pub async fn fetch_tokenizer(&self, repo: &str) -> Result<PathBuf, DataError> {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| DataError::InvalidArgument(format!("HTTP client: {e}")))?;
        let (json, commit) = self.get(&client, repo, "tokenizer.json").await?.ok_or_else(|| DataError::NotFound {
            what: "tokenizer.json on the Hub",
            path: PathBuf::from(format!("{repo}/tokenizer.json")),
        })?;
        let config = self.get(&client, repo, "tokenizer_config.json").await?;
        let repo_dir = self.cache_dir.join(format!("models--{}", repo.replace('/', "--")));
        let commit = commit.filter(|c| is_commit(c)).unwrap_or_else(|| "main".to_owned());
        let snapshot = repo_dir.join("snapshots").join(&commit);
        write_file(&snapshot.join("tokenizer.json"), &json)?;
        if let Some((config, _)) = config {
            write_file(&snapshot.join("tokenizer_config.json"), &config)?;
        }
        write_file(&repo_dir.join("refs").join("main"), commit.as_bytes())?;
        info!(repo, snapshot = %snapshot.display(), "fetched the tokenizer from the Hub");
        Ok(snapshot.join("tokenizer.json"))
    }

    /// One file at `main`: its bytes and the commit the Hub resolved, or `None` on 404.
    async fn get(
        &self,
        client: &reqwest::Client,
        repo: &str,
        file: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, DataError> {
        let url = self
            .endpoint
            .join(&format!("{repo}/resolve/main/{file}"))
            .map_err(|e| DataError::InvalidUrl { url: self.endpoint.to_string(), message: e.to_string() })?;
        let mut request = client.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let network =
            |e: reqwest::Error| DataError::Network { url: url.to_string(), attempts: 1, message: e.to_string() };
        let response = request.send().await.map_err(network)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(DataError::HttpStatus { status: status.as_u16(), url: url.to_string(), body });
        }
        let commit = response.headers().get("x-repo-commit").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if response.content_length().is_some_and(|n| n > MAX_TOKENIZER_BYTES as u64) {
            return Err(DataError::ResponseTooLarge { url: url.to_string(), limit: MAX_TOKENIZER_BYTES });
        }
        let bytes = response.bytes().await.map_err(network)?;
        if bytes.len() > MAX_TOKENIZER_BYTES {
            return Err(DataError::ResponseTooLarge { url: url.to_string(), limit: MAX_TOKENIZER_BYTES });
        }
        Ok(Some((bytes.to_vec(), commit)))
    }
}

/// A commit hash as the Hub reports it (hex), safe as a directory name.
fn is_commit(text: &str) -> bool {
    (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Temp file beside `path`, synced, renamed: a reader never sees half a file.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    use std::io::Write;
    let io = |source| DataError::Io { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

impl TextTokenizer {
    /// [`TextTokenizer::load`], and for a Hub name missing from the local cache, a fetch
    /// from the Hub into the cache first (the seed's `AutoTokenizer.from_pretrained`).
    pub async fn load_or_fetch(spec: &str, hub: Option<&HubClient>) -> Result<Self, DataError> {
        match Self::load(spec) {
            Err(DataError::TokenizerNotFound { name, tried }) => {
                let Some(hub) = hub.filter(|_| crate::tokenizer::is_hub_name(spec)) else {
                    return Err(DataError::TokenizerNotFound { name, tried });
                };
                let path = hub.fetch_tokenizer(spec).await?;
                Self::from_file(&path)
            }
            other => other,
        }
    }
}
