//! The miner's hotkey, read from the btcli wallet layout
//! (`<wallet.path>/<wallet.name>/hotkeys/<wallet.hotkey>`), so an operator's existing
//! `--wallet.name X --wallet.hotkey Y` keeps working unchanged.
//!
//! The keyfile is the unencrypted JSON that bittensor-wallet writes (`accountId`,
//! `publicKey`, `privateKey`, `secretPhrase`, `secretSeed`, `ss58Address`). The keypair is
//! derived from `secretSeed` (the 32-byte sr25519 mini-secret) or else from `secretPhrase`
//! (substrate's BIP39 derivation), and must reproduce the address the file records, so a
//! corrupt or hand-edited file fails loudly instead of mining under a stranger's hotkey.
//!
//! Secret material (seed, phrase, expanded key, the file's contents) never reaches a log
//! line, an error message or a `Debug` string.

use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};
use subxt_signer::bip39::{Language, Mnemonic};
use subxt_signer::sr25519;
use thiserror::Error;

use crate::fsutil::write_atomic;
use crate::hotkey::{Hotkey, HotkeySigner, dev_keypair};

/// btcli's default `--wallet.path`; `~` is expanded from `$HOME` when the file is read.
pub const DEFAULT_WALLET_PATH: &str = "~/.bittensor/wallets";

/// A keyfile is a few hundred bytes; anything bigger than this is not one, and is not
/// worth reading into memory.
const MAX_KEYFILE_BYTES: u64 = 64 * 1024;

/// Leading bytes of bittensor's encrypted keyfile formats, with a name for the message.
const ENCRYPTED_PREFIXES: &[(&[u8], &str)] =
    &[(b"$NACL", "NaCl"), (b"$ANSIBLE_VAULT", "Ansible Vault"), (b"$BT", "bittensor"), (b"gAAAAA", "legacy Fernet")];

/// Which hotkey to load: btcli's `--wallet.name`, `--wallet.hotkey` and `--wallet.path`.
///
/// A `hotkey` of the form `//Name` (e.g. `//Alice`) is a development key derived from
/// substrate's public dev phrase: no file is read. Only for devnets and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSpec {
    pub name: String,
    pub hotkey: String,
    /// The directory holding wallets; a leading `~` is expanded from `$HOME`.
    pub path: PathBuf,
}

impl Default for WalletSpec {
    /// btcli's defaults: wallet `default`, hotkey `default`, under `~/.bittensor/wallets`.
    fn default() -> Self {
        Self::new("default", "default")
    }
}

impl WalletSpec {
    /// A wallet and hotkey under btcli's default wallet path.
    pub fn new(name: impl Into<String>, hotkey: impl Into<String>) -> Self {
        Self { name: name.into(), hotkey: hotkey.into(), path: PathBuf::from(DEFAULT_WALLET_PATH) }
    }

    /// The dev-key URI when `hotkey` names a development key (`//Alice`), else `None`.
    pub fn dev_uri(&self) -> Option<&str> {
        self.hotkey.starts_with("//").then_some(self.hotkey.as_str())
    }

    /// `<path>/<name>/hotkeys/<hotkey>`, with `~` expanded: where btcli keeps the hotkey.
    /// Meaningless for a dev hotkey (see [`WalletSpec::dev_uri`]), which has no file.
    pub fn hotkey_file(&self) -> PathBuf {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        self.hotkey_file_with_home(home.as_deref())
    }

    fn hotkey_file_with_home(&self, home: Option<&Path>) -> PathBuf {
        expand_home(&self.path, home).join(&self.name).join("hotkeys").join(&self.hotkey)
    }

    /// Loads and checks the hotkey: from its keyfile, or a dev key for `//Name`.
    pub fn load_hotkey(&self) -> Result<LoadedHotkey, WalletError> {
        if let Some(uri) = self.dev_uri() {
            return LoadedHotkey::dev(uri);
        }
        check_component("wallet.name", &self.name)?;
        check_component("wallet.hotkey", &self.hotkey)?;
        let path = self.hotkey_file();
        if path.starts_with("~") {
            return Err(WalletError::NoHome { wallet_path: self.path.clone() });
        }
        let bytes = read_keyfile(&path, self)?;
        let loaded = parse_keyfile(&path, &bytes, self)?;
        tracing::info!(hotkey = %loaded.hotkey, path = %path.display(), "loaded hotkey from keyfile");
        Ok(loaded)
    }
}

/// BLAKE3 context of [`LoadedHotkey::private_seed`].
const PRIVATE_SEED_CONTEXT: &str = "tessera 2026-12 private seed v1";

/// An sr25519 hotkey ready to sign: the keypair plus where it came from.
///
/// `Debug` shows only the SS58 address. Do not `Debug`-print [`LoadedHotkey::keypair`]:
/// subxt-signer's keypair derives `Debug` and prints its secret scalar.
#[derive(Clone)]
pub struct LoadedHotkey {
    keypair: sr25519::Keypair,
    hotkey: Hotkey,
    keyfile: Option<PathBuf>,
}

impl LoadedHotkey {
    /// A development key (`Alice`, `//Alice`, `//Bob`, …) from substrate's public dev
    /// phrase: for the devnet and tests only, since anyone can derive its secret.
    pub fn dev(name: &str) -> Result<Self, WalletError> {
        let keypair = dev_keypair(name).map_err(|reason| WalletError::Dev { uri: name.to_owned(), reason })?;
        let loaded = Self::from_keypair(keypair, None);
        tracing::warn!(hotkey = %loaded.hotkey, uri = name, "using a development hotkey whose secret is public");
        Ok(loaded)
    }

    fn from_keypair(keypair: sr25519::Keypair, keyfile: Option<PathBuf>) -> Self {
        let hotkey = Hotkey(keypair.public_key().0);
        Self { keypair, hotkey, keyfile }
    }

    /// The public key, i.e. the neuron's identity on the subnet.
    pub fn hotkey(&self) -> Hotkey {
        self.hotkey
    }

    /// The subxt-signer keypair, for signing extrinsics with the chain client.
    pub fn keypair(&self) -> &sr25519::Keypair {
        &self.keypair
    }

    /// 32 bytes only this key's holder can compute, the same on every run, for draws that
    /// others must not predict but that a restart or a lockstep devnet must repeat (a
    /// validator's random evaluation pages and copy-check sketches). They hash the public
    /// key of the hard derivation `//tessera-private//<purpose>`, which needs the secret
    /// key and is never published, with `context`.
    pub fn private_seed(&self, purpose: &str, context: &[u8]) -> [u8; 32] {
        use subxt_signer::DeriveJunction;
        let derived = self.keypair.derive([DeriveJunction::hard("tessera-private"), DeriveJunction::hard(purpose)]);
        let mut h = blake3::Hasher::new_derive_key(PRIVATE_SEED_CONTEXT);
        h.update(&derived.public_key().0);
        h.update(&(purpose.len() as u64).to_le_bytes());
        h.update(purpose.as_bytes());
        h.update(context);
        *h.finalize().as_bytes()
    }

    /// The keyfile it was read from; `None` for a dev key.
    pub fn keyfile(&self) -> Option<&Path> {
        self.keyfile.as_deref()
    }
}

impl fmt::Debug for LoadedHotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoadedHotkey({})", self.hotkey)
    }
}

impl HotkeySigner for LoadedHotkey {
    fn hotkey(&self) -> Hotkey {
        self.hotkey
    }
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        HotkeySigner::sign(&self.keypair, message)
    }
}

/// Why a hotkey could not be loaded or written. Messages name the file and the field and
/// say what to do; they never contain secret material.
#[derive(Debug, Error)]
pub enum WalletError {
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName { field: &'static str, value: String, reason: &'static str },

    #[error(
        "cannot expand ~ in wallet path {}: HOME is not set; pass an absolute --wallet.path",
        .wallet_path.display()
    )]
    NoHome { wallet_path: PathBuf },

    #[error(
        "hotkey file {} not found (wallet {name:?}, hotkey {hotkey:?}, wallet path {}); create it with \
         `btcli wallet new_hotkey --wallet.name {name} --wallet.hotkey {hotkey}` (or restore it with \
         `btcli wallet regen_hotkey`), or pass --wallet.path with the directory that holds your wallets",
        .path.display(),
        .wallet_path.display()
    )]
    Missing { path: PathBuf, name: String, hotkey: String, wallet_path: PathBuf },

    #[error("cannot read hotkey file {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "hotkey file {} is encrypted ({method}); tessera needs an unencrypted hotkey. btcli creates \
         hotkeys unencrypted by default: regenerate it with `btcli wallet regen_hotkey --wallet.name \
         {name} --wallet.hotkey {hotkey}` without --use-password",
        .path.display()
    )]
    Encrypted { path: PathBuf, method: &'static str, name: String, hotkey: String },

    #[error("hotkey file {} is not a btcli keyfile: {detail}", .path.display())]
    Malformed { path: PathBuf, detail: String },

    #[error(
        "hotkey file {} has neither secretSeed nor secretPhrase, so it cannot sign (keyfiles holding \
         only privateKey or only the address are not supported); regenerate it with \
         `btcli wallet regen_hotkey --wallet.name {name} --wallet.hotkey {hotkey}`",
        .path.display()
    )]
    NoSecret { path: PathBuf, name: String, hotkey: String },

    #[error("hotkey file {}: field {field} {reason}", .path.display())]
    BadField { path: PathBuf, field: &'static str, reason: String },

    #[error(
        "hotkey file {}: {field} records {recorded} but the key derived from {derived_from} is \
         {derived}; the file is corrupt or was edited, regenerate it with btcli",
        .path.display()
    )]
    AddressMismatch {
        path: PathBuf,
        field: &'static str,
        recorded: String,
        derived_from: &'static str,
        derived: String,
    },

    #[error("invalid dev key {uri:?}: {reason}")]
    Dev { uri: String, reason: String },

    #[error("hotkey file {} already exists; refusing to overwrite a key", .path.display())]
    AlreadyExists { path: PathBuf },

    #[error("cannot write hotkey file {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes a btcli-format, unencrypted hotkey file for `seed` (a 32-byte sr25519
/// mini-secret) at `<wallet_path>/<name>/hotkeys/<hotkey>`, atomically and mode 0600, and
/// returns its path. For tests and the devnet; refuses to replace an existing file.
pub fn write_hotkey_file(
    wallet_path: &Path,
    name: &str,
    hotkey: &str,
    seed: &[u8; 32],
) -> Result<PathBuf, WalletError> {
    check_component("wallet.name", name)?;
    check_component("wallet.hotkey", hotkey)?;
    let path = wallet_path.join(name).join("hotkeys").join(hotkey);
    if path.exists() {
        return Err(WalletError::AlreadyExists { path });
    }
    let keypair = sr25519::Keypair::from_secret_key(*seed).map_err(|e| WalletError::BadField {
        path: path.clone(),
        field: "secretSeed",
        reason: e.to_string(),
    })?;
    let public = keypair.public_key().0;
    // bittensor-wallet records sp-core's raw secret: schnorrkel's canonical 64-byte form.
    let private = schnorrkel::MiniSecretKey::from_bytes(seed)
        .map_err(|e| WalletError::BadField { path: path.clone(), field: "secretSeed", reason: e.to_string() })?
        .expand(schnorrkel::ExpansionMode::Ed25519)
        .to_bytes();
    let public_hex = format!("0x{}", hex::encode(public));
    let json = serde_json::to_vec(&KeyfileOut {
        account_id: public_hex.clone(),
        public_key: public_hex,
        private_key: format!("0x{}", hex::encode(private)),
        secret_phrase: None,
        secret_seed: format!("0x{}", hex::encode(seed)),
        ss58_address: Hotkey(public).to_ss58(),
    })
    .map_err(|e| WalletError::Write { path: path.clone(), source: e.into() })?;
    write_atomic(&path, &json).map_err(|source| WalletError::Write { path: path.clone(), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| WalletError::Write { path: path.clone(), source })?;
    }
    tracing::debug!(hotkey = %Hotkey(public), path = %path.display(), "wrote hotkey file");
    Ok(path)
}

/// The keyfile as bittensor-wallet writes it (field order as the Python writer's).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyfileOut {
    account_id: String,
    public_key: String,
    private_key: String,
    secret_phrase: Option<String>,
    secret_seed: String,
    ss58_address: String,
}

/// Expands a leading `~` or `~/` to `home`; any other path (and `~user`) is returned as is.
fn expand_home(path: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// A wallet or hotkey name must be one plain path component, so it cannot escape the
/// wallet directory (an absolute or `..` name would).
fn check_component(field: &'static str, value: &str) -> Result<(), WalletError> {
    let bad = |reason| Err(WalletError::InvalidName { field, value: value.to_owned(), reason });
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.contains(['/', '\\']) {
        return bad("it must be a plain name without '/' or '\\'");
    }
    match Path::new(value).components().next() {
        Some(Component::Normal(_)) => Ok(()),
        _ => bad("it must be a plain name, not '.' or '..'"),
    }
}

fn read_keyfile(path: &Path, spec: &WalletSpec) -> Result<Vec<u8>, WalletError> {
    let unreadable = |source| WalletError::Unreadable { path: path.to_path_buf(), source };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(WalletError::Missing {
                path: path.to_path_buf(),
                name: spec.name.clone(),
                hotkey: spec.hotkey.clone(),
                wallet_path: spec.path.clone(),
            });
        }
        Err(e) => return Err(unreadable(e)),
    };
    warn_if_shared(path, &file);
    let mut bytes = Vec::new();
    file.take(MAX_KEYFILE_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_KEYFILE_BYTES {
        return Err(WalletError::Malformed {
            path: path.to_path_buf(),
            detail: format!("it is larger than {MAX_KEYFILE_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// btcli writes hotkeys 0600; a group- or world-readable one leaks the key to other users.
fn warn_if_shared(path: &Path, file: &std::fs::File) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = file.metadata() {
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_file() && mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "hotkey file is readable by other users; run chmod 600 on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file);
}

fn parse_keyfile(path: &Path, bytes: &[u8], spec: &WalletSpec) -> Result<LoadedHotkey, WalletError> {
    let malformed = |detail: String| WalletError::Malformed { path: path.to_path_buf(), detail };
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    if let Some((_, method)) = ENCRYPTED_PREFIXES.iter().find(|(prefix, _)| bytes[start..].starts_with(prefix)) {
        return Err(WalletError::Encrypted {
            path: path.to_path_buf(),
            method,
            name: spec.name.clone(),
            hotkey: spec.hotkey.clone(),
        });
    }
    // Only the position of a syntax error is reported: serde_json's messages can quote
    // the offending value, which here may be secret.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("invalid JSON at line {} column {}", e.line(), e.column())))?;
    let Value::Object(fields) = value else {
        return Err(malformed("expected a JSON object".to_owned()));
    };
    let field = |name| string_field(path, &fields, name);

    let (keypair, derived_from) = if let Some(seed) = field("secretSeed")? {
        (keypair_from_seed(path, seed)?, "secretSeed")
    } else if let Some(phrase) = field("secretPhrase")? {
        (keypair_from_phrase(path, phrase)?, "secretPhrase")
    } else {
        return Err(WalletError::NoSecret {
            path: path.to_path_buf(),
            name: spec.name.clone(),
            hotkey: spec.hotkey.clone(),
        });
    };
    let derived = Hotkey(keypair.public_key().0);
    let mismatch = |field, recorded: String| WalletError::AddressMismatch {
        path: path.to_path_buf(),
        field,
        recorded,
        derived_from,
        derived: derived.to_ss58(),
    };

    match field("ss58Address")? {
        Some(address) => {
            let recorded = Hotkey::from_str(address).map_err(|e| WalletError::BadField {
                path: path.to_path_buf(),
                field: "ss58Address",
                reason: format!("is not an SS58 address: {}", e.reason),
            })?;
            if recorded != derived {
                return Err(mismatch("ss58Address", address.to_owned()));
            }
        }
        None => {
            tracing::warn!(path = %path.display(), "hotkey file records no ss58Address to check the key against")
        }
    }
    for name in ["publicKey", "accountId"] {
        if let Some(text) = field(name)? {
            let recorded = Hotkey(decode_hex32(path, name, text)?);
            if recorded != derived {
                return Err(mismatch(name, format!("{text} ({recorded})")));
            }
        }
    }
    Ok(LoadedHotkey::from_keypair(keypair, Some(path.to_path_buf())))
}

/// A string field; absent, `null` or blank all mean "not recorded", as the Python writer
/// emits `null` for what a key lacks.
fn string_field<'a>(
    path: &Path,
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, WalletError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => {
            Err(WalletError::BadField { path: path.to_path_buf(), field: name, reason: "is not a string".to_owned() })
        }
    }
}

/// Decodes `0x`-prefixed (or bare) hex of exactly 32 bytes. Error messages give only the
/// length, never a character of the value.
fn decode_hex32(path: &Path, field: &'static str, text: &str) -> Result<[u8; 32], WalletError> {
    let bad = |reason: String| WalletError::BadField { path: path.to_path_buf(), field, reason };
    // Some writers prefixed an already-prefixed hex string ("0x0x…"); no hex digit is 'x'.
    let digits = text.trim_start_matches("0x");
    let bytes = hex::decode(digits).map_err(|_| bad("is not valid hex (expected 0x and 64 hex digits)".to_owned()))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| bad(format!("decodes to {len} bytes, expected 32")))
}

fn keypair_from_seed(path: &Path, seed: &str) -> Result<sr25519::Keypair, WalletError> {
    let seed = decode_hex32(path, "secretSeed", seed)?;
    sr25519::Keypair::from_secret_key(seed).map_err(|e| WalletError::BadField {
        path: path.to_path_buf(),
        field: "secretSeed",
        reason: e.to_string(),
    })
}

/// Substrate's derivation, as btcli's: the mini-secret comes from the BIP39 entropy
/// (PBKDF2 with an empty password), not from the BIP39 seed.
fn keypair_from_phrase(path: &Path, phrase: &str) -> Result<sr25519::Keypair, WalletError> {
    let bad = |reason: String| WalletError::BadField { path: path.to_path_buf(), field: "secretPhrase", reason };
    // bip39's messages give word counts and positions, never the words themselves.
    let mnemonic = Mnemonic::parse_in_normalized(Language::English, phrase)
        .map_err(|e| bad(format!("is not a valid English BIP39 mnemonic: {e}")))?;
    sr25519::Keypair::from_phrase(&mnemonic, None).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hotkey::verify;
    use serde_json::json;

    /// Substrate's public dev phrase (sp-core `DEV_PHRASE`).
    const DEV_PHRASE: &str = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";
    /// The phrase's root mini-secret, as `subkey inspect` prints it ("Secret seed") and
    /// sr25519-crust's test vectors use; independent of our derivation code.
    const DEV_SEED_HEX: &str = "fac7959dbfe72f052e5a0c3c8d6530f202b02fd8f9f5ca3580ec8deb7797479e";
    /// Its public key and address: sp-core's `DEV_ADDRESS`, sr25519-crust's `kDevPubKey`.
    const DEV_PUBLIC_HEX: &str = "46ebddef8cd9bb167dc30878d7113b7e168e6f0646beffd77d69d39bad76b47a";
    const DEV_ADDRESS: &str = "5DfhGyQdFobKM8NsWvEeAKk5EQQgYe9AydgJ7rMB6E1EqRzV";
    /// The same secret in Ed25519 byte form, from schnorrkel's `from_ed25519_bytes` doc test.
    const DEV_ED25519_SECRET_HEX: &str = "28b0ae221c6bb06856b287f60d7ea0d98552ea5a16db16956849aa371db3eb51\
                                          fd190cce74df356432b410bd64682309d6dedb27c76845daf388557cbac3ca34";
    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

    fn dev_seed() -> [u8; 32] {
        hex::decode(DEV_SEED_HEX).unwrap().try_into().unwrap()
    }

    fn spec(dir: &Path, name: &str, hotkey: &str) -> WalletSpec {
        WalletSpec { name: name.into(), hotkey: hotkey.into(), path: dir.to_path_buf() }
    }

    /// Writes raw keyfile bytes at the btcli location and returns the spec that reads them.
    fn keyfile(dir: &Path, contents: &[u8]) -> (WalletSpec, PathBuf) {
        let spec = spec(dir, "miner", "hk");
        let path = spec.hotkey_file();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        (spec, path)
    }

    fn json_keyfile(dir: &Path, value: Value) -> (WalletSpec, PathBuf) {
        keyfile(dir, value.to_string().as_bytes())
    }

    /// Asserts that no secret of the dev key appears in `text`.
    fn assert_no_secret(text: &str) {
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains(DEV_SEED_HEX), "seed leaked: {text}");
        assert!(!lower.contains(&DEV_SEED_HEX[..16]), "seed prefix leaked: {text}");
        assert!(!lower.contains(DEV_PHRASE), "phrase leaked: {text}");
        for word in ["bottom", "obey", "curtain", "basket", "lonely"] {
            assert!(!lower.contains(word), "phrase word {word:?} leaked: {text}");
        }
    }

    #[test]
    fn dev_alice_has_the_well_known_address() {
        let alice = LoadedHotkey::dev("//Alice").unwrap();
        assert_eq!(alice.hotkey().to_ss58(), ALICE);
        assert_eq!(alice.keyfile(), None);
        let via_spec = WalletSpec::new("any", "//Alice").load_hotkey().unwrap();
        assert_eq!(via_spec.hotkey().to_ss58(), ALICE);
        assert_eq!(format!("{via_spec:?}"), format!("LoadedHotkey({ALICE})"));
    }

    #[test]
    fn seed_keyfile_loads_the_dev_phrase_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_hotkey_file(dir.path(), "miner", "hk", &dev_seed()).unwrap();
        let spec = spec(dir.path(), "miner", "hk");
        assert_eq!(path, spec.hotkey_file());
        let loaded = spec.load_hotkey().unwrap();
        assert_eq!(loaded.hotkey().to_ss58(), DEV_ADDRESS);
        assert_eq!(hex::encode(loaded.hotkey().0), DEV_PUBLIC_HEX);
        assert_eq!(loaded.keyfile(), Some(path.as_path()));
        let sig = HotkeySigner::sign(&loaded, b"slice header");
        assert!(verify(&loaded.hotkey(), b"slice header", &sig));
        assert_eq!(loaded.keypair().public_key().0, loaded.hotkey().0);
    }

    #[test]
    fn phrase_only_keyfile_derives_the_substrate_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = json_keyfile(
            dir.path(),
            json!({"secretPhrase": DEV_PHRASE, "secretSeed": null, "ss58Address": DEV_ADDRESS}),
        );
        let loaded = spec.load_hotkey().unwrap();
        assert_eq!(loaded.hotkey().to_ss58(), DEV_ADDRESS);
        assert_eq!(hex::encode(loaded.hotkey().0), DEV_PUBLIC_HEX);
    }

    #[test]
    fn python_style_fields_load_nulls_and_seed_without_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = json_keyfile(
            dir.path(),
            json!({
                "accountId": null, "publicKey": format!("0x{DEV_PUBLIC_HEX}"), "privateKey": null,
                "secretPhrase": "", "secretSeed": DEV_SEED_HEX, "ss58Address": DEV_ADDRESS,
            }),
        );
        assert_eq!(spec.load_hotkey().unwrap().hotkey().to_ss58(), DEV_ADDRESS);
        // A doubled "0x0x" prefix, which some writers produced, is accepted too.
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) =
            json_keyfile(dir.path(), json!({"secretSeed": format!("0x0x{DEV_SEED_HEX}"), "ss58Address": DEV_ADDRESS}));
        assert_eq!(spec.load_hotkey().unwrap().hotkey().to_ss58(), DEV_ADDRESS);
    }

    #[test]
    fn written_keyfile_has_btcli_fields_and_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_hotkey_file(dir.path(), "miner", "hk", &dev_seed()).unwrap();
        let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let public = format!("0x{DEV_PUBLIC_HEX}");
        assert_eq!(value["accountId"], json!(public));
        assert_eq!(value["publicKey"], json!(public));
        assert_eq!(value["secretSeed"], json!(format!("0x{DEV_SEED_HEX}")));
        assert_eq!(value["ss58Address"], json!(DEV_ADDRESS));
        assert_eq!(value["secretPhrase"], Value::Null);
        let private = hex::decode(value["privateKey"].as_str().unwrap().trim_start_matches("0x")).unwrap();
        assert_eq!(private.len(), 64);
        let secret = schnorrkel::SecretKey::from_bytes(&private).unwrap();
        assert_eq!(hex::encode(secret.to_public().to_bytes()), DEV_PUBLIC_HEX);
        assert_eq!(hex::encode(secret.to_ed25519_bytes()), DEV_ED25519_SECRET_HEX);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn writing_refuses_to_overwrite_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_hotkey_file(dir.path(), "miner", "hk", &dev_seed()).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = write_hotkey_file(dir.path(), "miner", "hk", &[7; 32]).unwrap_err();
        assert!(matches!(err, WalletError::AlreadyExists { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn missing_keyfile_names_the_path_and_the_btcli_command() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path(), "miner1", "hot1");
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::Missing { .. }), "{err:?}");
        let msg = err.to_string();
        let expected_path = dir.path().join("miner1").join("hotkeys").join("hot1");
        assert!(msg.contains(&expected_path.display().to_string()), "{msg}");
        assert!(msg.contains("btcli wallet new_hotkey --wallet.name miner1 --wallet.hotkey hot1"), "{msg}");
        assert!(msg.contains("--wallet.path"), "{msg}");
    }

    #[test]
    fn encrypted_keyfiles_say_an_unencrypted_hotkey_is_needed() {
        for (contents, method) in [
            (&b"$NACL\x01\x02ciphertext"[..], "NaCl"),
            (b"$ANSIBLE_VAULT;1.1;AES256\n6331", "Ansible Vault"),
            (b"$BTsomething", "bittensor"),
            (b"  gAAAAABkX", "legacy Fernet"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (spec, path) = keyfile(dir.path(), contents);
            let err = spec.load_hotkey().unwrap_err();
            assert!(matches!(err, WalletError::Encrypted { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("is encrypted") && msg.contains(method), "{msg}");
            assert!(msg.contains("unencrypted hotkey"), "{msg}");
            assert!(msg.contains("btcli wallet regen_hotkey --wallet.name miner --wallet.hotkey hk"), "{msg}");
        }
    }

    #[test]
    fn malformed_json_names_the_file_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, path) = keyfile(dir.path(), format!("{{\"secretSeed\": \"0x{DEV_SEED_HEX}\" oops").as_bytes());
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::Malformed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains("invalid JSON at line 1"), "{msg}");
        assert_no_secret(&msg);
        assert_no_secret(&format!("{err:?}"));

        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = keyfile(dir.path(), b"[1, 2]");
        let err = spec.load_hotkey().unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
    }

    #[test]
    fn keyfile_without_seed_or_phrase_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, path) = json_keyfile(
            dir.path(),
            json!({"publicKey": format!("0x{DEV_PUBLIC_HEX}"), "secretSeed": null, "ss58Address": DEV_ADDRESS}),
        );
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::NoSecret { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("secretSeed") && msg.contains("secretPhrase"), "{msg}");
        assert!(msg.contains("btcli wallet regen_hotkey"), "{msg}");
    }

    #[test]
    fn bad_seed_names_the_field_and_the_problem() {
        let cases = [
            (json!(format!("0x{}zz", &DEV_SEED_HEX[2..])), "not valid hex"),
            (json!(format!("0x{}", &DEV_SEED_HEX[2..])), "decodes to 31 bytes, expected 32"),
            (json!(12345), "not a string"),
        ];
        for (seed, reason) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (spec, path) = json_keyfile(dir.path(), json!({"secretSeed": seed, "ss58Address": DEV_ADDRESS}));
            let err = spec.load_hotkey().unwrap_err();
            assert!(matches!(err, WalletError::BadField { field: "secretSeed", .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains("secretSeed"), "{msg}");
            assert!(msg.contains(reason), "{msg}");
            assert!(!msg.contains(&DEV_SEED_HEX[2..18]), "{msg}");
        }
    }

    #[test]
    fn bad_mnemonic_names_the_field_without_quoting_words() {
        let unknown_word = DEV_PHRASE.replace("lake", "lakex");
        let bad_checksum = DEV_PHRASE.replace("walk", "wall");
        for (phrase, reason) in [(unknown_word.as_str(), "unknown word"), (bad_checksum.as_str(), "checksum")] {
            let dir = tempfile::tempdir().unwrap();
            let (spec, path) = json_keyfile(dir.path(), json!({"secretPhrase": phrase, "ss58Address": DEV_ADDRESS}));
            let err = spec.load_hotkey().unwrap_err();
            assert!(matches!(err, WalletError::BadField { field: "secretPhrase", .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains("secretPhrase"), "{msg}");
            assert!(msg.contains(reason), "{msg}");
            assert_no_secret(&msg);
            assert!(!msg.contains("lakex") && !msg.contains("wall "), "{msg}");
        }
    }

    #[test]
    fn address_mismatch_names_both_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, path) = json_keyfile(dir.path(), json!({"secretSeed": DEV_SEED_HEX, "ss58Address": BOB}));
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::AddressMismatch { field: "ss58Address", .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(BOB) && msg.contains(DEV_ADDRESS), "{msg}");
        assert_no_secret(&msg);

        // A recorded publicKey is checked too, even when the address agrees.
        let bob_hex = hex::encode(BOB.parse::<Hotkey>().unwrap().0);
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = json_keyfile(
            dir.path(),
            json!({"secretSeed": DEV_SEED_HEX, "ss58Address": DEV_ADDRESS, "publicKey": format!("0x{bob_hex}")}),
        );
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::AddressMismatch { field: "publicKey", .. }), "{err:?}");
        assert!(err.to_string().contains(BOB) && err.to_string().contains(DEV_ADDRESS), "{err}");
    }

    #[test]
    fn seed_is_preferred_over_phrase() {
        // The phrase matches the recorded address, the seed does not: loading must follow
        // the seed and so report a mismatch naming it.
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = json_keyfile(
            dir.path(),
            json!({"secretPhrase": DEV_PHRASE, "secretSeed": format!("0x{}", hex::encode([7u8; 32])), "ss58Address": DEV_ADDRESS}),
        );
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::AddressMismatch { derived_from: "secretSeed", .. }), "{err:?}");
        assert!(err.to_string().contains("derived from secretSeed"), "{err}");
    }

    #[test]
    fn unreadable_keyfile_names_the_path_and_os_error() {
        // A directory where the file should be: unreadable even for root, unlike chmod 000.
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path(), "miner", "hk");
        let path = spec.hotkey_file();
        std::fs::create_dir_all(&path).unwrap();
        let err = spec.load_hotkey().unwrap_err();
        let WalletError::Unreadable { source, .. } = &err else { panic!("{err:?}") };
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&source.to_string()) && source.raw_os_error().is_some(), "{msg}");
    }

    #[test]
    fn secrets_never_appear_in_debug_or_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = json_keyfile(
            dir.path(),
            json!({"secretPhrase": DEV_PHRASE, "secretSeed": DEV_SEED_HEX, "ss58Address": DEV_ADDRESS}),
        );
        let loaded = spec.load_hotkey().unwrap();
        assert_eq!(format!("{loaded:?}"), format!("LoadedHotkey({DEV_ADDRESS})"));
        assert_no_secret(&format!("{loaded:?} {loaded:#?}"));

        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = json_keyfile(
            dir.path(),
            json!({"secretPhrase": DEV_PHRASE, "secretSeed": DEV_SEED_HEX, "ss58Address": BOB}),
        );
        let err = spec.load_hotkey().unwrap_err();
        assert!(matches!(err, WalletError::AddressMismatch { .. }), "{err:?}");
        assert_no_secret(&format!("{err} {err:?}"));
    }

    #[test]
    fn names_that_escape_the_wallet_directory_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for (name, hotkey, field) in
            [("..", "hk", "wallet.name"), ("miner", "a/b", "wallet.hotkey"), ("", "hk", "wallet.name")]
        {
            let err = spec(dir.path(), name, hotkey).load_hotkey().unwrap_err();
            assert!(matches!(err, WalletError::InvalidName { field: f, .. } if f == field), "{err:?}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = write_hotkey_file(dir.path(), "miner", "../../x", &dev_seed()).unwrap_err();
        assert!(matches!(err, WalletError::InvalidName { field: "wallet.hotkey", .. }), "{err:?}");
    }

    #[test]
    fn default_spec_is_btcli_default_with_tilde_expanded() {
        let spec = WalletSpec::default();
        assert_eq!((spec.name.as_str(), spec.hotkey.as_str()), ("default", "default"));
        assert_eq!(spec.path, PathBuf::from(DEFAULT_WALLET_PATH));
        assert_eq!(
            spec.hotkey_file_with_home(Some(Path::new("/home/op"))),
            PathBuf::from("/home/op/.bittensor/wallets/default/hotkeys/default")
        );
        assert_eq!(expand_home(Path::new("~"), Some(Path::new("/h"))), PathBuf::from("/h"));
        assert_eq!(expand_home(Path::new("/abs/~/x"), Some(Path::new("/h"))), PathBuf::from("/abs/~/x"));
        assert_eq!(expand_home(Path::new("~bob/x"), Some(Path::new("/h"))), PathBuf::from("~bob/x"));
        assert_eq!(expand_home(Path::new("~/x"), None), PathBuf::from("~/x"));
    }

    #[test]
    fn private_seeds_repeat_for_a_key_and_differ_by_purpose_context_and_key() {
        let alice = LoadedHotkey::dev("Alice").unwrap();
        let seed = alice.private_seed("pages", &7u64.to_le_bytes());
        assert_eq!(seed, LoadedHotkey::dev("//Alice").unwrap().private_seed("pages", &7u64.to_le_bytes()));
        assert_ne!(seed, alice.private_seed("pages", &8u64.to_le_bytes()));
        assert_ne!(seed, alice.private_seed("sketch", &7u64.to_le_bytes()));
        assert_ne!(seed, LoadedHotkey::dev("Bob").unwrap().private_seed("pages", &7u64.to_le_bytes()));
        // Not a hash of public material alone: the public key is not in it as such.
        assert_ne!(&seed[..], &alice.hotkey().0[..]);
    }
}
