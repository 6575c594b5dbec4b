//! S3 throughput on loopback against the embedded server: a 64 MiB object (the size class
//! of a 1.2B model's slices at low compression) put single-part and multipart, and got
//! to a file and into memory.
//!
//! `cargo bench -p tessera-core --bench storage` — one line per operation: the median over
//! `TESSERA_BENCH_REPS` runs (default 5) and MB/s. Server and client share the machine's
//! cores and disk, so these are upper bounds of the code path, not of a network.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_core::storage::{AccessKeys, BucketClient, EmbeddedS3, TransferOptions};

const SIZE: usize = 64 << 20;

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

async fn time<F, Fut, T, E>(reps: usize, mut f: F) -> Result<Duration, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut runs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        std::hint::black_box(f().await?);
        runs.push(start.elapsed());
    }
    Ok(median(runs))
}

fn report(op: &str, t: Duration) {
    let mbs = SIZE as f64 / t.as_secs_f64() / 1e6;
    println!("{op:<42} {:>8.1} ms  {mbs:>8.1} MB/s", t.as_secs_f64() * 1e3);
}

async fn run(reps: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let server = EmbeddedS3::start(dir.path().join("s3"), AccessKeys::random()).await?;
    let location = server.create_bucket("bench").await?;
    let creds = || server.keys().to_credentials();
    let single = BucketClient::new(
        &location,
        "us-east-1",
        creds()?,
        TransferOptions { multipart_threshold: usize::MAX, ..TransferOptions::default() },
    )?;
    let multipart = BucketClient::new(
        &location,
        "us-east-1",
        creds()?,
        TransferOptions { multipart_threshold: 8 << 20, ..TransferOptions::default() },
    )?;
    let body: Bytes = {
        let mut v = vec![0u8; SIZE];
        rand::fill(&mut v[..]);
        v.into()
    };
    let dest = dir.path().join("downloads").join("object");
    println!("object {} MiB, {reps} reps, median", SIZE >> 20);

    report("put single-part", time(reps, || single.put("single", body.clone())).await?);
    report("put multipart (8 MiB parts, 4 in flight)", time(reps, || multipart.put("multi", body.clone())).await?);
    report("get_to_file (fsync + rename)", time(reps, || single.get_to_file("single", &dest, SIZE as u64)).await?);
    report("get_bytes", time(reps, || single.get_bytes("single", SIZE as u64)).await?);

    if std::fs::read(&dest)? != body[..] {
        return Err("downloaded object differs".into());
    }
    server.stop().await;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::var("TESSERA_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(reps))
}
