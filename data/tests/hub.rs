//! Fetching a tokenizer from a Hub over real HTTP (a local server speaking the Hub's
//! `resolve` URLs): written into the HF cache layout, found there by the next load without
//! the network, and a missing repository is a clear error.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tessera_data::{DataError, HubClient, TextTokenizer};
use tokenizers::AddedToken;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tokenizer_json(dir: &Path) -> Vec<u8> {
    let words = ["[UNK]", "</s>", "<pad>", "the", "cat"];
    let vocab = words.iter().enumerate().map(|(i, w)| ((*w).to_owned(), i as u32)).collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace));
    tok.add_special_tokens([AddedToken::from("</s>", true), AddedToken::from("<pad>", true)]).unwrap();
    let path = dir.join("served.json");
    tok.save(&path, false).unwrap();
    std::fs::read(path).unwrap()
}

/// Serves `org/tiny` at `main`; counts requests; 404 for everything else.
async fn hub(json: Vec<u8>, requests: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let json = Bytes::from(json);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (json, requests) = (json.clone(), requests.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let body = match req.uri().path() {
                        "/org/tiny/resolve/main/tokenizer.json" => Some(json.clone()),
                        "/org/tiny/resolve/main/tokenizer_config.json" => {
                            Some(Bytes::from_static(br#"{"eos_token": "</s>", "pad_token": "<pad>"}"#))
                        }
                        _ => None,
                    };
                    async move {
                        let mut response = Response::new(Full::new(body.clone().unwrap_or_default()));
                        match body {
                            Some(_) => {
                                response.headers_mut().insert("x-repo-commit", COMMIT.parse().unwrap());
                            }
                            None => *response.status_mut() = StatusCode::NOT_FOUND,
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn a_tokenizer_missing_locally_is_fetched_into_the_hf_cache_once() {
    let dir = tempfile::tempdir().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let endpoint = hub(tokenizer_json(dir.path()), requests.clone()).await;
    let cache = dir.path().join("hub");
    let client = HubClient {
        endpoint: endpoint.parse().unwrap(),
        token: None,
        cache_dir: cache.clone(),
        timeout: Duration::from_secs(10),
    };

    let path = client.fetch_tokenizer("org/tiny").await.unwrap();
    assert_eq!(path, cache.join("models--org--tiny").join("snapshots").join(COMMIT).join("tokenizer.json"));
    assert_eq!(std::fs::read_to_string(cache.join("models--org--tiny/refs/main")).unwrap(), COMMIT);
    assert!(path.with_file_name("tokenizer_config.json").is_file());
    let tok = TextTokenizer::from_file(&path).unwrap();
    assert_eq!((tok.vocab_size(), tok.eos_id(), tok.pad_id()), (5, 1, 2));

    // Found in the cache now: no request.
    let before = requests.load(Ordering::SeqCst);
    let cached = TextTokenizer::from_hf_cache("org/tiny", std::slice::from_ref(&cache)).unwrap();
    assert_eq!(cached.vocab_size(), 5);
    assert_eq!(requests.load(Ordering::SeqCst), before);

    // A repository the Hub does not have: a clear error naming it.
    let err = client.fetch_tokenizer("org/absent").await.unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("org/absent/tokenizer.json"), "{err}");
}

#[tokio::test]
async fn load_or_fetch_goes_to_the_hub_only_for_hub_names() {
    let dir = tempfile::tempdir().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let endpoint = hub(tokenizer_json(dir.path()), requests.clone()).await;
    let client = HubClient {
        endpoint: endpoint.parse().unwrap(),
        token: Some("hf_secret".into()),
        cache_dir: dir.path().join("hub"),
        timeout: Duration::from_secs(10),
    };
    assert!(!format!("{client:?}").contains("hf_secret"));
    let tok = TextTokenizer::load_or_fetch("org/tiny", Some(&client)).await.unwrap();
    assert_eq!(tok.vocab_size(), 5);
    let bytes = TextTokenizer::load_or_fetch("bytes", Some(&client)).await.unwrap();
    assert_eq!(bytes.vocab_size(), tessera_data::BYTE_VOCAB_SIZE);
    let missing = TextTokenizer::load_or_fetch("./no/such/tokenizer.json", Some(&client)).await.unwrap_err();
    assert!(matches!(missing, DataError::TokenizerNotFound { .. }), "{missing}");
}
