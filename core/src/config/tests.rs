use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::chain::{FINNEY_ENDPOINT, LOCAL_ENDPOINT, TEST_ENDPOINT};
use crate::storage::BucketNameError;

/// Every configuration key, dotted.
const KEYS: &[&str] = &[
    "actual_batch_size",
    "attention",
    "autoupdate",
    "baseline",
    "bucket",
    "checkpoint_path",
    "data.dataset",
    "data.pages_per_window",
    "data.source",
    "data.synthetic_seed",
    "debug",
    "device",
    "hparams",
    "local",
    "log_format",
    "metrics.listen",
    "miners",
    "netuid",
    "precision",
    "process_name",
    "project",
    "random",
    "recompute_activations",
    "remote",
    "runtime.allow_private_endpoints",
    "runtime.cache_dir",
    "runtime.checkpoint_every",
    "runtime.clock_skew_secs",
    "runtime.download_concurrency",
    "runtime.eval_every",
    "runtime.max_restarts",
    "runtime.peer_deadline_secs",
    "runtime.peer_failures_before_skip",
    "runtime.peer_skip_secs",
    "runtime.progress_timeout_secs",
    "runtime.refresh_secs",
    "runtime.restart_backoff_max_ms",
    "runtime.restart_backoff_ms",
    "runtime.restart_period_secs",
    "runtime.shutdown_timeout_secs",
    "s3.access_key_id",
    "s3.endpoint",
    "s3.profile",
    "s3.region",
    "s3.secret_access_key",
    "s3.session_token",
    "state_dir",
    "subtensor.chain_endpoint",
    "subtensor.network",
    "sync_state",
    "test",
    "trace",
    "use_wandb",
    "wallet.hotkey",
    "wallet.name",
    "wallet.path",
];

/// Every key of one `[[miners]]` entry, dotted, relative to the entry.
const MINER_KEYS: &[&str] = &[
    "actual_batch_size",
    "attention",
    "baseline",
    "bucket",
    "checkpoint_path",
    "device",
    "name",
    "precision",
    "random",
    "recompute_activations",
    "s3.access_key_id",
    "s3.endpoint",
    "s3.profile",
    "s3.region",
    "s3.secret_access_key",
    "s3.session_token",
    "wallet.hotkey",
    "wallet.name",
    "wallet.path",
];

const HOME: &str = "/home/op";

fn sources() -> ConfigSources {
    ConfigSources {
        config_dir: None,
        config_file: None,
        env: Some(HashMap::new()),
        cli_overrides: Vec::new(),
        home: Some(PathBuf::from(HOME)),
    }
}

fn cli(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
}

fn with_bucket() -> ConfigSources {
    ConfigSources { cli_overrides: cli(&[("bucket", "my-bucket")]), ..sources() }
}

fn err(s: &ConfigSources) -> String {
    MinerConfig::load(s).expect_err("configuration should be rejected").to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn defaults() -> MinerConfig {
    MinerConfig {
        actual_batch_size: 8,
        wallet: WalletConfig {
            name: "default".into(),
            hotkey: "default".into(),
            path: PathBuf::from("/home/op/.bittensor/wallets"),
        },
        bucket: BucketName::parse("my-bucket").unwrap(),
        s3: S3Config { region: Some("us-east-1".into()), ..S3Config::default() },
        device: Device::Cuda(0),
        precision: Precision::Auto,
        attention: AttentionKernel::Auto,
        recompute_activations: false,
        use_wandb: false,
        project: "templar".into(),
        netuid: 3,
        remote: false,
        sync_state: false,
        debug: false,
        trace: false,
        log_format: LogFormat::Text,
        metrics: MetricsConfig { listen: "127.0.0.1:9464".parse().ok() },
        random: false,
        baseline: false,
        test: false,
        local: false,
        autoupdate: false,
        subtensor: SubtensorConfig { network: Network::Finney, chain_endpoint: Some(FINNEY_ENDPOINT.into()) },
        checkpoint_path: None,
        process_name: None,
        hparams: HparamsSource::BuiltIn,
        state_dir: PathBuf::from("/home/op/.tessera"),
        runtime: RuntimeConfig {
            checkpoint_every: 10,
            download_concurrency: 16,
            peer_deadline: Duration::from_secs(30),
            progress_timeout: Duration::from_secs(10),
            peer_failures_before_skip: 3,
            peer_skip: Duration::from_secs(300),
            refresh_period: Duration::from_secs(60),
            max_restarts: 5,
            restart_period: Duration::from_secs(300),
            restart_backoff: Duration::from_millis(500),
            restart_backoff_max: Duration::from_millis(30_000),
            shutdown_timeout: Duration::from_secs(30),
            clock_skew: Duration::from_secs(30),
            allow_private_endpoints: false,
            eval_every: 0,
            cache_dir: PathBuf::from("/home/op/.tessera/slice-cache"),
        },
        data: DataConfig {
            source: DataSourceSpec::HuggingFace,
            dataset: None,
            synthetic_seed: 0,
            pages_per_window: None,
        },
        miners: Vec::new(),
    }
}

#[test]
fn defaults_are_the_seeds() {
    assert_eq!(MinerConfig::load(&with_bucket()).unwrap(), defaults());
}

#[test]
fn layers_take_precedence_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), DEFAULT_CONFIG_FILE, "actual_batch_size = 2\nnetuid = 20\n[wallet]\nname = \"from-default\"\n");
    let file = write(dir.path(), "mine.toml", "actual_batch_size = 3\n[wallet]\nname = \"from-file\"\n");
    let mut s = ConfigSources {
        config_dir: Some(dir.path().to_owned()),
        config_file: Some(file),
        env: env(&[("TESSERA__ACTUAL_BATCH_SIZE", "4"), ("TESSERA__WALLET__NAME", "from-env")]),
        cli_overrides: cli(&[("bucket", "my-bucket"), ("actual_batch_size", "5"), ("wallet.name", "from-cli")]),
        ..sources()
    };
    let c = MinerConfig::load(&s).unwrap();
    assert_eq!((c.actual_batch_size, c.wallet.name.as_str(), c.netuid), (5, "from-cli", 20));
    s.cli_overrides = cli(&[("bucket", "my-bucket")]);
    let c = MinerConfig::load(&s).unwrap();
    assert_eq!((c.actual_batch_size, c.wallet.name.as_str()), (4, "from-env"));
    s.env = env(&[]);
    let c = MinerConfig::load(&s).unwrap();
    assert_eq!((c.actual_batch_size, c.wallet.name.as_str()), (3, "from-file"));
    s.config_file = None;
    let c = MinerConfig::load(&s).unwrap();
    assert_eq!((c.actual_batch_size, c.wallet.name.as_str()), (2, "from-default"));
    s.config_dir = None;
    let c = MinerConfig::load(&s).unwrap();
    assert_eq!((c.actual_batch_size, c.wallet.name.as_str(), c.netuid), (8, "default", 3));
    // A configuration directory without default.toml is no layer, not an error.
    s.config_dir = Some(dir.path().join("elsewhere"));
    assert_eq!(MinerConfig::load(&s).unwrap(), defaults());
}

#[test]
fn environment_variable_spelling() {
    let s = ConfigSources {
        env: env(&[
            ("TESSERA__BUCKET", "env-bucket"),
            ("TESSERA__WALLET__NAME", "w1"),
            ("TESSERA__WALLET__HOTKEY", "h1"),
            ("TESSERA__SUBTENSOR__CHAIN_ENDPOINT", "ws://10.0.0.1:9944"),
            ("tessera__netuid", "223"),
            ("TESSERA__REMOTE", "true"),
            ("TESSERA__SYNC_STATE", "1"),
            ("TESSERA__DEVICE", "cuda:1"),
            // Not configuration: a single underscore, other prefixes, empty values.
            ("TESSERA_CONFIG_DIR", "/nowhere"),
            ("TESSERA_BUCKET", "ignored"),
            ("HOME", "/root"),
            ("TESSERA__PROJECT", ""),
        ]),
        ..sources()
    };
    let c = MinerConfig::load(&s).unwrap();
    assert_eq!(c.bucket.as_str(), "env-bucket");
    assert_eq!((c.wallet.name.as_str(), c.wallet.hotkey.as_str()), ("w1", "h1"));
    assert_eq!(c.chain_endpoint(), "ws://10.0.0.1:9944");
    assert_eq!(c.subtensor.network, Network::Finney);
    assert_eq!(c.netuid, 223);
    assert!(c.remote && c.sync_state && !c.debug);
    assert_eq!(c.device, Device::Cuda(1));
    assert_eq!(c.project, "templar", "an empty variable counts as unset");
}

#[test]
fn unknown_keys_are_named_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "c.toml", "bucket = \"my-bucket\"\n[wallet]\nnmae = \"x\"\n");
    let text = err(&ConfigSources { config_file: Some(file.clone()), ..sources() });
    assert!(text.contains("unknown key \"wallet.nmae\""), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("did you mean \"wallet.name\""), "{text}");

    let text = err(&ConfigSources { env: env(&[("TESSERA__BUKCET", "x")]), ..with_bucket() });
    assert!(text.contains("unknown key \"bukcet\"") && text.contains("TESSERA__BUKCET"), "{text}");
    assert!(text.contains("did you mean \"bucket\""), "{text}");

    let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1"), ("frobnicate", "1")]), ..sources() });
    assert!(text.contains("unknown key \"frobnicate\"") && text.contains("--frobnicate"), "{text}");
    assert!(!text.contains("did you mean"), "{text}");

    // A whole unknown table, empty or not, and a kebab-case spelling.
    let file = write(dir.path(), "t.toml", "bucket = \"my-bucket\"\n[walet]\n");
    assert!(err(&ConfigSources { config_file: Some(file), ..sources() }).contains("unknown key \"walet\""));
    let file = write(dir.path(), "k.toml", "bucket = \"my-bucket\"\nactual-batch-size = 2\n");
    let text = err(&ConfigSources { config_file: Some(file), ..sources() });
    assert!(text.contains("\"actual-batch-size\"") && text.contains("did you mean \"actual_batch_size\""), "{text}");

    // A section given a plain value.
    let text = err(&ConfigSources { env: env(&[("TESSERA__WALLET", "x")]), ..with_bucket() });
    assert!(text.contains("for wallet") && text.contains("wallet.name"), "{text}");
}

#[test]
fn bad_values_name_key_value_expectation_and_layer() {
    let dir = tempfile::tempdir().unwrap();
    let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "my-bucket"), ("netuid", "abc")]), ..sources() });
    assert_eq!(text, "invalid value \"abc\" for netuid (command-line flag --netuid): expected an integer 0..=65535");
    let file = write(dir.path(), "n.toml", "netuid = 70000\n");
    let text = err(&ConfigSources { config_file: Some(file.clone()), ..with_bucket() });
    assert!(text.contains("invalid value 70000 for netuid") && text.contains(&file.display().to_string()), "{text}");

    let text = err(&ConfigSources { env: env(&[("TESSERA__ACTUAL_BATCH_SIZE", "0")]), ..with_bucket() });
    assert!(text.contains("invalid value \"0\" for actual_batch_size"), "{text}");
    assert!(text.contains("environment variable TESSERA__ACTUAL_BATCH_SIZE"), "{text}");

    let cases: &[(&str, &str, &str)] = &[
        ("device = \"tpu\"", "for device", "\"cpu\", \"cuda\" or \"cuda:N\""),
        ("remote = \"maybe\"", "for remote", "a boolean"),
        ("remote = 1", "for remote", "a boolean"),
        ("project = 5", "for project", "project name"),
        ("actual_batch_size = 2.5", "for actual_batch_size", "an integer"),
        ("actual_batch_size = -1", "for actual_batch_size", "an integer"),
        ("[subtensor]\nnetwork = \"mainnet\"", "for subtensor.network", "\"finney\""),
        ("[subtensor]\nchain_endpoint = \"http://x:9944\"", "for subtensor.chain_endpoint", "ws://"),
        ("[wallet]\nname = \"a/b\"", "for wallet.name", "without '/'"),
        ("[wallet]\nhotkey = \"\"", "for wallet.hotkey", "non-empty"),
        ("hparams = \"ftp://x/h.json\"", "for hparams", "https://"),
        ("project = [\"a\"]", "for project", "project name"),
    ];
    for (toml, key, expected) in cases {
        let file = write(dir.path(), "case.toml", toml);
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.contains(key) && text.contains(expected) && text.contains("case.toml"), "{toml}: {text}");
    }
}

#[test]
fn bucket_names_follow_the_s3_rules() {
    for ok in ["abc", "my-bucket", "my.bucket.1", "0bucket9", &"a".repeat(63)] {
        assert!(BucketName::parse(ok).is_ok(), "{ok}");
    }
    let bad = [
        ("ab", BucketNameError::Length(2)),
        (&*"a".repeat(64), BucketNameError::Length(64)),
        ("My-bucket", BucketNameError::Char('M')),
        ("my_bucket", BucketNameError::Char('_')),
        ("-bucket", BucketNameError::Edge),
        ("bucket.", BucketNameError::Edge),
        ("my..bucket", BucketNameError::DoubleDot),
        ("192.168.1.1", BucketNameError::IpAddress),
    ];
    for (name, why) in bad {
        assert_eq!(BucketName::parse(name), Err(why), "{name}");
    }
    let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "Bad_Bucket")]), ..sources() });
    assert!(text.contains("invalid value \"Bad_Bucket\" for bucket (command-line flag --bucket)"), "{text}");
    assert!(text.contains("'B' is not allowed"), "{text}");
}

#[test]
fn missing_bucket_says_how_to_set_it() {
    let e = MinerConfig::load(&sources()).unwrap_err();
    assert!(matches!(e, ConfigError::MissingBucket));
    let text = e.to_string();
    // The binary adds its flag (tests/cli.rs); the library names the setting.
    assert!(text.contains("bucket = \"NAME\"") && text.contains("TESSERA__BUCKET"), "{text}");
}

#[test]
fn device_parsing() {
    assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
    assert_eq!(Device::parse("cuda"), Some(Device::Cuda(0)));
    assert_eq!(Device::parse("cuda:3"), Some(Device::Cuda(3)));
    assert_eq!(Device::parse("CUDA:1"), Some(Device::Cuda(1)));
    for bad in ["tpu", "cuda:", "cuda:-1", "cuda:x", "cuda:+1", "cuda:1:2", "", "cuda:99999999999"] {
        assert_eq!(Device::parse(bad), None, "{bad}");
    }
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
}

#[test]
fn test_and_local_force_their_network_and_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file =
        write(dir.path(), "n.toml", "[subtensor]\nnetwork = \"finney\"\nchain_endpoint = \"wss://mine.example:443\"\n");
    let base = ConfigSources { config_file: Some(file), ..sources() };
    let c = MinerConfig::load(&ConfigSources {
        cli_overrides: cli(&[("bucket", "b-1"), ("test", "true")]),
        ..base.clone()
    })
    .unwrap();
    assert_eq!(c.subtensor, SubtensorConfig { network: Network::Test, chain_endpoint: Some(TEST_ENDPOINT.into()) });
    let c = MinerConfig::load(&ConfigSources {
        env: env(&[("TESSERA__LOCAL", "true")]),
        cli_overrides: cli(&[("bucket", "b-1")]),
        ..base.clone()
    })
    .unwrap();
    assert_eq!(c.subtensor, SubtensorConfig { network: Network::Local, chain_endpoint: Some(LOCAL_ENDPOINT.into()) });
    let c = MinerConfig::load(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1")]), ..base }).unwrap();
    assert_eq!(c.chain_endpoint(), "wss://mine.example:443", "an explicit endpoint wins without --test");
    let e = MinerConfig::load(&ConfigSources {
        cli_overrides: cli(&[("bucket", "b-1"), ("test", "true"), ("local", "true")]),
        ..sources()
    })
    .unwrap_err();
    assert!(matches!(e, ConfigError::TestAndLocal), "{e}");
}

#[test]
fn network_names_and_urls_pick_the_endpoint() {
    let load = |net: &str| {
        MinerConfig::load(&ConfigSources {
            cli_overrides: cli(&[("bucket", "b-1"), ("subtensor.network", net)]),
            ..sources()
        })
        .unwrap()
    };
    assert_eq!(load("test").chain_endpoint(), TEST_ENDPOINT);
    assert_eq!(load("local").chain_endpoint(), LOCAL_ENDPOINT);
    assert_eq!(load("finney").chain_endpoint(), FINNEY_ENDPOINT);
    let custom = load("wss://node.example:9944");
    assert_eq!(custom.subtensor.network, Network::Custom("wss://node.example:9944".into()));
    assert_eq!(custom.chain_endpoint(), "wss://node.example:9944");
}

#[test]
fn tilde_expansion() {
    let home = Path::new("/home/op");
    assert_eq!(expand_tilde("~", Some(home)).unwrap(), PathBuf::from("/home/op"));
    assert_eq!(expand_tilde("~/w/x", Some(home)).unwrap(), PathBuf::from("/home/op/w/x"));
    assert_eq!(expand_tilde("/abs/~", None).unwrap(), PathBuf::from("/abs/~"));
    assert_eq!(expand_tilde("rel/x", None).unwrap(), PathBuf::from("rel/x"));
    assert_eq!(expand_tilde("~/x", None), Err(TildeError::NoHome));
    assert_eq!(expand_tilde("~bob/x", Some(home)), Err(TildeError::OtherUser));

    let c = MinerConfig::load(&ConfigSources {
        cli_overrides: cli(&[
            ("bucket", "b-1"),
            ("wallet.path", "~/wallets"),
            ("checkpoint_path", "~/ckpt.bin"),
            ("hparams", "~/hp.json"),
        ]),
        ..sources()
    })
    .unwrap();
    assert_eq!(c.wallet.path, PathBuf::from("/home/op/wallets"));
    assert_eq!(c.checkpoint_path, Some(PathBuf::from("/home/op/ckpt.bin")));
    assert_eq!(c.hparams, HparamsSource::File(PathBuf::from("/home/op/hp.json")));

    // Without HOME, the defaults that start with ~ must be replaced, and the error says which.
    let no_home = ConfigSources { home: None, ..with_bucket() };
    let text = err(&no_home);
    assert!(text.contains("~ in") && text.contains("HOME is not set") && text.contains("built-in default"), "{text}");
    let c = MinerConfig::load(&ConfigSources {
        cli_overrides: cli(&[("bucket", "b-1"), ("wallet.path", "/w"), ("state_dir", "/s")]),
        ..no_home
    })
    .unwrap();
    assert_eq!((c.wallet.path, c.state_dir), (PathBuf::from("/w"), PathBuf::from("/s")));

    let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1"), ("state_dir", "~bob/s")]), ..sources() });
    assert!(text.contains("for state_dir") && text.contains("~user"), "{text}");
}

#[test]
fn config_file_must_exist_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let text = err(&ConfigSources { config_file: Some(missing.clone()), ..with_bucket() });
    assert!(text.contains(&missing.display().to_string()) && text.contains("does not exist"), "{text}");

    let broken = write(dir.path(), "broken.toml", "netuid = 3\nbucket = \n");
    let e = MinerConfig::load(&ConfigSources { config_file: Some(broken), ..with_bucket() }).unwrap_err();
    assert!(matches!(e, ConfigError::FileParse { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("broken.toml") && text.contains("line 2"), "{text}");
}

#[test]
fn secrets_are_redacted_anywhere_in_the_tree() {
    let mut tree: toml::Value = toml::from_str(
        r#"
        bucket = "b"
        max_tokens = 3
        [s3]
        access_key_id = "AKIA"
        secret_access_key = "s3cr3t"
        endpoint = "https://s3.example"
        [wandb]
        api-key = "k"
        [[peers]]
        name = "p"
        password = "pw"
        "#,
    )
    .unwrap();
    redact_secrets(&mut tree);
    let t = &tree;
    assert_eq!(t["s3"]["access_key_id"].as_str(), Some(REDACTED));
    assert_eq!(t["s3"]["secret_access_key"].as_str(), Some(REDACTED));
    assert_eq!(t["s3"]["endpoint"].as_str(), Some("https://s3.example"));
    assert_eq!(t["wandb"]["api-key"].as_str(), Some(REDACTED));
    assert_eq!(t["peers"][0]["password"].as_str(), Some(REDACTED));
    assert_eq!(t["peers"][0]["name"].as_str(), Some("p"));
    assert_eq!(t["bucket"].as_str(), Some("b"));
    // "token" marks a secret even in a harmless name: redaction errs on the safe side.
    assert_eq!(t["max_tokens"].as_str(), Some(REDACTED));
    let printed = toml::to_string(&tree).unwrap();
    assert!(!printed.contains("s3cr3t") && !printed.contains("AKIA") && !printed.contains("pw\""), "{printed}");
}

/// Every `[[miners]]` key but the S3 keys and token in the first entry (printed, those
/// are placeholders that cannot be read back), each different from the top level's (a
/// miner is printed with the keys where it differs), a few in the second.
const EVERY_MINER_KEY: &str = r#"
[[miners]]
name = "alpha"
bucket = "alpha-bucket"
device = "cuda:0"
precision = "bf16-mixed"
attention = "fused"
recompute_activations = false
actual_batch_size = 4
checkpoint_path = "/ckpt/alpha.bin"
baseline = false
random = false
[miners.wallet]
name = "cold-a"
hotkey = "hot-a"
path = "/wallets-a"
[miners.s3]
endpoint = "https://alpha.s3.example.com"
region = "eu-west-1"
profile = "alpha"

[[miners]]
bucket = "beta-bucket"
device = "cuda:1"
[miners.wallet]
hotkey = "hot-b"
"#;

fn every_key_set(dir: &Path) -> ConfigSources {
    ConfigSources {
        config_file: Some(write(dir, "miners.toml", EVERY_MINER_KEY)),
        cli_overrides: cli(&[
            ("actual_batch_size", "2"),
            ("wallet.name", "w"),
            ("wallet.hotkey", "h"),
            ("wallet.path", "/wallets"),
            ("bucket", "my-bucket"),
            ("device", "cuda:1"),
            ("precision", "fp32"),
            ("attention", "naive"),
            ("recompute_activations", "true"),
            ("use_wandb", "true"),
            ("project", "p"),
            ("netuid", "223"),
            ("remote", "true"),
            ("sync_state", "true"),
            ("debug", "true"),
            ("trace", "true"),
            ("random", "true"),
            ("baseline", "true"),
            ("test", "false"),
            ("local", "false"),
            ("autoupdate", "true"),
            ("subtensor.network", "local"),
            ("subtensor.chain_endpoint", "ws://10.1.1.1:9944"),
            ("checkpoint_path", "/ckpt.bin"),
            ("process_name", "Miner1"),
            ("hparams", "https://example.com/hparams.json"),
            ("state_dir", "/state"),
            ("s3.endpoint", "https://s3.example.com:8443"),
            ("s3.region", "eu-central-003"),
            ("s3.profile", "miner"),
            ("runtime.checkpoint_every", "5"),
            ("runtime.download_concurrency", "4"),
            ("runtime.peer_deadline_secs", "20"),
            ("runtime.progress_timeout_secs", "5"),
            ("runtime.peer_failures_before_skip", "2"),
            ("runtime.peer_skip_secs", "120"),
            ("runtime.refresh_secs", "30"),
            ("runtime.max_restarts", "7"),
            ("runtime.restart_period_secs", "600"),
            ("runtime.restart_backoff_ms", "250"),
            ("runtime.restart_backoff_max_ms", "8000"),
            ("runtime.shutdown_timeout_secs", "15"),
            ("runtime.clock_skew_secs", "0"),
            ("runtime.cache_dir", "/cache"),
            ("data.source", "/data/shards"),
            ("data.dataset", "owner/corpus"),
            ("data.synthetic_seed", "42"),
            ("data.pages_per_window", "3"),
        ]),
        // The seed has no S3 flags: keys come from a file or, as here, the environment.
        env: env(S3_KEYS_ENV),
        ..sources()
    }
}

const S3_KEYS_ENV: &[(&str, &str)] = &[
    ("TESSERA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEID"),
    ("TESSERA__S3__SECRET_ACCESS_KEY", "wJalrXUtnFEMIsecretEXAMPLEKEY"),
    ("TESSERA__S3__SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLEtoken"),
];

fn leaf_keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if v.is_table() { leaf_keys(&key, v, out) } else { out.push(key) }
        }
    }
}

#[test]
fn effective_toml_lists_every_key_and_reads_back_as_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = MinerConfig::load(&every_key_set(dir.path())).unwrap();
    let text = c.effective_toml();
    let tree: toml::Value = toml::from_str(&text).unwrap();
    let mut keys = Vec::new();
    leaf_keys("", &tree, &mut keys);
    keys.sort();
    assert_eq!(keys, KEYS, "KEYS, the loader and the printed configuration must agree");
    assert!(text.contains("device = \"cuda:1\"") && text.contains("netuid = 223"), "{text}");
    assert!(text.contains("[[miners]]") && text.contains("source = \"/data/shards\""), "{text}");
    let mut keys = Vec::new();
    leaf_keys("", &tree["miners"][0], &mut keys);
    keys.sort();
    let secrets = ["s3.access_key_id", "s3.secret_access_key", "s3.session_token"];
    let expected: Vec<&str> = MINER_KEYS.iter().copied().filter(|k| !secrets.contains(k)).collect();
    assert_eq!(keys, expected, "MINER_KEYS, the loader and the printed [[miners]] must agree");

    for (_, secret) in S3_KEYS_ENV {
        assert!(!text.contains(secret), "{text}");
    }

    // Printed secrets are placeholders: read back alone they are refused, and with the
    // real keys in the environment the file gives the same configuration again.
    let file = write(dir.path(), "effective.toml", &text);
    let text = err(&ConfigSources { config_file: Some(file.clone()), ..sources() });
    assert!(text.contains("for s3.") && text.contains("placeholder"), "{text}");
    let again =
        MinerConfig::load(&ConfigSources { config_file: Some(file), env: env(S3_KEYS_ENV), ..sources() }).unwrap();
    assert_eq!(again, c);
}

#[test]
fn hparams_settings_need_no_bucket() {
    let s = ConfigSources {
        cli_overrides: cli(&[("hparams", "https://h.example/hp.json"), ("state_dir", "~/st")]),
        ..sources()
    };
    let h = HparamsSettings::load(&s).unwrap();
    assert!(matches!(h.source, HparamsSource::Url(ref u) if u.as_str() == "https://h.example/hp.json"));
    assert_eq!(h.cache_path, PathBuf::from("/home/op/st/hparams-cache.json"));
    let h = HparamsSettings::load(&sources()).unwrap();
    assert_eq!(
        h,
        HparamsSettings {
            source: HparamsSource::BuiltIn,
            cache_path: PathBuf::from("/home/op/.tessera/hparams-cache.json")
        }
    );
    // The rest of the configuration is still checked.
    let text = HparamsSettings::load(&ConfigSources { cli_overrides: cli(&[("netuid", "x")]), ..sources() })
        .unwrap_err()
        .to_string();
    assert!(text.contains("for netuid"), "{text}");
    let c = MinerConfig::load(&with_bucket()).unwrap();
    assert_eq!(c.hparams_settings(), HparamsSettings::load(&sources()).unwrap());
}

/// `config/default.toml` documents every default: as shipped (all commented) it changes
/// nothing, and with every setting uncommented it still gives the built-in defaults.
#[test]
fn shipped_default_toml_documents_the_defaults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let shipped = std::fs::read_to_string(dir.join(DEFAULT_CONFIG_FILE)).unwrap();
    let c = MinerConfig::load(&ConfigSources { config_dir: Some(dir.clone()), ..with_bucket() }).unwrap();
    assert_eq!(c, defaults());

    let uncommented: String = shipped
        .lines()
        .map(|l| if l.starts_with("# ") && !l.starts_with("## ") { &l[2..] } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), DEFAULT_CONFIG_FILE, &uncommented);
    let c = MinerConfig::load(&ConfigSources { config_dir: Some(tmp.path().to_owned()), ..with_bucket() }).unwrap();
    let mut expected = defaults();
    expected.bucket = c.bucket.clone();
    assert_eq!(c, expected, "uncommented default.toml:\n{uncommented}");
    let tree: toml::Value = toml::from_str(&uncommented).unwrap();
    let mut keys = Vec::new();
    leaf_keys("", &tree, &mut keys);
    keys.sort();
    // Keys without a default are documented as examples ("## key = …").
    let examples = [
        "bucket",
        "checkpoint_path",
        "data.dataset",
        "data.pages_per_window",
        "miners",
        "runtime.cache_dir",
        "process_name",
        "s3.access_key_id",
        "s3.endpoint",
        "s3.profile",
        "s3.secret_access_key",
        "s3.session_token",
        "subtensor.chain_endpoint",
    ];
    let documented: Vec<&str> = KEYS.iter().copied().filter(|k| !examples.contains(k)).collect();
    assert_eq!(keys, documented, "default.toml shows every key with a default");
    for key in examples {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let shown = if key == "miners" { "\n## [[miners]]\n".to_owned() } else { format!("\n## {leaf} = ") };
        assert!(shipped.contains(&shown), "{key} is documented");
    }

    // The [[miners]] example, at the end of the file, is a working configuration.
    let example = &shipped[shipped.find("\n## [[miners]]\n").unwrap()..];
    let example: String =
        example.lines().map(|l| l.strip_prefix("##").unwrap_or(l).trim_start()).collect::<Vec<_>>().join("\n");
    let file = write(tmp.path(), "example.toml", &example);
    let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..sources() }).unwrap();
    let instances = c.instances();
    assert_eq!(instances.len(), 2, "{example}");
    assert_eq!(
        instances.iter().map(|i| i.config.device).collect::<Vec<_>>(),
        [Device::Cuda(0), Device::Cuda(1)],
        "{example}"
    );
    assert!(instances.iter().all(|i| i.config.runtime.cache_dir == c.runtime.cache_dir), "{example}");
}

fn s3_of(s: &ConfigSources) -> S3Config {
    MinerConfig::load(s).unwrap().s3
}

fn with_bucket_and(pairs: &[(&str, &str)]) -> ConfigSources {
    ConfigSources { env: env(pairs), ..with_bucket() }
}

#[test]
fn s3_defaults_are_aws_in_us_east_1_with_the_usual_credentials() {
    let s3 = s3_of(&with_bucket());
    assert_eq!(s3, S3Config { region: Some("us-east-1".into()), ..S3Config::default() });
    assert_eq!((s3.endpoint.as_ref(), s3.region()), (None, "us-east-1"));
    assert_eq!(s3.credentials(), CredentialSource::Environment { profile: None });
    let text = MinerConfig::load(&with_bucket()).unwrap().effective_toml();
    let tree: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        tree["s3"].as_table().map(|t| t.keys().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["region"]),
        "{text}"
    );
}

#[test]
fn s3_settings_come_from_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "s3.toml",
        "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"garage\"\nprofile = \"tessera\"\n",
    );
    let s3 = s3_of(&ConfigSources { config_file: Some(file.clone()), ..with_bucket() });
    assert_eq!(s3.endpoint.as_ref().map(Endpoint::as_str), Some("http://127.0.0.1:9000/"));
    assert_eq!((s3.region(), s3.profile.as_deref().map(String::as_str)), ("garage", Some("tessera")));
    assert_eq!(s3.credentials(), CredentialSource::Environment { profile: Some("tessera".into()) });

    let s3 = s3_of(&ConfigSources {
        config_file: Some(file),
        env: env(&[
            ("TESSERA__S3__ENDPOINT", "https://s3.example.com:8443/"),
            ("TESSERA__S3__REGION", "auto"),
            ("TESSERA__S3__ACCESS_KEY_ID", "AKID"),
            ("TESSERA__S3__SECRET_ACCESS_KEY", "s3cr3t"),
            ("tessera__s3__session_token", "tok"),
            ("TESSERA__S3__PROFILE", ""),
        ]),
        ..with_bucket()
    });
    assert_eq!(s3.endpoint.as_ref().map(Endpoint::as_str), Some("https://s3.example.com:8443/"));
    assert_eq!(s3.region(), "auto", "the environment beats the file");
    assert_eq!(s3.profile.as_deref().map(String::as_str), Some("tessera"), "an empty variable counts as unset");
    assert_eq!(
        s3.credentials(),
        CredentialSource::Static(AccessKeys {
            access_key: "AKID".into(),
            secret_key: "s3cr3t".into(),
            session_token: Some("tok".into()),
        })
    );

    for ok in ["https://S3.Example.com", "http://[::1]:9000", "https://10.0.0.1:443/", " https://s3.example.com "] {
        assert!(s3_of(&with_bucket_and(&[("TESSERA__S3__ENDPOINT", ok)])).endpoint.is_some(), "{ok}");
    }
}

#[test]
fn s3_endpoint_errors_name_the_key_the_value_and_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("s3.example.com", "not a URL"),
        ("ftp://s3.example.com", "the scheme is \"ftp\""),
        ("s3://my-bucket", "the scheme is \"s3\""),
        ("https://", "not a URL"),
        ("https://s3.example.com/my-bucket", "the path \"/my-bucket\""),
        ("https://s3.example.com//", "the path \"//\""),
        ("https://s3.example.com?x-id=1", "query or fragment"),
        ("https://s3.example.com/#top", "query or fragment"),
        ("https://AKID@s3.example.com", "user name or password"),
        ("https://s3.exa\tmple.com", "contains '\\t'"),
    ];
    for (value, why) in cases {
        let text = err(&with_bucket_and(&[("TESSERA__S3__ENDPOINT", value)]));
        assert!(text.starts_with(&format!("invalid value {value:?} for s3.endpoint")), "{value}: {text}");
        assert!(text.contains("environment variable TESSERA__S3__ENDPOINT"), "{value}: {text}");
        assert!(text.contains("http:// or https:// URL") && text.contains(why), "{value}: {text}");
    }
    // A password in the URL is not repeated in the message.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "e.toml", "[s3]\nendpoint = \"https://AKID:hunter2@s3.example.com\"\n");
    let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
    assert!(text.contains("\"https://AKID:<redacted>@s3.example.com\" for s3.endpoint"), "{text}");
    assert!(text.contains("e.toml") && !text.contains("hunter2"), "{text}");
}

#[test]
fn s3_region_and_profile_errors_name_the_key_and_value() {
    for bad in ["us east 1", "US-EAST-1", "eu_west_1", "région", &"a".repeat(65)] {
        let text = err(&with_bucket_and(&[("TESSERA__S3__REGION", bad)]));
        assert!(text.starts_with(&format!("invalid value {bad:?} for s3.region")), "{text}");
        assert!(text.contains("TESSERA__S3__REGION") && text.contains("a region name"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "r.toml", "[s3]\nregion = \"\"\n");
    let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
    assert!(text.starts_with("invalid value \"\" for s3.region") && text.contains("r.toml"), "{text}");
    let file = write(dir.path(), "p.toml", "[s3]\nprofile = 7\n");
    let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
    assert!(text.starts_with("invalid value 7 for s3.profile") && text.contains("profile name"), "{text}");

    // A section given a plain value, and a typo in the section.
    let text = err(&with_bucket_and(&[("TESSERA__S3", "x")]));
    assert!(text.contains("for s3") && text.contains("s3.endpoint, s3.profile"), "{text}");
    let text = err(&with_bucket_and(&[("TESSERA__S3__ENDPIONT", "https://s3.example.com")]));
    assert!(text.contains("unknown key \"s3.endpiont\"") && text.contains("did you mean \"s3.endpoint\""), "{text}");
}

#[test]
fn s3_keys_must_be_given_together() {
    let text = err(&with_bucket_and(&[("TESSERA__S3__ACCESS_KEY_ID", "AKID")]));
    assert!(text.starts_with("s3.access_key_id is set (environment variable TESSERA__S3__ACCESS_KEY_ID)"), "{text}");
    assert!(text.contains("but s3.secret_access_key is not") && text.contains("must be given together"), "{text}");
    assert!(!text.contains("AKID"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "k.toml", "[s3]\nsecret_access_key = \"s3cr3t\"\n");
    let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
    assert!(text.starts_with("s3.secret_access_key is set (config file") && text.contains("k.toml"), "{text}");
    assert!(text.contains("but s3.access_key_id is not") && text.contains("must be given together"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");

    // A session token needs both keys.
    let e = MinerConfig::load(&with_bucket_and(&[("TESSERA__S3__SESSION_TOKEN", "tok")])).unwrap_err();
    assert!(matches!(e, ConfigError::S3TokenWithoutKeys { .. }), "{e}");
    let text = e.to_string();
    assert!(text.starts_with("s3.session_token is set (environment variable TESSERA__S3__SESSION_TOKEN)"), "{text}");
    assert!(text.contains("without s3.access_key_id and s3.secret_access_key") && !text.contains("tok\""), "{text}");
    let e = MinerConfig::load(&with_bucket_and(&[
        ("TESSERA__S3__SESSION_TOKEN", "tok"),
        ("TESSERA__S3__ACCESS_KEY_ID", "AKID"),
    ]))
    .unwrap_err();
    assert!(matches!(e, ConfigError::S3UnpairedKey { given: "s3.access_key_id", .. }), "{e}");

    let s3 = s3_of(&with_bucket_and(&[
        ("TESSERA__S3__ACCESS_KEY_ID", "AKID"),
        ("TESSERA__S3__SECRET_ACCESS_KEY", "s3cr3t"),
        ("TESSERA__S3__PROFILE", "unused"),
    ]));
    assert_eq!(s3.credentials(), CredentialSource::Static(AccessKeys::new("AKID", "s3cr3t")));
}

#[test]
fn s3_secrets_are_redacted_in_effective_toml_debug_and_errors() {
    let s = with_bucket_and(&[
        ("TESSERA__S3__ENDPOINT", "https://s3.example.com"),
        ("TESSERA__S3__REGION", "eu-west-1"),
        ("TESSERA__S3__PROFILE", "miner"),
        ("TESSERA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEID"),
        ("TESSERA__S3__SECRET_ACCESS_KEY", "wJalrXUtnFEMIsecret"),
        ("TESSERA__S3__SESSION_TOKEN", "FwoGZXIvtoken"),
    ]);
    let c = MinerConfig::load(&s).unwrap();
    let text = c.effective_toml();
    let tree: toml::Value = toml::from_str(&text).unwrap();
    let s3 = &tree["s3"];
    for key in ["access_key_id", "secret_access_key", "session_token"] {
        assert_eq!(s3[key].as_str(), Some(REDACTED), "{key}: {text}");
    }
    assert_eq!(s3["endpoint"].as_str(), Some("https://s3.example.com/"));
    assert_eq!(s3["region"].as_str(), Some("eu-west-1"));
    assert_eq!(s3["profile"].as_str(), Some("miner"));
    let debug = format!("{c:?}");
    for shown in [&text, &debug] {
        for secret in ["AKIAEXAMPLEID", "wJalrXUtnFEMIsecret", "FwoGZXIvtoken"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    assert!(debug.contains("https://s3.example.com/") && debug.contains(REDACTED), "{debug}");

    // Values of secret keys are not repeated in errors either.
    let text = err(&with_bucket_and(&[
        ("TESSERA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEID"),
        ("TESSERA__S3__SECRET_ACCESS_KEY", "wJalrXUtn secret"),
    ]));
    assert_eq!(
        text,
        "invalid value <redacted> for s3.secret_access_key (environment variable \
         TESSERA__S3__SECRET_ACCESS_KEY): expected a key or token without spaces"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "t.toml", "[s3]\nsession_token = 12345\n");
    let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
    assert!(text.starts_with("invalid value <redacted> for s3.session_token") && !text.contains("12345"), "{text}");
}

#[test]
fn runtime_and_data_defaults_helpers_and_spellings() {
    let c = MinerConfig::load(&with_bucket()).unwrap();
    let rt = &c.runtime;
    assert_eq!(
        *rt,
        RuntimeConfig { cache_dir: PathBuf::from("/home/op/.tessera/slice-cache"), ..RuntimeConfig::default() }
    );
    assert_eq!(c.data, defaults().data);
    assert_eq!(
        (rt.peer_deadline, rt.progress_timeout, rt.peer_skip, rt.refresh_period),
        (Duration::from_secs(30), Duration::from_secs(10), Duration::from_secs(300), Duration::from_secs(60))
    );
    assert_eq!((rt.restart_period, rt.shutdown_timeout), (Duration::from_secs(300), Duration::from_secs(30)));
    assert_eq!(rt.clock_skew, Duration::from_secs(30));
    assert_eq!((rt.restart_backoff, rt.restart_backoff_max), (Duration::from_millis(500), Duration::from_secs(30)));
    let delays: Vec<u128> =
        [0, 1, 2, 5, 6, 63, 64, u32::MAX].iter().map(|n| rt.restart_delay(*n).as_millis()).collect();
    assert_eq!(delays, [500, 1000, 2000, 16_000, 30_000, 30_000, 30_000, 30_000]);

    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "rt.toml",
        "state_dir = \"/st\"\n[runtime]\ncheckpoint_every = 3\nclock_skew_secs = 0\n\
         [data]\nsource = \"Synthetic\"\nsynthetic_seed = 7\npages_per_window = 2\n",
    );
    let c = MinerConfig::load(&ConfigSources {
        config_file: Some(file),
        env: env(&[("TESSERA__RUNTIME__DOWNLOAD_CONCURRENCY", "2"), ("tessera__data__dataset", "me/text")]),
        ..with_bucket()
    })
    .unwrap();
    assert_eq!((c.runtime.checkpoint_every, c.runtime.clock_skew.as_secs(), c.runtime.download_concurrency), (3, 0, 2));
    assert_eq!(c.runtime.cache_dir, PathBuf::from("/st/slice-cache"), "the cache follows state_dir");
    assert_eq!(
        c.data,
        DataConfig {
            source: DataSourceSpec::Synthetic,
            dataset: Some("me/text".into()),
            synthetic_seed: 7,
            pages_per_window: Some(2)
        }
    );
    let c = MinerConfig::load(&with_bucket_and(&[
        ("TESSERA__RUNTIME__CACHE_DIR", "~/cache"),
        ("TESSERA__DATA__SOURCE", "~/shards"),
    ]))
    .unwrap();
    assert_eq!(c.runtime.cache_dir, PathBuf::from("/home/op/cache"));
    assert_eq!(c.data.source, DataSourceSpec::Local(PathBuf::from("/home/op/shards")));
    assert_eq!(DataSourceSpec::parse(" HuggingFace "), Some(DataSourceSpec::HuggingFace));
    assert_eq!(DataSourceSpec::parse("  "), None);
    // A relative path spelled like a keyword is printed so that it reads back as a path.
    let odd = DataSourceSpec::Local(PathBuf::from("synthetic"));
    assert_eq!(odd.to_string(), "./synthetic");
    assert!(matches!(DataSourceSpec::parse(&odd.to_string()), Some(DataSourceSpec::Local(_))));
}

#[test]
fn runtime_and_data_errors_name_key_value_expectation_and_layer() {
    let seconds = format!("a number of seconds, an integer 1..={}", i64::MAX);
    let cases: &[(&str, &str, &str)] = &[
        ("TESSERA__RUNTIME__CHECKPOINT_EVERY", "0", "a number of windows, an integer 1..=9223372036854775807"),
        ("TESSERA__RUNTIME__DOWNLOAD_CONCURRENCY", "0", "an integer 1..=4294967295"),
        ("TESSERA__RUNTIME__DOWNLOAD_CONCURRENCY", "4294967296", "an integer 1..=4294967295"),
        ("TESSERA__RUNTIME__PEER_DEADLINE_SECS", "0", &seconds),
        ("TESSERA__RUNTIME__PROGRESS_TIMEOUT_SECS", "-1", &seconds),
        ("TESSERA__RUNTIME__PEER_FAILURES_BEFORE_SKIP", "0", "an integer 1..=4294967295"),
        ("TESSERA__RUNTIME__PEER_SKIP_SECS", "x", &seconds),
        ("TESSERA__RUNTIME__REFRESH_SECS", "0", &seconds),
        ("TESSERA__RUNTIME__MAX_RESTARTS", "0", "an integer 1..=4294967295"),
        ("TESSERA__RUNTIME__RESTART_PERIOD_SECS", "0", &seconds),
        ("TESSERA__RUNTIME__RESTART_BACKOFF_MS", "0", "a number of milliseconds, an integer 1..="),
        ("TESSERA__RUNTIME__RESTART_BACKOFF_MAX_MS", "0", "a number of milliseconds, an integer 1..="),
        ("TESSERA__RUNTIME__SHUTDOWN_TIMEOUT_SECS", "0", &seconds),
        ("TESSERA__RUNTIME__SHUTDOWN_TIMEOUT_SECS", "9223372036854775808", &seconds),
        ("TESSERA__RUNTIME__CLOCK_SKEW_SECS", "-5", "a number of seconds, an integer 0..=9223372036854775807"),
        ("TESSERA__DATA__SYNTHETIC_SEED", "-1", "a seed, an integer 0..="),
        ("TESSERA__DATA__PAGES_PER_WINDOW", "0", "an integer 1..=4294967295"),
        ("TESSERA__DATA__DATASET", "a b", "a Hugging Face dataset name without spaces"),
    ];
    for (var, value, expected) in cases {
        let key = var.trim_start_matches("TESSERA__").to_ascii_lowercase().replace("__", ".");
        let text = err(&with_bucket_and(&[(var, value)]));
        assert_eq!(
            text.split(": expected ").next().unwrap(),
            format!("invalid value {value:?} for {key} (environment variable {var})"),
            "{text}"
        );
        assert!(text.contains(expected), "{var}={value}: {text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file_cases: &[(&str, &str, &str)] = &[
        ("[runtime]\ncheckpoint_every = 1.5", "invalid value 1.5 for runtime.checkpoint_every", "an integer"),
        ("[runtime]\ncache_dir = \"\"", "invalid value \"\" for runtime.cache_dir", "a non-empty path"),
        ("[runtime]\ncache_dir = \"~bob/c\"", "invalid value \"~bob/c\" for runtime.cache_dir", "~user"),
        ("[data]\nsource = \"\"", "invalid value \"\" for data.source", "\"huggingface\", \"synthetic\" or the path"),
        ("[data]\nsource = 3", "invalid value 3 for data.source", "jsonl/txt/parquet"),
        ("runtime = 3", "invalid value 3 for runtime", "a table with keys runtime.allow_private_endpoints, "),
        ("[data]\nsorce = \"synthetic\"", "unknown key \"data.sorce\"", "did you mean \"data.source\""),
        ("[runtime]\nrefresh_sec = 3", "unknown key \"runtime.refresh_sec\"", "did you mean \"runtime.refresh_secs\""),
    ];
    for (toml, start, expected) in file_cases {
        let file = write(dir.path(), "case.toml", toml);
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.starts_with(start) && text.contains(expected) && text.contains("case.toml"), "{toml}: {text}");
    }
}

#[test]
fn restart_backoff_max_is_at_least_the_first_delay() {
    let c = MinerConfig::load(&with_bucket_and(&[
        ("TESSERA__RUNTIME__RESTART_BACKOFF_MS", "700"),
        ("TESSERA__RUNTIME__RESTART_BACKOFF_MAX_MS", "700"),
    ]))
    .unwrap();
    assert_eq!(c.runtime.restart_delay(3), Duration::from_millis(700));
    let text = err(&with_bucket_and(&[("TESSERA__RUNTIME__RESTART_BACKOFF_MS", "60000")]));
    assert_eq!(
        text,
        "invalid value 30000 for runtime.restart_backoff_max_ms (built-in default): expected a number of \
         milliseconds at least runtime.restart_backoff_ms (60000, environment variable \
         TESSERA__RUNTIME__RESTART_BACKOFF_MS)"
    );
}

/// Two miners on two GPUs, sharing the top-level settings and the slice cache.
const TWO_MINERS: &str = r#"
state_dir = "~/st"
bucket = "shared-bucket"
actual_batch_size = 6
checkpoint_path = "/ckpt/top.bin"
[wallet]
name = "cold"
[s3]
endpoint = "https://s3.example.com"
access_key_id = "AKIATOP"
secret_access_key = "top-secret"

[[miners]]
name = "gpu0"
device = "cuda:0"
[miners.wallet]
hotkey = "h0"

[[miners]]
device = "cuda:1"
bucket = "other-bucket"
actual_batch_size = 2
checkpoint_path = "~/ckpt/h1.bin"
random = true
[miners.wallet]
hotkey = "h1"
path = "~/w1"
[miners.s3]
region = "eu-west-1"
access_key_id = "AKIAONE"
secret_access_key = "one-secret"
"#;

#[test]
fn two_miners_make_two_instances_sharing_the_slice_cache() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "two.toml", TWO_MINERS);
    let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..sources() }).unwrap();
    assert_eq!(c.miners.len(), 2);
    assert_eq!(c.miners[1].config.wallet.path, PathBuf::from("/home/op/w1"), "entry paths are ~-expanded");
    let [a, b] = <[MinerInstance; 2]>::try_from(c.instances()).unwrap();
    assert_eq!((a.name.as_str(), b.name.as_str()), ("gpu0", "h1"), "the name defaults to the hotkey");
    assert_eq!(a.state_dir, PathBuf::from("/home/op/st/miners/gpu0"));
    assert_eq!(b.state_dir, PathBuf::from("/home/op/st/miners/h1"));
    assert_eq!((&a.config.state_dir, &b.config.state_dir), (&a.state_dir, &b.state_dir));
    for i in [&a, &b] {
        assert_eq!(i.config.runtime.cache_dir, PathBuf::from("/home/op/st/slice-cache"), "one shared cache");
        assert!(i.config.miners.is_empty());
        assert_eq!(i.config.wallet.name.as_str(), "cold");
    }

    let top = MinerConfig { miners: Vec::new(), ..c.clone() };
    let mut expected = top.clone();
    expected.wallet.hotkey = "h0".into();
    expected.device = Device::Cuda(0);
    expected.state_dir = a.state_dir.clone();
    assert_eq!(a.config, expected, "the first entry changes only its keys");

    assert_eq!(b.config.device, Device::Cuda(1));
    assert_eq!((b.config.bucket.as_str(), b.config.actual_batch_size), ("other-bucket", 2));
    assert_eq!(b.config.checkpoint_path, Some(PathBuf::from("/home/op/ckpt/h1.bin")));
    assert_eq!(a.config.checkpoint_path, Some(PathBuf::from("/ckpt/top.bin")));
    assert!(b.config.random && !a.config.random);
    assert_eq!(b.config.wallet.path, PathBuf::from("/home/op/w1"));
    assert_eq!(
        b.config.s3,
        S3Config {
            endpoint: top.s3.endpoint.clone(),
            region: Some("eu-west-1".into()),
            access_key_id: Some("AKIAONE".into()),
            secret_access_key: Some("one-secret".into()),
            session_token: None,
            profile: None,
        },
        "the entry's [s3] keys override the top-level ones key by key"
    );
    assert_eq!(a.config.s3, top.s3);

    // Printed, the entries are [[miners]] tables with their secrets hidden, and read back
    // (with the secrets put back) they give the same configuration.
    let text = c.effective_toml();
    for secret in ["AKIATOP", "top-secret", "AKIAONE", "one-secret"] {
        assert!(!text.contains(secret), "{text}");
    }
    let debug = format!("{c:?}");
    assert!(!debug.contains("one-secret") && !debug.contains("AKIAONE"), "{debug}");
    let tree: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(tree["miners"][1]["s3"]["secret_access_key"].as_str(), Some(REDACTED), "{text}");
    assert_eq!(tree["miners"][0]["name"].as_str(), Some("gpu0"), "{text}");
    // Each placeholder is refused where it stands: the top level's first, then the entry's.
    let mut tree = tree;
    for (table, id, secret) in [("s3", "AKIATOP", "top-secret"), ("miners", "AKIAONE", "one-secret")] {
        let printed = write(dir.path(), "printed.toml", &toml::to_string(&tree).unwrap());
        let e = err(&ConfigSources { config_file: Some(printed), ..sources() });
        let key = if table == "miners" { "miners[1].s3.access_key_id" } else { "s3.access_key_id" };
        assert!(e.starts_with(&format!("invalid value <redacted> for {key} ")) && e.contains("placeholder"), "{e}");
        let s3 = if table == "miners" { &mut tree["miners"][1]["s3"] } else { &mut tree["s3"] };
        s3["access_key_id"] = toml::Value::String(id.into());
        s3["secret_access_key"] = toml::Value::String(secret.into());
    }
    let restored = toml::to_string(&tree).unwrap();
    let restored = write(dir.path(), "restored.toml", &restored);
    let again = MinerConfig::load(&ConfigSources { config_file: Some(restored), ..sources() }).unwrap();
    assert_eq!(again, c);
}

#[test]
fn without_miners_one_instance_is_the_configuration() {
    let c = MinerConfig::load(&with_bucket()).unwrap();
    assert_eq!(
        c.instances(),
        [MinerInstance { name: "default".into(), config: c.clone(), state_dir: c.state_dir.clone() }]
    );
    assert!(!c.effective_toml().contains("miners"), "{}", c.effective_toml());
    // An empty array is no entries.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "none.toml", "miners = []\n");
    assert_eq!(MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() }).unwrap(), c);
}

#[test]
fn miners_may_each_set_the_bucket_instead_of_the_top_level() {
    let dir = tempfile::tempdir().unwrap();
    let both = "[[miners]]\nbucket = \"bucket-a\"\nwallet.hotkey = \"a\"\n\
                [[miners]]\nbucket = \"bucket-b\"\nwallet.hotkey = \"b\"\n";
    let file = write(dir.path(), "both.toml", both);
    let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..sources() }).unwrap();
    assert_eq!(c.bucket.as_str(), "bucket-a", "the first entry's stands in for the top level");
    let buckets: Vec<String> = c.instances().iter().map(|i| i.config.bucket.to_string()).collect();
    assert_eq!(buckets, ["bucket-a", "bucket-b"]);

    let one = "[[miners]]\nbucket = \"bucket-a\"\nwallet.hotkey = \"a\"\n[[miners]]\nwallet.hotkey = \"b\"\n";
    let file = write(dir.path(), "one.toml", one);
    let e = MinerConfig::load(&ConfigSources { config_file: Some(file.clone()), ..sources() }).unwrap_err();
    assert!(matches!(e, ConfigError::MinerWithoutBucket { index: 1, .. }), "{e}");
    let text = e.to_string();
    assert!(text.starts_with("miners[1] (config file ") && text.contains("one.toml"), "{text}");
    assert!(text.contains("sets no bucket and there is no top-level bucket"), "{text}");
    // With a top-level bucket, an entry without one uses it.
    let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() }).unwrap();
    assert_eq!(c.instances()[1].config.bucket.as_str(), "my-bucket");
}

#[test]
fn miners_must_not_share_a_name_a_wallet_or_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let load = |toml: &str| {
        let file = write(dir.path(), "dup.toml", toml);
        MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() })
    };
    let text =
        load("[[miners]]\nname = \"m\"\nwallet.hotkey = \"a\"\n[[miners]]\nname = \"M\"\nwallet.hotkey = \"b\"\n")
            .unwrap_err()
            .to_string();
    assert!(text.starts_with("miners[0] and miners[1] (config file ") && text.contains("dup.toml"), "{text}");
    assert!(text.contains("have the same name \"M\": each miner of a process needs its own"), "{text}");

    let text = load(
        "[[miners]]\nname = \"a\"\nwallet.hotkey = \"h\"\n[[miners]]\nname = \"b\"\n\
         [[miners]]\nname = \"c\"\nwallet.hotkey = \"h\"\nwallet.path = \"~/.bittensor/wallets\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        text.starts_with("miners[0] and miners[2]")
            && text.contains("same wallet (name \"default\", hotkey \"h\", path /home/op/.bittensor/wallets)"),
        "{text}"
    );
    // Two entries that set no hotkey both use the top-level wallet.
    let text = load("[[miners]]\nname = \"a\"\n[[miners]]\nname = \"b\"\n").unwrap_err().to_string();
    assert!(text.contains("miners[0] and miners[1]") && text.contains("same wallet"), "{text}");

    let text =
        load("checkpoint_path = \"/c.bin\"\n[[miners]]\nwallet.hotkey = \"a\"\n[[miners]]\nwallet.hotkey = \"b\"\n")
            .unwrap_err()
            .to_string();
    assert!(text.contains("miners[0] and miners[1]") && text.contains("same checkpoint_path /c.bin"), "{text}");

    // Two miners on one GPU are allowed.
    let c = load("[[miners]]\nwallet.hotkey = \"a\"\ndevice = \"cuda:0\"\n[[miners]]\nwallet.hotkey = \"b\"\ndevice = \"cuda\"\n")
        .unwrap();
    assert_eq!(c.instances().len(), 2);

    // A default name must be a valid name.
    let text = load("[[miners]]\nwallet.hotkey = \"hot.key\"\n").unwrap_err().to_string();
    assert!(
        text.starts_with("invalid value \"hot.key\" (the default: its wallet.hotkey) for miners[0].name")
            && text.contains("set name"),
        "{text}"
    );
}

#[test]
fn miner_entries_are_checked_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str, start: &str, rest: &str| {
        let file = write(dir.path(), "m.toml", toml);
        let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
        assert!(text.starts_with(start) && text.contains(rest) && text.contains("m.toml"), "{toml}: {text}");
    };
    check(
        "[[miners]]\nbukcet = \"b-1\"\n",
        "unknown key \"miners[0].bukcet\" (config file ",
        "did you mean \"bucket\"?",
    );
    check(
        "[[miners]]\nname = \"a\"\n[[miners]]\nname = \"b\"\nfoo = 1\n",
        "unknown key \"miners[1].foo\" (config file ",
        "",
    );
    check("[[miners]]\nnetuid = 1\n", "unknown key \"miners[0].netuid\"", "");
    check(
        "[[miners]]\n[miners.wallet]\nhotky = \"h\"\n",
        "unknown key \"miners[0].wallet.hotky\"",
        "\"wallet.hotkey\"",
    );
    check("[[miners]]\n[miners.s3]\nregoin = \"x\"\n", "unknown key \"miners[0].s3.regoin\"", "\"s3.region\"");
    check(
        "[[miners]]\nbucket = \"Bad_Bucket\"\n",
        "invalid value \"Bad_Bucket\" for miners[0].bucket",
        "'B' is not allowed",
    );
    check("[[miners]]\ndevice = \"tpu\"\n", "invalid value \"tpu\" for miners[0].device", "\"cuda:N\"");
    check("[[miners]]\nactual_batch_size = 0\n", "invalid value 0 for miners[0].actual_batch_size", "1..=4294967295");
    check("[[miners]]\nrandom = \"maybe\"\n", "invalid value \"maybe\" for miners[0].random", "a boolean");
    check("[[miners]]\nname = \"a b\"\n", "invalid value \"a b\" for miners[0].name", MinerName::EXPECTED);
    check(&format!("[[miners]]\nname = \"{}\"\n", "n".repeat(33)), "invalid value", "for miners[0].name");
    check("[[miners]]\nwallet.name = \"a/b\"\n", "invalid value \"a/b\" for miners[0].wallet.name", "without '/'");
    check(
        "[[miners]]\ncheckpoint_path = \"~bob/c\"\n",
        "invalid value \"~bob/c\" for miners[0].checkpoint_path",
        "~user",
    );
    check("[[miners]]\nwallet = 3\n", "invalid value 3 for miners[0].wallet", "miners[0].wallet.hotkey");
    check(
        "[[miners]]\n[miners.s3]\nendpoint = \"ftp://x\"\n",
        "invalid value \"ftp://x\" for miners[0].s3.endpoint",
        "the scheme is \"ftp\"",
    );
    check(
        "[[miners]]\n[miners.s3]\nsecret_access_key = \"s3cr3t\"\n",
        "miners[0]: s3.secret_access_key is set (config file ",
        "but s3.access_key_id is not",
    );
    check(
        "[miners]\nbucket = \"b-1\"\n",
        "invalid value (a table) for miners",
        "an array of tables: one [[miners]] table",
    );
    check("miners = [1]\n", "invalid value 1 for miners[0]", "a table with keys miners[0].actual_batch_size");
    check("[[minerz]]\nbucket = \"b-1\"\n", "unknown key \"minerz\"", "did you mean \"miners\"");

    // Without HOME, a ~ path in an entry names the entry's key.
    let file = write(dir.path(), "h.toml", "[[miners]]\nwallet.path = \"~/w\"\n");
    let text = err(&ConfigSources {
        config_file: Some(file),
        home: None,
        cli_overrides: cli(&[("bucket", "b-1"), ("wallet.path", "/w"), ("state_dir", "/s")]),
        ..sources()
    });
    assert!(text.starts_with("invalid value \"~/w\" for miners[0].wallet.path") && text.contains("HOME"), "{text}");
}

#[test]
fn a_higher_layer_replaces_the_miners_of_a_lower_one() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        DEFAULT_CONFIG_FILE,
        "[[miners]]\nname = \"a\"\nwallet.hotkey = \"a\"\n[[miners]]\nname = \"b\"\nwallet.hotkey = \"b\"\n",
    );
    let file = write(dir.path(), "mine.toml", "[[miners]]\nname = \"c\"\nwallet.hotkey = \"c\"\n");
    let s = ConfigSources { config_dir: Some(dir.path().to_owned()), ..with_bucket() };
    let names = |s: &ConfigSources| -> Vec<String> {
        MinerConfig::load(s).unwrap().instances().into_iter().map(|i| i.name).collect()
    };
    assert_eq!(names(&s), ["a", "b"]);
    assert_eq!(names(&ConfigSources { config_file: Some(file), ..s }), ["c"]);
}

#[test]
fn compute_options_are_settings_with_per_miner_overrides() {
    let c = MinerConfig::load(&with_bucket()).unwrap();
    assert_eq!(c.compute(), ComputeOptions::default());
    let c = MinerConfig::load(&ConfigSources {
        env: env(&[("TESSERA__PRECISION", "bf16-mixed"), ("TESSERA__RECOMPUTE_ACTIVATIONS", "true")]),
        cli_overrides: cli(&[("bucket", "my-bucket"), ("attention", "fused")]),
        ..sources()
    })
    .unwrap();
    let expected = ComputeOptions {
        precision: Precision::Bf16Mixed,
        attention: AttentionKernel::Fused,
        recompute_activations: true,
    };
    assert_eq!(c.compute(), expected);

    let text = err(&with_bucket_and(&[("TESSERA__PRECISION", "fp16")]));
    assert_eq!(
        text,
        "invalid value \"fp16\" for precision (environment variable TESSERA__PRECISION): expected \"auto\", \
         \"bf16-mixed\" or \"fp32\""
    );
    let text = err(&ConfigSources { cli_overrides: cli(&[("bucket", "b-1"), ("attention", "flash")]), ..sources() });
    assert!(text.starts_with("invalid value \"flash\" for attention (command-line flag --attention)"), "{text}");
    assert!(text.contains("\"auto\", \"naive\" or \"fused\""), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let toml = "[[miners]]\nwallet.hotkey = \"a\"\nprecision = \"fp32\"\n[[miners]]\nwallet.hotkey = \"b\"\n";
    let file = write(dir.path(), "m.toml", toml);
    let c = MinerConfig::load(&ConfigSources { config_file: Some(file), ..with_bucket() }).unwrap();
    let precisions: Vec<Precision> = c.instances().iter().map(|i| i.config.precision).collect();
    assert_eq!(precisions, [Precision::Fp32, Precision::Auto]);
    let file = write(dir.path(), "bad.toml", "[[miners]]\nattention = 3\n");
    let text = err(&ConfigSources { config_file: Some(file), ..with_bucket() });
    assert!(text.starts_with("invalid value 3 for miners[0].attention"), "{text}");
}

#[test]
fn files_are_typed_while_variables_and_flags_are_text() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, start) in [
        ("netuid = \"3\"", "invalid value \"3\" for netuid (config file "),
        ("remote = 1", "invalid value 1 for remote (config file "),
        ("remote = \"yes\"", "invalid value \"yes\" for remote (config file "),
        ("[data]\npages_per_window = \"2\"", "invalid value \"2\" for data.pages_per_window (config file "),
    ] {
        let file = write(dir.path(), "typed.toml", toml);
        let text = err(&ConfigSources { config_file: Some(file.clone()), ..with_bucket() });
        assert!(text.starts_with(start) && text.contains("typed.toml"), "{toml}: {text}");
        // A value a higher layer replaces is not read.
        let s = ConfigSources { config_file: Some(file), env: env(&[("TESSERA__NETUID", "4")]), ..with_bucket() };
        if toml.starts_with("netuid") {
            assert_eq!(MinerConfig::load(&s).unwrap().netuid, 4);
        }
    }
    let c = MinerConfig::load(&with_bucket_and(&[
        ("TESSERA__REMOTE", "yes"),
        ("TESSERA__DATA__PAGES_PER_WINDOW", "2"),
        ("TESSERA__PROJECT", "5"),
        ("TESSERA__WALLET__HOTKEY", "1"),
    ]))
    .unwrap();
    assert!(c.remote);
    assert_eq!((c.data.pages_per_window, c.project.as_str(), c.wallet.hotkey.as_str()), (Some(2), "5", "1"));
}
