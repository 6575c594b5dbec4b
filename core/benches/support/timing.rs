//! Timing helpers shared by the bench binaries through `#[path]`: the median of a few runs
//! (one 1.2B iteration takes seconds, so criterion's sampling is not used) and one line per
//! stage.

use std::time::{Duration, Instant};

pub fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// The median time of `reps` runs of `f` (at least one) and the last run's result.
pub fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut runs = Vec::with_capacity(reps.max(1));
    let mut last = None;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        let out = std::hint::black_box(f());
        runs.push(start.elapsed());
        last = Some(out);
    }
    (median(runs), last.expect("at least one run"))
}

/// One line: the stage, its median time, the GB/s of `bytes`, and a note.
pub fn report(stage: &str, t: Duration, bytes: usize, note: &str) {
    let gbs = bytes as f64 / t.as_secs_f64() / 1e9;
    println!("{stage:<30} {:>9.1} ms  {gbs:>7.2} GB/s  {note}", t.as_secs_f64() * 1e3);
}

/// `TESSERA_BENCH_REPS` (default 3, at least 1).
pub fn reps() -> usize {
    std::env::var("TESSERA_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1)
}

/// The seed's 1.2B shape, or with `TESSERA_BENCH_SHAPE=tiny` a small one for a smoke run.
pub fn shape() -> tessera_core::model::ModelShape {
    use tessera_core::model::ModelShape;
    if std::env::var("TESSERA_BENCH_SHAPE").is_ok_and(|v| v == "tiny") {
        ModelShape {
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 1024,
            num_hidden_layers: 4,
            ..ModelShape::seed_1b2()
        }
    } else {
        ModelShape::seed_1b2()
    }
}
