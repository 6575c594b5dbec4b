//! What the in-process network tests share: logs and polling with a deadline.

#![allow(dead_code)]

use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn,tessera_actors=info").with_test_writer().try_init();
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` at the deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
