//! `tessera devnet` end to end, as the README's first command runs it (shorter): the
//! loss falls on every miner and slices flow between them through S3.

use std::process::Command;

#[test]
fn a_short_devnet_trains_and_exchanges_slices() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["devnet", "--miners", "2", "--windows", "8", "--block-time", "400ms", "--check", "--baseline-miner"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run tessera devnet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "devnet --check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("the loss fell on every exchanging miner, and slices flowed between them"), "{stdout}");
    // One line per miner and window, and the summary table with the baseline.
    assert!(stdout.lines().filter(|l| l.contains(" miner1 ")).count() >= 8, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("baseline1") && l.contains('%')), "{stdout}");
    let miner1 = stdout.lines().find(|l| l.starts_with("miner1 ")).expect("summary row");
    let columns: Vec<&str> = miner1.split_whitespace().collect();
    let change: f64 = columns[4].trim_end_matches('%').parse().expect("change column");
    assert!(change <= -10.0, "the loss fell visibly in 8 windows: {miner1}");
    let down: u64 = columns[7].parse().expect("down column");
    assert!(down > 0, "peer slices were downloaded over S3: {miner1}");
}
