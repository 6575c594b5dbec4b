//! `tessera devnet` end to end, as the README's first command runs it (shorter): the
//! held-out loss falls on every miner, slices flow between them through S3, the exchanging
//! miners end below a baseline that trains alone with the same compute, and a devnet
//! resumed from its state directory passes its check again.

use std::process::{Command, Output};

/// A tiny Hugging Face tokenizer (word level), for the export's --tokenizer.
const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":1,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"</s>":1,"the":2},"unk_token":"[UNK]"}}"#;

fn devnet(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("devnet")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tessera devnet");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "devnet {args:?} failed:\n{stdout}\n{stderr}");
    (out, stdout)
}

#[test]
fn a_short_devnet_trains_exchanges_beats_the_baseline_and_resumes() {
    let state = tempfile::tempdir().unwrap();
    let report = state.path().join("report");
    let state_dir = state.path().join("state");
    let (state_arg, report_arg) = (state_dir.to_str().unwrap(), report.to_str().unwrap());
    let common = [
        "--miners",
        "4",
        "--seed-exchange-miners",
        "1",
        "--baseline-miner",
        "--fixed-compute",
        "1",
        "--block-time",
        "50ms",
        "--check",
    ];
    let mut args = common.to_vec();
    args.extend(["--windows", "40", "--state-dir", state_arg, "--report", report_arg]);
    let (_, stdout) = devnet(&args);
    assert!(stdout.contains("the loss fell on every exchanging miner, and slices flowed between them"), "{stdout}");
    assert!(stdout.contains("seed 0 (model initialisation and data)"), "the seeds are printed: {stdout}");
    // One line per miner and window, and the summary table with the baseline.
    assert!(stdout.lines().filter(|l| l.contains(" miner1 ")).count() >= 40, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("baseline1") && l.contains('%')), "{stdout}");
    let miner1 = stdout.lines().find(|l| l.starts_with("miner1 ")).expect("summary row");
    let columns: Vec<&str> = miner1.split_whitespace().collect();
    let change: f64 = columns[4].trim_end_matches('%').parse().expect("change column");
    assert!(change <= -10.0, "the loss fell visibly in 40 windows: {miner1}");
    let down: u64 = columns[8].parse().expect("down column");
    assert!(down > 0, "peer slices were downloaded over S3: {miner1}");
    let comparison = stdout.lines().find(|l| l.starts_with("exchanging miners (update)")).expect("comparison");
    assert!(comparison.contains("ratio"), "{comparison}");
    assert!(stdout.lines().any(|l| l.starts_with("seed-exchange miners (seed)")), "both exchanges compared: {stdout}");
    // The seed-exchange miner reads no v2 slice and the others no v1 slice: each refuses
    // the other protocol's objects (other_version) and averages only its own group's.
    let seedx = stdout.lines().find(|l| l.starts_with("seedx1 ")).expect("seedx1 summary row");
    let rejected: u64 = seedx.split_whitespace().nth(10).and_then(|c| c.parse().ok()).expect("rejected column");
    assert!(rejected > 0, "the v2 objects were refused: {seedx}");
    assert!(
        stdout.lines().filter(|l| l.contains(" seedx1 ")).all(|l| !l.contains("2+") && !l.contains("+2")),
        "a lone seed-exchange miner never averages another's slice: {stdout}"
    );

    // The report: a row per miner and window, the summary, the plot.
    let csv = std::fs::read_to_string(report.join("windows.csv")).unwrap();
    assert!(csv.starts_with("miner,role,exchange,window,index,train_loss,eval_loss"), "{csv}");
    assert!(csv.lines().filter(|l| l.starts_with("baseline1,baseline,none,")).count() >= 40, "{csv}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["check_ok"], true, "{summary}");
    assert!(summary["comparisons"]["exchanging"]["target"].is_number(), "{summary}");
    let svg = std::fs::read_to_string(report.join("heldout.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("baseline1"), "a plot with a legend");

    // The miners' checkpoints read back whole with `tessera checkpoint show`; a truncated
    // copy is refused, naming the file.
    let ckpt = state_dir.join("miner1").join("checkpoints").join("latest.ckpt");
    let show = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["checkpoint", "show"]).arg(&ckpt).output().unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{shown}{}", String::from_utf8_lossy(&show.stderr));
    assert!(shown.contains("integrity   ok") && shown.contains("AdamW state for 21 of 21 tensors"), "{shown}");
    let window: u64 = shown.lines().find_map(|l| l.strip_prefix("window")).unwrap().trim().parse().unwrap();
    assert!((38..=40).contains(&window), "the last windows' checkpoint: {shown}");
    let truncated = state.path().join("truncated.ckpt");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let show =
        Command::new(env!("CARGO_BIN_EXE_tessera")).args(["checkpoint", "show"]).arg(&truncated).output().unwrap();
    let err = String::from_utf8_lossy(&show.stderr);
    assert_eq!(show.status.code(), Some(1), "{err}");
    assert!(err.contains("truncated.ckpt is truncated"), "{err}");

    // Exported as an HF directory: f32, then refused over a non-empty one, then replaced
    // in bf16 with --force.
    let hf = state.path().join("hf");
    let export = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["export", "--checkpoint"])
            .arg(&ckpt)
            .arg("--out")
            .arg(&hf)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = export(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    assert!(config.contains("LlamaForCausalLM") && config.contains("\"torch_dtype\": \"float32\""), "{config}");
    let f32_bytes = std::fs::metadata(hf.join("model.safetensors")).unwrap().len();
    let out = export(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty: pass --force"));
    let out = export(&["--force", "--dtype", "bf16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(hf.join("config.json")).unwrap().contains("bfloat16"));
    assert!(std::fs::metadata(hf.join("model.safetensors")).unwrap().len() < f32_bytes * 6 / 10);
    let leftovers: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(".tessera-export"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // `tessera eval` on the checkpoint measures what the devnet measured last: the same
    // held-out pages (seed 0), micro-batches and model; and on the f32 export the same.
    let devnet_heldout: f64 = columns[5].parse().expect("heldout column");
    let eval = |args: &[&str]| -> f64 {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["eval", "--pages", "1", "--seq-len", "64", "--max-batches", "16", "--json"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["loss"].as_f64().unwrap()
    };
    let from_checkpoint = eval(&["--checkpoint", ckpt.to_str().unwrap()]);
    assert!((from_checkpoint - devnet_heldout).abs() < 0.002, "{from_checkpoint} vs the devnet's {devnet_heldout}");
    let f32_export = state.path().join("hf-f32");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", f32_export.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(eval(&["--hf", f32_export.to_str().unwrap()]), from_checkpoint, "the f32 export is the same model");
    // With --tokenizer, its files travel with the model.
    let tok = state.path().join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::write(tok.join("tokenizer.json"), TOKENIZER_JSON).unwrap();
    std::fs::write(tok.join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["export", "--force", "--checkpoint", ckpt.to_str().unwrap(), "--out", f32_export.to_str().unwrap()])
        .args(["--tokenizer", tok.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(f32_export.join(file).is_file(), "{file} exported");
    }

    // A lockstep run on a new state directory starts at block 0: reproducible for a seed.
    let head: u64 = std::fs::read_to_string(state_dir.join("devnet-head")).unwrap().trim().parse().unwrap();
    assert!((80..90).contains(&head), "40 windows of 2 blocks from block 0, then the shutdown's: {head}");

    // Resumed on the same state: the miners continue from their checkpoints and the check
    // judges that the held-out loss did not rise (it has little left to fall).
    let mut args = common.to_vec();
    args.extend(["--windows", "4", "--state-dir", state_arg]);
    let (_, stdout) = devnet(&args);
    assert!(!stdout.contains("CHECK FAILED"), "{stdout}");
}

#[test]
fn the_validator_rewards_honest_miners_over_every_adversary() {
    let (_, stdout) = devnet(&[
        "--miners",
        "3",
        "--adversaries",
        "all",
        "--fixed-compute",
        "1",
        "--block-time",
        "50ms",
        "--windows",
        "20",
        "--eval-every",
        "0",
        "--check",
    ]);
    assert!(stdout.contains("every honest miner ends above every adversary"), "{stdout}");
    let scored: Vec<&str> = stdout.lines().filter(|l| l.contains(" validator1 scored ")).collect();
    assert!(scored.len() >= 15, "{stdout}");
    // Every kind of copy is caught, by the validator's own first sightings: plain, scaled,
    // noised, the others' mean, one whose bucket claims earlier times, a sybil's twin.
    for copier in ["copier1", "scaledcopy1", "noisycopy1", "meanecho1", "timeliar1", "sybiltwin1"] {
        let caught = scored.iter().filter(|l| l.contains(&format!("{copier} copier"))).count();
        assert!(caught >= scored.len() / 2, "{copier} caught in {caught} windows: {stdout}");
    }
    // The slow bucket is late, then skipped for slowness (not read, so scored neither way):
    // never scored, however well it trains.
    assert!(!scored.iter().any(|l| l.contains("slowbucket1 +") || l.contains("slowbucket1 -")), "{stdout}");
    assert!(scored.iter().filter(|l| l.contains("slowbucket1 skipped")).count() >= scored.len() / 2, "{stdout}");
    for honest in ["miner1", "miner2", "miner3"] {
        assert!(!scored.iter().any(|l| l.contains(&format!("{honest} copier"))), "{honest} branded: {stdout}");
        // An honest state slice is never far beyond the others' (nor withheld).
        assert!(!scored.iter().any(|l| l.contains(&format!("{honest} state-fault"))), "{honest} faulted: {stdout}");
    }
    // The poisoner's even-window updates lie beyond one AdamW step's bound: refused at
    // decode; its odd-window (honest) updates are scored, but its poisoned state withholds
    // the pay. It is never paid for a window.
    let poisoned: Vec<&&str> = scored.iter().filter(|l| l.contains("poisoner1 missing")).collect();
    let faulted: Vec<&&str> = scored.iter().filter(|l| l.contains("poisoner1 state-fault")).collect();
    assert!(poisoned.len() >= scored.len() / 3 && faulted.len() >= scored.len() / 3, "{stdout}");
    assert!(poisoned.len() + faulted.len() + 2 >= scored.len(), "{stdout}");
    // The weights on the dev chain: each adversary below every honest miner (the sybil's
    // update is paid once: its twin gets nothing), and the adversaries under 5% in all.
    let weight = |node: &str| -> u64 {
        let row = stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(node) && l.ends_with('%'));
        row.and_then(|r| r.split_whitespace().nth(3))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{node}: {stdout}"))
    };
    let honest = ["miner1", "miner2", "miner3"].map(weight);
    for adversary in [
        "copier1",
        "lazy1",
        "noise1",
        "randompages1",
        "poisoner1",
        "scaledcopy1",
        "noisycopy1",
        "meanecho1",
        "overfitter1",
        "slowbucket1",
        "timeliar1",
        "sybiltwin1",
    ] {
        assert!(honest.iter().all(|&h| h > weight(adversary)), "{adversary}: {stdout}");
    }
    let share = stdout
        .lines()
        .find_map(|l| l.split("the adversaries hold ").nth(1))
        .and_then(|rest| rest.split('%').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no share line: {stdout}"));
    assert!(share < 5.0, "adversaries hold {share}%: {stdout}");
    // The poisoner's values were clipped: every honest miner's training loss stayed finite
    // and fell.
    for honest in ["miner1", "miner2", "miner3"] {
        let row =
            stdout.lines().find(|l| l.starts_with(honest) && l.contains('%')).unwrap_or_else(|| panic!("{stdout}"));
        let loss = |column: usize| row.split_whitespace().nth(column).and_then(|v| v.parse::<f64>().ok());
        let (first, last) = (loss(2).unwrap_or(f64::NAN), loss(3).unwrap_or(f64::NAN));
        assert!(last.is_finite() && last < first, "{honest}: {row}");
    }
}

#[test]
fn status_shows_each_node_of_a_running_devnet_and_says_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let status = || Command::new(env!("CARGO_BIN_EXE_tessera")).args(["status", "--metrics", &url]).output().unwrap();
    let out = status();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a tessera miner or validator running there"));

    let mut devnet = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["devnet", "--windows", "0", "--miners", "2", "--block-time", "200ms", "--metrics-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let screen = loop {
        let out = status();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Ready once the validator has scored: every node has a window and the miners a loss.
        let validator_row = text.lines().find(|l| l.starts_with("validator1 "));
        if out.status.success() && validator_row.is_some_and(|r| r.contains(" validator ")) && text.contains("3+3")
            || out.status.success() && text.contains("2+2")
        {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no status with averaged slices: {text}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let _ = devnet.kill();
    let _ = devnet.wait();
    assert!(screen.contains("healthy: ok: miner1, miner2, validator1"), "{screen}");
    let miner1 = screen.lines().find(|l| l.starts_with("miner1 ")).expect("miner1 row");
    assert!(miner1.contains(" miner ") && miner1.contains("devnet-miner1"), "{miner1}");
    assert!(screen.contains("miner1: rejected none; restarts none"), "{screen}");
}

/// SparseLoCo end to end: four miners on 8 inner steps a window hold the same model after
/// every outer step (their fingerprints), end below a baseline with the same compute and
/// within the check's margin of the data-parallel ideal, the validator pays them for their
/// payloads, and a devnet resumed from its state directory continues in step.
#[test]
fn sparseloco_miners_hold_one_model_beat_the_baseline_resume_in_step_and_take_in_a_new_miner() {
    let state = tempfile::tempdir().unwrap();
    let (report, resumed_report, state_dir) =
        (state.path().join("report"), state.path().join("resumed"), state.path().join("state"));
    let common = [
        "--miners",
        "4",
        "--exchange",
        "sparseloco",
        "--ideal-miner",
        "--fixed-compute",
        "8",
        "--micro-batches-per-step",
        "1",
        "--block-time",
        "50ms",
        "--eval-every",
        "2",
        "--check",
        "--state-dir",
        state_dir.to_str().unwrap(),
    ];
    let mut args = common.to_vec();
    args.extend(["--windows", "40", "--report", report.to_str().unwrap()]);
    let (_, stdout) = devnet(&args);
    assert!(stdout.contains("models: the exchanging miners held the same model in 40 of 40 windows"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap()).unwrap();
    let comparisons = &summary["comparisons"];
    assert!(comparisons["ideal"]["ratio"].is_number(), "the ideal against the baseline: {summary}");
    assert!(comparisons["exchanging"]["ratio"].is_number(), "SparseLoCo reached the baseline's loss: {summary}");
    assert!(comparisons["exchanging"]["ratio_to_ideal"].is_number(), "{summary}");
    assert_eq!(summary["models"]["windows_differing"], serde_json::json!([]), "{summary}");
    // Payloads of a few KB, not slices of values; every peer's delta read, no state.
    let bandwidth = stdout.lines().find(|l| l.starts_with("exchanging (sparseloco)")).expect("bandwidth line");
    assert!(bandwidth.contains("peers' deltas of"), "{bandwidth}");
    // The validator scored the payloads and paid the four miners.
    let weights: Vec<&serde_json::Value> =
        summary["weights"][0]["uids"].as_array().unwrap().iter().filter(|u| u["role"] == "exchanging").collect();
    assert_eq!(weights.len(), 4, "{summary}");
    assert!(weights.iter().filter(|u| u["weight"].as_u64().unwrap_or(0) > 0).count() >= 3, "{summary}");
    // The error buffer and the window's start were saved beside each checkpoint.
    assert!(state_dir.join("miner1/checkpoints/sparseloco-state.bin").is_file());

    // Resumed, with a fifth miner that never ran: the four continue from their saved
    // starts, the fifth takes the model from the validator's snapshot and the outer steps
    // since, and the five hold one model from the fifth's first window.
    let mut args = common.to_vec();
    args[1] = "5";
    args.extend(["--windows", "4", "--report", resumed_report.to_str().unwrap()]);
    let (_, stdout) = devnet(&args);
    assert!(!stdout.contains("CHECK FAILED"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("miner5 ")), "the fifth miner ran: {stdout}");
    assert!(stdout.contains("models: the exchanging miners held the same model in 4 of 4 windows"), "{stdout}");
}
