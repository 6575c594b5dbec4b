//! Text to token ids. The seed used the HF tokenizer of `togethercomputer/LLaMA-2-7B-32K`; we load such a
//! `tokenizer.json` from a path or from the local HF cache but never download (miners may be offline and
//! a silent download hides a misconfiguration). The byte-level tokenizer needs no files at all, for
//! devnets and tests: ids `0..=255` are bytes, [`BYTE_EOS_ID`] = 256, [`BYTE_PAD_ID`] = 257, vocab 258.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tracing::debug;

use crate::error::DataError;

/// End-of-document id of the byte tokenizer.
pub const BYTE_EOS_ID: u32 = 256;
/// Padding id of the byte tokenizer.
pub const BYTE_PAD_ID: u32 = 257;
/// Vocabulary size of the byte tokenizer.
pub const BYTE_VOCAB_SIZE: usize = 258;

/// Token names taken as end-of-sequence when no `tokenizer_config.json` says otherwise, in this order.
const EOS_CANDIDATES: [&str; 4] = ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"];

/// A tokenizer for training text; cheap to clone (shared).
#[derive(Clone, Debug)]
pub enum TextTokenizer {
    /// Bytes of the UTF-8 text, plus EOS and PAD.
    Bytes,
    /// A Hugging Face `tokenizer.json`.
    Hf(HfTokenizer),
}

/// A loaded `tokenizer.json` with its EOS and PAD ids resolved.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    path: PathBuf,
    vocab_size: usize,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl HfTokenizer {
    /// Where the `tokenizer.json` was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TextTokenizer {
    /// Resolves a command-line spec: `bytes`/`byte`, a `tokenizer.json` path (or a directory holding
    /// one), or a Hub name like `togethercomputer/LLaMA-2-7B-32K` looked up in the local HF cache.
    pub fn load(spec: &str) -> Result<Self, DataError> {
        if spec == "bytes" || spec == "byte" {
            return Ok(Self::Bytes);
        }
        let path = Path::new(spec);
        if path.is_file() {
            return Self::from_file(path);
        }
        let in_dir = path.join("tokenizer.json");
        if in_dir.is_file() {
            return Self::from_file(&in_dir);
        }
        let mut tried = vec![path.to_owned(), in_dir];
        if is_hub_name(spec) {
            match Self::from_hf_cache(spec, &default_hub_dirs()) {
                Err(DataError::TokenizerNotFound { tried: more, .. }) => tried.extend(more),
                other => return other,
            }
        }
        Err(DataError::TokenizerNotFound { name: spec.to_owned(), tried })
    }

    /// Loads a `tokenizer.json`; EOS/PAD come from a `tokenizer_config.json` beside it when present.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        if !path.is_file() {
            return Err(DataError::TokenizerNotFound {
                name: path.display().to_string(),
                tried: vec![path.to_owned()],
            });
        }
        let load_err = |message: String| DataError::TokenizerLoad { path: path.to_owned(), message };
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        let config = read_tokenizer_config(path);
        let named = |key: &str| config.as_ref().and_then(|c| special_token(c, key)).and_then(|t| inner.token_to_id(&t));
        let eos = named("eos_token")
            .or_else(|| EOS_CANDIDATES.iter().find_map(|t| inner.token_to_id(t)))
            .ok_or_else(|| {
                load_err(format!(
                    "no EOS token: no eos_token in tokenizer_config.json and none of {EOS_CANDIDATES:?} in the vocabulary"
                ))
            })?;
        // Llama-2 has no pad token; the seed padded with EOS. Padding is masked out of the loss either way.
        let pad = named("pad_token").unwrap_or(eos);
        let vocab_size = inner.get_vocab_size(true);
        debug!(path = %path.display(), vocab_size, eos, pad, "loaded tokenizer");
        Ok(Self::Hf(HfTokenizer { inner: Arc::new(inner), path: path.to_owned(), vocab_size, eos, pad }))
    }

    /// Finds `models--{org}--{name}/snapshots/*/tokenizer.json` under each hub cache dir (the `refs/main`
    /// snapshot first); the error lists every path tried.
    pub fn from_hf_cache(name: &str, hub_dirs: &[PathBuf]) -> Result<Self, DataError> {
        let mut tried = Vec::new();
        let repo_dir_name = format!("models--{}", name.replace('/', "--"));
        for hub in hub_dirs {
            let repo = hub.join(&repo_dir_name);
            let snapshots = repo.join("snapshots");
            let mut candidates = Vec::new();
            if let Ok(main) = std::fs::read_to_string(repo.join("refs").join("main")) {
                candidates.push(snapshots.join(main.trim()).join("tokenizer.json"));
            }
            if let Ok(entries) = std::fs::read_dir(&snapshots) {
                let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                dirs.sort();
                candidates.extend(dirs.into_iter().map(|d| d.join("tokenizer.json")));
            }
            if candidates.is_empty() {
                tried.push(snapshots.join("*").join("tokenizer.json"));
            }
            for candidate in candidates {
                if candidate.is_file() {
                    return Self::from_file(&candidate);
                }
                tried.push(candidate);
            }
        }
        Err(DataError::TokenizerNotFound { name: name.to_owned(), tried })
    }

    /// The `tokenizer.json` it was loaded from (`None` for the byte tokenizer).
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::Bytes => None,
            Self::Hf(t) => Some(t.path()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => BYTE_VOCAB_SIZE,
            Self::Hf(t) => t.vocab_size,
        }
    }

    pub fn eos_id(&self) -> u32 {
        match self {
            Self::Bytes => BYTE_EOS_ID,
            Self::Hf(t) => t.eos,
        }
    }

    pub fn pad_id(&self) -> u32 {
        match self {
            Self::Bytes => BYTE_PAD_ID,
            Self::Hf(t) => t.pad,
        }
    }

    /// Token ids of `text`. An HF tokenizer adds its special tokens (Llama: a leading BOS), as the seed's
    /// `tokenizer.encode` did.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Hf(t) => {
                let encoding = t.inner.encode(text, true).map_err(|e| DataError::Tokenize(e.to_string()))?;
                Ok(encoding.get_ids().to_vec())
            }
        }
    }

    /// Text of `ids`, dropping special tokens (EOS, PAD, BOS); invalid UTF-8 is replaced, not an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        match self {
            Self::Bytes => {
                let bytes: Vec<u8> = ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Self::Hf(t) => t.inner.decode(ids, true).map_err(|e| DataError::Tokenize(e.to_string())),
        }
    }
}

/// `org/name` with no path-like parts.
pub(crate) fn is_hub_name(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p != "." && p != "..");
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() && !spec.ends_with(".json")
}

/// The hub cache dirs the `huggingface_hub` library uses, most specific first: `$HF_HUB_CACHE`,
/// `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
pub fn default_hub_dirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut dirs = Vec::new();
    if let Some(d) = env("HF_HUB_CACHE") {
        dirs.push(d);
    }
    if let Some(d) = env("HF_HOME") {
        dirs.push(d.join("hub"));
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        dirs.push(d.join("huggingface").join("hub"));
    }
    if let Some(d) = env("HOME") {
        dirs.push(d.join(".cache").join("huggingface").join("hub"));
    }
    dirs.dedup();
    dirs
}

fn read_tokenizer_config(tokenizer_json: &Path) -> Option<Value> {
    let path = tokenizer_json.parent()?.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            debug!(path = %path.display(), error = %e, "ignoring unreadable tokenizer_config.json");
            None
        }
    }
}

/// A special token from `tokenizer_config.json`: a string, or `{"content": …}` (an AddedToken).
fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::AddedToken;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;

    use super::*;

    const WORDS: [&str; 8] = ["[UNK]", "</s>", "<pad>", "the", "cat", "sat", "on", "mat"];

    /// A word-level tokenizer built in code and saved as `dir/tokenizer.json`.
    fn save_word_tokenizer(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("dir");
        let vocab = WORDS.iter().enumerate().map(|(i, w)| ((*w).to_owned(), i as u32)).collect();
        let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().expect("model");
        let mut tok = tokenizers::Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace));
        tok.add_special_tokens([AddedToken::from("</s>", true), AddedToken::from("<pad>", true)]).expect("specials");
        let path = dir.join("tokenizer.json");
        tok.save(&path, false).expect("save");
        path
    }

    #[test]
    fn byte_tokenizer_round_trips_and_reports_ids() {
        let tok = TextTokenizer::load("bytes").expect("bytes");
        assert_eq!((tok.vocab_size(), tok.eos_id(), tok.pad_id()), (258, 256, 257));
        let text = "héllo, wörld ✓\n";
        let ids = tok.encode(text).expect("encode");
        assert_eq!(ids.len(), text.len());
        assert!(ids.iter().all(|&i| i < 256));
        assert_eq!(tok.decode(&ids).expect("decode"), text);
        let mut with_specials = ids.clone();
        with_specials.extend([BYTE_EOS_ID, BYTE_PAD_ID]);
        assert_eq!(tok.decode(&with_specials).expect("decode"), text, "EOS/PAD are dropped");
    }

    #[test]
    fn hf_tokenizer_loads_from_path_with_fallback_eos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = save_word_tokenizer(dir.path());
        let tok = TextTokenizer::from_file(&path).expect("load");
        assert_eq!(tok.vocab_size(), WORDS.len());
        assert_eq!(tok.eos_id(), 1, "</s> found by name");
        assert_eq!(tok.pad_id(), 1, "no pad_token configured: pad with EOS as the seed did");
        let ids = tok.encode("the cat sat on the mat").expect("encode");
        assert_eq!(ids, [3, 4, 5, 6, 3, 7]);
        assert_eq!(tok.encode("the dog").expect("unk"), [3, 0]);
        assert_eq!(tok.decode(&[3, 4, 1]).expect("decode"), "the cat");
        // A directory holding tokenizer.json works too.
        let by_dir = TextTokenizer::load(&dir.path().display().to_string()).expect("dir");
        assert_eq!(by_dir.encode("cat mat").expect("encode"), [4, 7]);
    }

    #[test]
    fn hf_tokenizer_config_names_eos_and_pad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = save_word_tokenizer(dir.path());
        let config = r#"{"eos_token": {"content": "<pad>", "special": true}, "pad_token": "mat"}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), config).expect("config");
        let tok = TextTokenizer::from_file(&path).expect("load");
        assert_eq!((tok.eos_id(), tok.pad_id()), (2, 7));
    }

    #[test]
    fn hf_tokenizer_found_in_fake_hub_cache() {
        let hub = tempfile::tempdir().expect("tempdir");
        let repo = hub.path().join("models--togethercomputer--LLaMA-2-7B-32K");
        save_word_tokenizer(&repo.join("snapshots").join("aaaa"));
        std::fs::create_dir_all(repo.join("refs")).expect("refs");
        std::fs::write(repo.join("refs").join("main"), "aaaa\n").expect("ref");
        let empty = tempfile::tempdir().expect("tempdir");
        let dirs = [empty.path().to_owned(), hub.path().to_owned()];
        let tok = TextTokenizer::from_hf_cache("togethercomputer/LLaMA-2-7B-32K", &dirs).expect("cache");
        match &tok {
            TextTokenizer::Hf(t) => assert!(t.path().ends_with("snapshots/aaaa/tokenizer.json"), "{:?}", t.path()),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(tok.encode("the mat").expect("encode"), [3, 7]);
    }

    #[test]
    fn missing_tokenizer_lists_where_it_looked() {
        let hub = tempfile::tempdir().expect("tempdir");
        let err = TextTokenizer::from_hf_cache("org/absent", &[hub.path().to_owned()]).expect_err("absent");
        let expected = hub.path().join("models--org--absent").join("snapshots").join("*").join("tokenizer.json");
        match &err {
            DataError::TokenizerNotFound { name, tried } => {
                assert_eq!(name, "org/absent");
                assert_eq!(tried, std::slice::from_ref(&expected));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&expected.display().to_string()), "{err}");

        let missing = hub.path().join("nope.json");
        let err = TextTokenizer::load(&missing.display().to_string()).expect_err("missing path");
        assert!(matches!(&err, DataError::TokenizerNotFound { tried, .. } if tried[0] == missing), "{err:?}");
    }

    #[test]
    fn tokenizer_without_eos_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vocab = [("[UNK]".to_owned(), 0u32), ("a".to_owned(), 1)].into_iter().collect();
        let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().expect("model");
        let path = dir.path().join("tokenizer.json");
        tokenizers::Tokenizer::new(model).save(&path, false).expect("save");
        let err = TextTokenizer::from_file(&path).expect_err("no eos");
        assert!(err.to_string().contains("no EOS token"), "{err}");
        std::fs::write(&path, "{ not json").expect("garbage");
        assert!(matches!(TextTokenizer::from_file(&path), Err(DataError::TokenizerLoad { .. })));
    }

    #[test]
    fn hub_names_are_recognised() {
        assert!(is_hub_name("togethercomputer/LLaMA-2-7B-32K"));
        assert!(!is_hub_name("./tok"));
        assert!(!is_hub_name("/abs/path"));
        assert!(!is_hub_name("a/b/c"));
        assert!(!is_hub_name("dir/tokenizer.json"));
    }
}
