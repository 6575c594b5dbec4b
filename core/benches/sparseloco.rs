//! SparseLoCo compression at the seed's 1.2B shape (chunks of 4096, 64×64 tiles, k = 64,
//! 2-bit codes) and the decompress-aggregate of 64 peers.
//!
//! `cargo bench -p tessera-core --bench sparseloco` — prints one line per stage: median
//! time over `TESSERA_BENCH_REPS` runs (default 3), plus the payload's size against the
//! dense f32 pseudo-gradient and the peak heap. `TESSERA_BENCH_SHAPE=tiny` runs a small
//! shape as a smoke test. Peak heap is about 2.4 GB at 1.2B: compression runs tensor by
//! tensor ([`compress_tensor`], one tensor's Δ and error buffer at a time), and the
//! aggregate keeps the 64 payloads (~34 MB each) and one tensor's output.
//!
//! The 63 other peers are synthetic: payload bytes written to the documented layout with
//! random in-chunk indices (one per stratum of chunk_len/k, so ascending and distinct) and
//! codes, and the real payload's lookup tables scaled per peer (so the median clip bites).
//! They go through `from_bytes` like any download.
//!
//! Each timed stage also prints a machine-readable `RESULT stage=<name> seconds=<median>`
//! line (`compress`, `clip`, `aggregate`, `decompress_aggregate`), which
//! `scripts/sparseloco-bench` sets beside the same stages in PyTorch
//! (`scripts/sparseloco_torch_bench.py`). For that script:
//! - `TESSERA_BENCH_LAYOUT_OUT=path` writes the shape, settings, reps, peer count and the
//!   (name, shape) list of the layout as JSON;
//! - `TESSERA_BENCH_DUMP=dir` writes the 64 peers' payload bytes (`peer-00.bin`, …; peer 0
//!   is the compressed payload), ~34 MB each at 1.2B, so both sides aggregate the same bytes;
//! - with it, `TESSERA_BENCH_DUMP_DENSE=1` also writes, all tensors flat in layout order as
//!   little-endian f32, the Δ (`delta.f32`), the error buffer before (`error-start.f32`) and
//!   after (`error-end.f32`) compression and the aggregate (`aggregate.f32`), and the clip's
//!   median (`clip-median.txt`): 4 model-sized files, for a cross-check at a small shape.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tessera_core::model::ParamLayout;
use tessera_core::sparseloco::{
    ChunkPlan, CompressSettings, FORMAT_VERSION, MAGIC, Payload, aggregate_tensor, clip, compress_tensor, pack_codes,
    pack_indices,
};

#[path = "support/alloc.rs"]
mod counting;
#[path = "support/timing.rs"]
mod timing;
use counting::{CountingAlloc, PEAK};
use timing::{median, report, time};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const PEERS: usize = 64;
/// Lookup values beyond this are refused at decode (pseudo-gradients are ~1e-3 here).
const MAX_ABS: f32 = 1.0;

/// SplitMix64: fast, seedable, good enough for bench data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Roughly normal (sum of two uniforms), scaled.
    fn value(&mut self, scale: f32) -> f32 {
        let r = self.next();
        let (a, b) = ((r >> 40) as f32, ((r >> 16) & 0xff_ffff) as f32);
        (a + b - 16_777_216.0) / 8_388_608.0 * scale
    }
}

/// Where `TESSERA_BENCH_DUMP` asks the bench to write its inputs and outputs, and whether
/// the model-sized ones too (`TESSERA_BENCH_DUMP_DENSE=1`).
struct Dump {
    dir: PathBuf,
    dense: bool,
}

impl Dump {
    fn from_env() -> Option<Self> {
        let dir = PathBuf::from(std::env::var_os("TESSERA_BENCH_DUMP")?);
        std::fs::create_dir_all(&dir).expect("create TESSERA_BENCH_DUMP");
        Some(Self { dir, dense: std::env::var("TESSERA_BENCH_DUMP_DENSE").is_ok_and(|v| v == "1") })
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(name), bytes).expect("write dump");
    }

    /// A file the model-sized arrays are appended to tensor by tensor (`None` unless dense).
    fn dense_file(&self, name: &str) -> Option<std::io::BufWriter<std::fs::File>> {
        self.dense.then(|| std::io::BufWriter::new(std::fs::File::create(self.dir.join(name)).expect("create dump")))
    }
}

fn append_f32<W: Write>(file: &mut Option<W>, values: &[f32]) {
    if let Some(f) = file {
        values.iter().try_for_each(|v| f.write_all(&v.to_le_bytes())).expect("write dump");
    }
}

/// The layout and settings as JSON, for the PyTorch side to reproduce the same work.
fn layout_json(shape: &str, layout: &ParamLayout, settings: &CompressSettings, reps: usize) -> String {
    let tensors: Vec<_> =
        layout.params().iter().map(|p| serde_json::json!({ "name": p.name, "shape": p.shape })).collect();
    let json = serde_json::json!({
        "shape": shape,
        "chunk": settings.chunk,
        "tile": settings.tile,
        "top_k": settings.top_k,
        "beta": settings.beta,
        "reps": reps,
        "peers": PEERS,
        "max_abs": MAX_ABS,
        "tensors": tensors,
    });
    serde_json::to_string_pretty(&json).expect("json")
}

fn result(stage: &str, t: Duration) {
    println!("RESULT stage={stage} seconds={:.6}", t.as_secs_f64());
}

/// Compresses one random Δ tensor by tensor; returns the summed per-tensor medians.
fn compress_all(plan: &ChunkPlan, reps: usize, rng: &mut Rng, dump: Option<&Dump>) -> (Duration, Payload) {
    let mut files = ["delta.f32", "error-start.f32", "error-end.f32"].map(|n| dump.and_then(|d| d.dense_file(n)));
    let max = plan.tensors().iter().map(|t| t.numel()).max().unwrap_or(0);
    let (mut delta, mut start, mut error) = (vec![0f32; max], vec![0f32; max], vec![0f32; max]);
    let mut total = Duration::ZERO;
    let mut tensors = Vec::with_capacity(plan.tensors().len());
    for (t, chunks) in plan.tensors().iter().enumerate() {
        let n = chunks.numel();
        delta[..n].iter_mut().for_each(|v| *v = rng.value(1e-3));
        start[..n].iter_mut().for_each(|v| *v = rng.value(1e-4));
        append_f32(&mut files[0], &delta[..n]);
        append_f32(&mut files[1], &start[..n]);
        let mut runs = Vec::with_capacity(reps);
        let mut last = None;
        for _ in 0..reps {
            error[..n].copy_from_slice(&start[..n]);
            let begin = Instant::now();
            let out = compress_tensor(plan, t, &delta[..n], &mut error[..n]).expect("compress");
            runs.push(begin.elapsed());
            last = Some(out);
        }
        total += median(runs);
        tensors.push(last.expect("reps >= 1"));
        append_f32(&mut files[2], &error[..n]);
    }
    files.iter_mut().flatten().for_each(|f| f.flush().expect("write dump"));
    (total, Payload::from_tensors(plan, tensors).expect("assemble"))
}

/// A synthetic peer's payload bytes, in the module's documented layout.
fn synthetic_peer(plan: &ChunkPlan, real: &Payload, peer: usize, rng: &mut Rng) -> Vec<u8> {
    let s = plan.settings();
    let mut out = Vec::with_capacity(plan.max_encoded_len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(s.chunk as u16).to_le_bytes());
    out.extend_from_slice(&(s.tile as u16).to_le_bytes());
    out.extend_from_slice(&(s.top_k as u32).to_le_bytes());
    out.extend_from_slice(&(plan.tensors().len() as u32).to_le_bytes());
    let gain = 0.5 + peer as f32 / PEERS as f32;
    for (chunks, tp) in plan.tensors().iter().zip(real.tensors()) {
        tp.lookup().iter().for_each(|v| out.extend_from_slice(&(v * gain).to_le_bytes()));
        let (mut indices, mut codes) = (Vec::new(), Vec::new());
        for c in 0..chunks.chunk_count() {
            let (len, k) = (chunks.chunk_len(c), chunks.chunk_k(c, s.top_k));
            out.extend_from_slice(&(k as u16).to_le_bytes());
            let stride = len / k;
            for j in 0..k {
                let r = rng.next();
                indices.push((j * stride + (r as usize) % stride) as u16);
                codes.push((r >> 32) as u8 & 3);
            }
        }
        out.extend_from_slice(&pack_indices(&indices));
        out.extend_from_slice(&pack_codes(&codes));
    }
    out
}

fn main() {
    let (reps, shape) = (timing::reps(), timing::shape());
    let layout = ParamLayout::llama(&shape).expect("valid shape");
    let settings = CompressSettings::default();
    let plan = ChunkPlan::new(layout.params(), &settings).expect("valid settings");
    println!(
        "shape: {} parameters in {} tensors, chunk {} tile {} k {}, {} cores (rayon {} threads), {reps} reps",
        plan.total_numel(),
        layout.len(),
        settings.chunk,
        settings.tile,
        settings.top_k,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        rayon::current_num_threads(),
    );
    if let Some(path) = std::env::var_os("TESSERA_BENCH_LAYOUT_OUT") {
        let tiny = std::env::var("TESSERA_BENCH_SHAPE").is_ok_and(|v| v == "tiny");
        let name = if tiny { "tiny" } else { "1b2" };
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).expect("create TESSERA_BENCH_LAYOUT_OUT's directory");
        }
        std::fs::write(&path, layout_json(name, &layout, &settings, reps)).expect("write TESSERA_BENCH_LAYOUT_OUT");
    }
    let dump = Dump::from_env();
    let mut rng = Rng(1234);
    let dense = plan.dense_bytes();

    // 1. Compress: e ← β·e + Δ, top-k per chunk, 2-bit quantisation, packing, e update.
    let (t, payload) = compress_all(&plan, reps, &mut rng, dump.as_ref());
    report("compress (tensor by tensor)", t, dense, &format!("{} kept", payload.kept()));
    result("compress", t);
    let size = payload.encoded_len();
    println!(
        "payload: {size} bytes ({:.1} MB) vs dense f32 {dense} bytes ({:.1} MB): 1/{:.1}, {:.2} bits per kept value",
        size as f64 / 1e6,
        dense as f64 / 1e6,
        dense as f64 / size as f64,
        size as f64 * 8.0 / payload.kept() as f64,
    );

    // 2. Serialise and decode (full validation) one payload.
    let (t, bytes) = time(reps, || payload.to_bytes());
    report("to_bytes", t, bytes.len(), "");
    let (t, _) = time(reps, || Payload::from_bytes_with_plan(&bytes, &plan, MAX_ABS).expect("valid"));
    report("from_bytes (validate)", t, bytes.len(), "");

    // 3. 64 peers' uploads, decoded as downloads are.
    let mut peers = vec![Payload::from_bytes_with_plan(&bytes, &plan, MAX_ABS).expect("valid")];
    if let Some(d) = &dump {
        d.write("peer-00.bin", &bytes);
    }
    drop(bytes);
    for p in 1..PEERS {
        let b = synthetic_peer(&plan, &payload, p, &mut rng);
        if let Some(d) = &dump {
            d.write(&format!("peer-{p:02}.bin"), &b);
        }
        peers.push(Payload::from_bytes_with_plan(&b, &plan, MAX_ABS).expect("synthetic peer is valid"));
    }
    drop(payload);
    let received: usize = peers.iter().map(Payload::encoded_len).sum();

    // 4. Median-norm clip and contributor mean, one tensor's output at a time.
    let (t_clip, c) = time(reps, || clip(&peers));
    report(&format!("clip ({PEERS} norms)"), t_clip, received, &format!("median {:.4e}", c.median.unwrap_or(0.0)));
    let (t, finite) = time(reps, || {
        (0..plan.tensors().len()).all(|tensor| {
            let out = aggregate_tensor(&peers, &c.scales, &plan, tensor).expect("aggregate");
            out.iter().all(|v| v.is_finite())
        })
    });
    report(&format!("aggregate {PEERS} peers"), t, received, &format!("dense output {:.1} MB", dense as f64 / 1e6));
    report(&format!("decompress-aggregate {PEERS}"), t + t_clip, received, "clip + aggregate");
    result("clip", t_clip);
    result("aggregate", t);
    result("decompress_aggregate", t + t_clip);
    assert!(finite);
    if let Some(d) = &dump
        && let Some(mut file) = d.dense_file("aggregate.f32")
    {
        for tensor in 0..plan.tensors().len() {
            let out = aggregate_tensor(&peers, &c.scales, &plan, tensor).expect("aggregate");
            append_f32(&mut Some(&mut file), &out);
        }
        file.flush().expect("write dump");
        let median = c.median.map_or_else(|| "none".to_string(), |m| format!("{m:?}"));
        d.write("clip-median.txt", format!("{median}\n").as_bytes());
    }
    println!("peak heap {:.1} MB", PEAK.load(Ordering::Relaxed) as f64 / 1e6);
}
