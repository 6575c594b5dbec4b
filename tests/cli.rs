//! The `tessera` binary as an operator runs it: seed flags, layering, errors, exit codes.
//!
//! Every run gets a clean environment, a temp dir as cwd and HOME, and
//! `TESSERA_CONFIG_DIR` pointing into it, so neither the repository's `config/` nor the
//! caller's environment leaks in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every flag of the seed's `neurons/miner.py`, spelled as the seed spells it.
const SEED_FLAGS: &[&str] = &[
    "--actual_batch_size",
    "--wallet.name",
    "--wallet.hotkey",
    "--wallet.path",
    "--bucket",
    "--device",
    "--use_wandb",
    "--project",
    "--netuid",
    "--remote",
    "--sync_state",
    "--debug",
    "--trace",
    "--random",
    "--baseline",
    "--test",
    "--local",
    "--autoupdate",
    "--subtensor.network",
    "--subtensor.chain_endpoint",
    "--checkpoint_path",
    "--process_name",
];

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config_dir(&self) -> PathBuf {
        self.path().join("config")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("HOME", self.path())
            .env("TESSERA_CONFIG_DIR", self.config_dir());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run tessera")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs, expects a configuration error (exit 2), returns stderr.
fn config_error(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = sb.run(args, env);
    assert_eq!(out.status.code(), Some(2), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).is_empty(), "nothing on stdout on error: {}", stdout(&out));
    stderr(&out)
}

fn print_config(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> toml::Value {
    let mut all = vec!["miner", "--print-config"];
    all.extend_from_slice(args);
    let out = sb.run(&all, env);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    toml::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("stdout is TOML: {e}\n{}", stdout(&out)))
}

#[test]
fn miner_help_lists_every_seed_flag() {
    let sb = Sandbox::new();
    let out = sb.run(&["miner", "--help"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    for flag in SEED_FLAGS.iter().chain(&["--config", "--hparams", "--state_dir", "--print-config"]) {
        let spelled = format!("{flag} ");
        let with_value = format!("{flag} <");
        assert!(
            help.contains(&spelled) || help.contains(&with_value) || help.contains(&format!("{flag}\n")),
            "{flag} missing from help:\n{help}"
        );
    }
}

#[test]
fn the_seed_example_command_line_is_accepted() {
    let sb = Sandbox::new();
    let cfg = print_config(
        &sb,
        &[
            "--actual_batch_size",
            "1",
            "--wallet.name",
            "w1",
            "--wallet.hotkey",
            "h1",
            "--bucket",
            "my-bucket",
            "--device",
            "cuda:0",
            "--use_wandb",
            "--project",
            "proj",
            "--netuid",
            "223",
            "--remote",
            "--sync_state",
            "--random",
            "--baseline",
            "--debug",
            "--trace",
            "--autoupdate",
            "--checkpoint_path",
            "ck.pt",
            "--process_name",
            "Miner1",
            "--wallet.path",
            "~/wallets",
        ],
        &[],
    );
    assert_eq!(cfg["actual_batch_size"].as_integer(), Some(1));
    assert_eq!(cfg["wallet"]["name"].as_str(), Some("w1"));
    assert_eq!(cfg["wallet"]["hotkey"].as_str(), Some("h1"));
    let wallets = sb.path().join("wallets");
    assert_eq!(cfg["wallet"]["path"].as_str(), Some(wallets.to_str().unwrap()));
    assert_eq!(cfg["device"].as_str(), Some("cuda:0"));
    assert_eq!(cfg["project"].as_str(), Some("proj"));
    assert_eq!(cfg["netuid"].as_integer(), Some(223));
    for switch in ["use_wandb", "remote", "sync_state", "random", "baseline", "debug", "trace", "autoupdate"] {
        assert_eq!(cfg[switch].as_bool(), Some(true), "{switch}");
    }
    assert_eq!(cfg["checkpoint_path"].as_str(), Some("ck.pt"));
    assert_eq!(cfg["process_name"].as_str(), Some("Miner1"));
}

#[test]
fn print_config_shows_defaults_and_values_and_exits_zero() {
    let sb = Sandbox::new();
    let out = sb.run(&["miner", "--print-config", "--bucket", "my-bucket"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("bucket = \"my-bucket\""), "{text}");
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(cfg["actual_batch_size"].as_integer(), Some(8));
    assert_eq!(cfg["netuid"].as_integer(), Some(3));
    assert_eq!(cfg["device"].as_str(), Some("cuda:0"));
    assert_eq!(cfg["project"].as_str(), Some("templar"));
    assert_eq!(cfg["hparams"].as_str(), Some("builtin"));
    assert_eq!(cfg["subtensor"]["network"].as_str(), Some("finney"));
    assert_eq!(cfg["subtensor"]["chain_endpoint"].as_str(), Some("wss://entrypoint-finney.opentensor.ai:443"));
    let home = sb.path().to_str().unwrap();
    assert_eq!(cfg["wallet"]["path"].as_str(), Some(format!("{home}/.bittensor/wallets").as_str()));
    assert_eq!(cfg["state_dir"].as_str(), Some(format!("{home}/.tessera").as_str()));
}

#[test]
fn printed_config_reads_back_as_a_config_file() {
    let sb = Sandbox::new();
    let first = sb.run(
        &["miner", "--print-config", "--bucket", "my-bucket", "--netuid", "7", "--remote", "--device", "cpu"],
        &[],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let file = sb.write("effective.toml", &stdout(&first));
    let second = sb.run(&["miner", "--print-config", "--config", file.to_str().unwrap()], &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(stdout(&first), stdout(&second));
}

#[test]
fn bad_values_name_the_key_and_value() {
    let sb = Sandbox::new();
    let text = config_error(&sb, &["miner", "--bucket", "my-bucket", "--netuid", "abc"], &[]);
    assert!(text.contains("invalid value \"abc\" for netuid") && text.contains("--netuid"), "{text}");

    let text = config_error(&sb, &["miner", "--bucket", "my-bucket", "--device", "tpu"], &[]);
    assert!(text.contains("invalid value \"tpu\" for device") && text.contains("cuda:N"), "{text}");

    let text = config_error(&sb, &["miner", "--bucket", "my-bucket"], &[("TESSERA__ACTUAL_BATCH_SIZE", "0")]);
    assert!(text.contains("invalid value \"0\" for actual_batch_size"), "{text}");
    assert!(text.contains("TESSERA__ACTUAL_BATCH_SIZE"), "{text}");

    let text = config_error(&sb, &["miner", "--bucket", "Bad_Bucket"], &[]);
    assert!(text.contains("invalid value \"Bad_Bucket\" for bucket") && text.contains("S3 bucket name"), "{text}");

    let file = sb.write("typo.toml", "bucket = \"my-bucket\"\n[wallet]\nnmae = \"w\"\n");
    let text = config_error(&sb, &["miner", "--config", file.to_str().unwrap()], &[]);
    assert!(text.contains("unknown key \"wallet.nmae\"") && text.contains("typo.toml"), "{text}");
    assert!(text.contains("did you mean \"wallet.name\""), "{text}");

    let text = config_error(&sb, &["miner", "--config", "missing.toml", "--bucket", "my-bucket"], &[]);
    assert!(text.contains("missing.toml") && text.contains("does not exist"), "{text}");
}

#[test]
fn missing_bucket_says_how_to_set_it() {
    let sb = Sandbox::new();
    let text = config_error(&sb, &["miner", "--print-config"], &[]);
    assert!(text.contains("bucket is required") && text.contains("--bucket NAME"), "{text}");
}

#[test]
fn test_flag_selects_the_test_network_endpoint() {
    let sb = Sandbox::new();
    let cfg = print_config(&sb, &["--bucket", "my-bucket", "--test"], &[]);
    assert_eq!(cfg["subtensor"]["network"].as_str(), Some("test"));
    assert_eq!(cfg["subtensor"]["chain_endpoint"].as_str(), Some("wss://test.finney.opentensor.ai:443/"));
    let cfg = print_config(&sb, &["--bucket", "my-bucket", "--local"], &[]);
    assert_eq!(cfg["subtensor"]["chain_endpoint"].as_str(), Some("ws://127.0.0.1:9944"));
}

#[test]
fn layers_default_file_then_config_file_then_env_then_flags() {
    let sb = Sandbox::new();
    sb.write("config/default.toml", "bucket = \"default-bucket\"\nnetuid = 10\nproject = \"p-default\"\n");
    let file = sb.write("mine.toml", "netuid = 11\nproject = \"p-file\"\n[wallet]\nname = \"w-file\"\n");
    let file = file.to_str().unwrap();

    let cfg = print_config(&sb, &[], &[]);
    assert_eq!(cfg["bucket"].as_str(), Some("default-bucket"), "TESSERA_CONFIG_DIR/default.toml is read");
    assert_eq!(cfg["netuid"].as_integer(), Some(10));

    let cfg = print_config(&sb, &["--config", file], &[]);
    assert_eq!((cfg["netuid"].as_integer(), cfg["project"].as_str()), (Some(11), Some("p-file")));

    let env = [("TESSERA__NETUID", "12"), ("TESSERA__WALLET__NAME", "w-env")];
    let cfg = print_config(&sb, &["--config", file], &env);
    assert_eq!(cfg["netuid"].as_integer(), Some(12), "env beats the file");
    assert_eq!(cfg["wallet"]["name"].as_str(), Some("w-env"));
    assert_eq!(cfg["project"].as_str(), Some("p-file"));

    let cfg = print_config(&sb, &["--config", file, "--netuid", "13", "--wallet.name", "w-cli"], &env);
    assert_eq!(cfg["netuid"].as_integer(), Some(13), "a flag beats env");
    assert_eq!(cfg["wallet"]["name"].as_str(), Some("w-cli"));
    assert_eq!(cfg["bucket"].as_str(), Some("default-bucket"));
}

#[test]
fn shipped_default_toml_changes_nothing() {
    let sb = Sandbox::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let without = sb.run(&["miner", "--print-config", "--bucket", "my-bucket"], &[]);
    sb.write("config/default.toml", &std::fs::read_to_string(shipped).unwrap());
    let with = sb.run(&["miner", "--print-config", "--bucket", "my-bucket"], &[]);
    assert!(without.status.success() && with.status.success(), "{}", stderr(&with));
    assert_eq!(stdout(&without), stdout(&with));
}

#[test]
fn miner_reports_the_model_then_stops_at_a_missing_wallet_with_the_btcli_advice() {
    let sb = Sandbox::new();
    let wallets = sb.write("wallets/.keep", "");
    let wallets = wallets.parent().expect("wallets dir").to_str().expect("utf-8 path").to_owned();
    let out =
        sb.run(&["miner", "--bucket", "my-bucket", "--device", "cpu", "--autoupdate", "--wallet.path", &wallets], &[]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("effective configuration"), "{err}");
    assert!(err.contains("bucket = \"my-bucket\""), "{err}");
    assert!(err.contains("1204881408"), "parameter count logged: {err}");
    assert!(err.contains("fingerprint="), "{err}");
    assert!(err.contains("--autoupdate is not applicable"), "{err}");
    // No hotkey file: the error says where it looked and how to create one.
    assert!(err.contains(&format!("{wallets}/default/hotkeys/default")), "{err}");
    assert!(err.contains("btcli wallet new_hotkey"), "{err}");
    assert!(stdout(&out).is_empty(), "logs go to stderr: {}", stdout(&out));
}

#[test]
fn hparams_command_prints_json_with_the_model() {
    let sb = Sandbox::new();
    let out = sb.run(&["hparams"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(report["source"], "built-in");
    assert_eq!(report["hparams"]["compression"], 100);
    assert_eq!(report["hparams"]["max_history"], 6);
    assert_eq!(report["model"]["parameters"], 1_204_881_408u64);
    assert_eq!(report["model"]["fingerprint"].as_str().map(str::len), Some(64));

    // A local file, with its fingerprint differing from the built-in one.
    let builtin = report["hparams"].clone();
    let mut small = builtin.clone();
    small["num_hidden_layers"] = 2.into();
    let file = sb.write("hp.json", &small.to_string());
    let out = sb.run(&["hparams", "--hparams", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(other["hparams"]["num_hidden_layers"], 2);
    assert_ne!(other["model"]["fingerprint"], report["model"]["fingerprint"]);

    // A broken file is an error naming it.
    let bad = sb.write("bad.json", "{");
    let out = sb.run(&["hparams", "--hparams", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.json"), "{}", stderr(&out));
}

#[test]
fn s3_settings_come_from_the_environment_with_the_keys_redacted() {
    let sb = Sandbox::new();
    let env = [
        ("TESSERA__S3__ENDPOINT", "http://127.0.0.1:9000"),
        ("TESSERA__S3__REGION", "garage"),
        ("TESSERA__S3__ACCESS_KEY_ID", "GKexampleid"),
        ("TESSERA__S3__SECRET_ACCESS_KEY", "examplesecret"),
    ];
    let out = sb.run(&["miner", "--print-config", "--bucket", "my-bucket"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("GKexampleid") && !text.contains("examplesecret"), "{text}");
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(cfg["s3"]["endpoint"].as_str(), Some("http://127.0.0.1:9000/"));
    assert_eq!(cfg["s3"]["region"].as_str(), Some("garage"));
    assert_eq!(cfg["s3"]["access_key_id"].as_str(), Some("<redacted>"));
    assert_eq!(cfg["s3"]["secret_access_key"].as_str(), Some("<redacted>"));

    let text = config_error(&sb, &["miner", "--bucket", "my-bucket"], &[("TESSERA__S3__ACCESS_KEY_ID", "GKexampleid")]);
    assert!(text.contains("TESSERA__S3__ACCESS_KEY_ID") && text.contains("must be given together"), "{text}");
    assert!(!text.contains("GKexampleid"), "{text}");
    let text = config_error(&sb, &["miner", "--bucket", "my-bucket"], &[("TESSERA__S3__ENDPOINT", "https://h/b")]);
    assert!(text.contains("invalid value \"https://h/b\" for s3.endpoint"), "{text}");
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let sb = Sandbox::new();
    let wallets = sb.write("wallets/.keep", "");
    let wallets = wallets.parent().expect("wallets dir").to_str().expect("utf-8 path").to_owned();
    let out = sb.run(
        &["miner", "--bucket", "my-bucket", "--device", "cpu", "--log-format", "json", "--wallet.path", &wallets],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let logs: Vec<&str> = err.lines().filter(|l| l.starts_with('{')).collect();
    assert!(logs.len() >= 3, "{err}");
    for line in &logs {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.get("level").is_some() && value.get("fields").is_some(), "{line}");
    }
    assert!(logs.iter().any(|l| l.contains("tessera miner starting")), "{err}");
}

#[test]
fn validator_takes_the_seed_validators_flags_and_refuses_a_miners_switches() {
    let sb = Sandbox::new();
    let out = sb.run(&["validator", "--help"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    // The seed validator's flags are the miner's but for the miner-only ones.
    let miner_only = ["--random", "--baseline", "--local", "--checkpoint_path", "--process_name"];
    for flag in SEED_FLAGS.iter().filter(|f| !miner_only.contains(f)) {
        assert!(help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")), "{flag}:\n{help}");
    }
    // --random is a miner's switch: refused before anything touches the network.
    let out = sb.run(&["validator", "--bucket", "validator-bucket", "--device", "cpu", "--random"], &[]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--random is a miner's switch"), "{}", stderr(&out));
    // One hotkey per validator process.
    let config = sb.write(
        "two.toml",
        "bucket = \"validator-bucket\"\ndevice = \"cpu\"\n[[miners]]\nwallet.hotkey = \"a\"\n[[miners]]\nwallet.hotkey = \"b\"\n",
    );
    let out = sb.run(&["validator", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("a validator process runs one hotkey"), "{}", stderr(&out));
}

#[test]
fn operator_tools_name_the_file_and_what_is_wrong() {
    let sb = Sandbox::new();
    let foreign = sb.write("scores.json", "{\"not\": \"a checkpoint\"}");
    let foreign = foreign.to_str().unwrap();
    let missing = sb.path().join("missing.ckpt");
    let missing = missing.to_str().unwrap();
    let out_dir = sb.path().join("out");
    for (args, expected) in [
        (vec!["checkpoint", "show", foreign], "scores.json is not a tessera checkpoint"),
        (vec!["checkpoint", "show", missing], "missing.ckpt: no such file"),
        (vec!["export", "--checkpoint", foreign, "--out", out_dir.to_str().unwrap()], "is not a tessera checkpoint"),
        (vec!["export", "--checkpoint", missing, "--out", out_dir.to_str().unwrap()], "missing.ckpt: no such file"),
        (vec!["eval", "--checkpoint", foreign], "is not a tessera checkpoint"),
        (vec!["export", "--checkpoint", foreign, "--out", "x", "--dtype", "int8"], "expected f32, bf16 or f16"),
    ] {
        let out = sb.run(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
    assert!(!out_dir.exists(), "nothing written for a bad checkpoint");
}
