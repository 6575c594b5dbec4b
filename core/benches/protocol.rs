//! Protocol throughput at the seed's 1.2B shape, compression 100 (issue A's figures).
//!
//! `cargo bench -p tessera-core --bench protocol` — prints one line per stage: median
//! time over `TESSERA_BENCH_REPS` runs (default 3) and the achieved GB/s, plus the peak
//! heap of the streaming mean. `TESSERA_BENCH_SHAPE=tiny` runs a small shape as a smoke
//! test. A bench binary rather than criterion: one 1.2B iteration takes seconds and
//! needs ~6 GB, and the streaming mean's memory is a figure too.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use tessera_core::hotkey::{HotkeySigner, dev_keypair};
use tessera_core::model::ParamLayout;
use tessera_core::slice::{
    Dtype, Expected, MeanAccumulator, SliceIndices, SliceKind, SliceMeta, decode, encode, extract,
};

#[path = "support/alloc.rs"]
mod counting;
#[path = "support/timing.rs"]
mod timing;
use counting::{CountingAlloc, LIVE, PEAK};
use timing::{report, time};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const COMPRESSION: u32 = 100;
const PEERS: usize = 32;

fn main() {
    let (reps, shape) = (timing::reps(), timing::shape());
    let layout = ParamLayout::llama(&shape).expect("valid shape");
    let total = layout.total_numel();
    println!(
        "shape: {} parameters in {} tensors, compression {COMPRESSION}, {} cores (rayon {} threads), {reps} reps",
        total,
        layout.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        rayon::current_num_threads(),
    );

    // 1. Index sets of every parameter for one window.
    let (t, indices) = time(reps, || SliceIndices::compute(&layout, 1234, COMPRESSION).expect("indices"));
    let k = indices.total_len();
    report("index generation", t, k * 4, &format!("{k} indices ({:.1} M/s)", k as f64 / t.as_secs_f64() / 1e6));

    // 2. Extract from the full model (flat f32 parameters, ~4.8 GB at 1.2B).
    let params: Vec<Vec<f32>> = layout
        .params()
        .iter()
        .enumerate()
        .map(|(p, s)| (0..s.numel()).map(|i| ((p * 31 + i) % 1000) as f32 * 1e-3).collect())
        .collect();
    let (t, values) = time(reps, || extract(&indices, &params).expect("extract"));
    report("extract", t, k * 4, "slice bytes gathered");
    drop(params);

    // 3. Encode (BLAKE3 of the body + sr25519 signature).
    let signers: Vec<_> = (0..PEERS).map(|i| dev_keypair(&format!("peer{i}")).expect("dev key")).collect();
    let meta = SliceMeta {
        kind: SliceKind::State,
        window: 1234,
        fingerprint: layout.fingerprint(),
        compression: COMPRESSION,
        dtype: Dtype::F32,
        version: 1,
    };
    let (t, encoded) = time(reps, || encode(meta, &values, &signers[0]).expect("encode"));
    report("encode f32", t, encoded.len(), &format!("{} bytes", encoded.len()));
    let (t, encoded_bf16) =
        time(reps, || encode(SliceMeta { dtype: Dtype::Bf16, ..meta }, &values, &signers[0]).expect("encode"));
    report("encode bf16", t, encoded_bf16.len(), &format!("{} bytes", encoded_bf16.len()));

    // 4. Decode + verify (size, header, signature, BLAKE3, finiteness).
    let expected = Expected {
        kind: SliceKind::State,
        window: 1234,
        hotkey: None,
        registered: None,
        fingerprint: layout.fingerprint(),
        compression: COMPRESSION,
        value_count: k,
        version: 1,
        max_abs: tessera_core::slice::MAX_ABS_VALUE,
    };
    let (t, _) = time(reps, || decode(&encoded, &expected).map(|v| v.body_len()).expect("decode"));
    report("decode+verify f32", t, encoded.len(), "");
    let (t, _) = time(reps, || decode(&encoded_bf16, &expected).map(|v| v.body_len()).expect("decode"));
    report("decode+verify bf16", t, encoded_bf16.len(), "");
    drop(encoded_bf16);

    // 5. Streaming mean of 32 peers' slices, read one at a time from files as the miner
    //    does from its slice cache: memory must stay one slice + one accumulator.
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<PathBuf> = signers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = values.clone();
            v.iter_mut().for_each(|x| *x += i as f32);
            let path = dir.path().join(format!("state-1234-{}-v1.slice", s.hotkey()));
            std::fs::write(&path, encode(meta, &v, s).expect("encode")).expect("write slice");
            path
        })
        .collect();
    drop((values, encoded));
    let base_live = LIVE.load(Ordering::Relaxed);
    PEAK.store(base_live, Ordering::Relaxed);
    let (t, all_finite) = time(reps, || {
        let mut acc = MeanAccumulator::new(k);
        for path in &files {
            let bytes = std::fs::read(path).expect("read slice");
            acc.add(&decode(&bytes, &expected).expect("valid slice")).expect("add");
        }
        // Return a verdict, not the vector, so no earlier result inflates the next peak.
        acc.finish().expect("mean").iter().all(|v| v.is_finite())
    });
    let peak = PEAK.load(Ordering::Relaxed) - base_live;
    let slice_bytes = std::fs::metadata(&files[0]).map(|m| m.len() as usize).unwrap_or(0);
    report(
        &format!("streaming mean of {PEERS}"),
        t,
        slice_bytes * PEERS,
        &format!(
            "peak heap {:.1} MB = {:.2} x (slice {:.1} MB + accumulator {:.1} MB)",
            peak as f64 / 1e6,
            peak as f64 / (slice_bytes + k * 4) as f64,
            slice_bytes as f64 / 1e6,
            (k * 4) as f64 / 1e6
        ),
    );
    assert!(all_finite);
}
