#!/usr/bin/env bash
# One prepared GPU check that fits a lent machine's single call (10 minutes a command, 15
# of device time in all, the machine's start included): it ends inside 8 minutes.
#
#   scripts/gpu_check.sh build   # HERE: the CUDA bench binary, release, stripped, into
#                                # gpu-check/ (about 30-40 MiB; the device call carries it)
#   scripts/gpu_check.sh run     # ON THE DEVICE: every output under $OUT
#   scripts/gpu_check.sh cpu     # HERE: the same steps on the CPU at tiny shapes, to test
#                                # the plumbing (builds its own CPU binary; output in
#                                # target/gpu-check-cpu unless OUT is set)
#
# The device call, from the repository root:
#   run(command="scripts/gpu_check.sh run", carry=["gpu-check"], timeout_s=560)
#
# What `run` does, each step under its own timeout, skipped when the budget is spent:
#   0. the environment: nvidia-smi, CUDA's headers and NVRTC as tessera's probe finds them;
#   1. PyTorch first (LlamaForCausalLM, bf16 autocast, SDPA; the 1.2B shape, batch 8 x 2048):
#      tokens/s and peak memory — the reference, and proof the GPU works;
#   2. burn bf16-mixed on a 2-layer model of the 1.2B's width, naive attention then fused:
#      it fills the autotune cache with the full model's matmul shapes, and the two losses
#      must agree (the fused kernels against the tensor-op reference);
#   3. burn's full 1.2B step, bf16-mixed, recomputation on, the `auto` attention;
#   4. a table: tokens/s, MFU, peak GPU memory, the ratio to PyTorch.
# CubeCL's compilation and autotune caches are on (cubecl.toml in the working folder),
# under $OUT/cache, packed into one file at the end ($OUT/cubecl-cache.tar.gz): carry it
# back next time (CUBECL_CACHE_TAR=path) and the kernels are not compiled or tuned again.
#
# Files back from $OUT (the tool returns at most 8): summary.txt (the table), results.jsonl
# (every RESULT line with peak memory and MFU), logs.txt (every step's output), env.txt,
# cubecl-cache.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-}

# The device's driver (580) is CUDA 13.0: cudarc's bindings follow it (this machine has
# no nvcc to tell cudarc which).
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
BUDGET_S=${BUDGET_S:-470}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}

bench_exe() { # cargo args...: builds the train_step bench and prints its executable
  cargo bench -p tessera-model --bench train_step --no-run --message-format=json "$@" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "train_step" and m.get("executable"):
        print(m["executable"])' | tail -1
}

build() { # DIR cargo-args...
  local dir=$1 start=$SECONDS exe
  shift
  exe=$(bench_exe "$@")
  [ -n "$exe" ] || { echo "gpu_check: cargo built no train_step executable" >&2; exit 1; }
  mkdir -p "$dir"
  cp "$exe" "$dir/train_step"
  strip "$dir/train_step"
  echo "gpu_check: built $dir/train_step in $((SECONDS - start)) s: $(du -m "$dir/train_step" | cut -f1) MiB (CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION)"
}

case $mode in
  build)
    build gpu-check --features cuda
    size=$(du -m gpu-check/train_step | cut -f1)
    [ "$size" -le 60 ] || { echo "gpu_check: $size MiB is over the 60 MiB a call carries comfortably" >&2; exit 1; }
    exit 0
    ;;
  run)
    : "${OUT:?gpu_check run: OUT is not set (the device tool sets it)}"
    bin=$root/gpu-check/train_step
    [ -x "$bin" ] || { echo "gpu_check: $bin is missing: run 'scripts/gpu_check.sh build' here and carry gpu-check" >&2; exit 1; }
    device=cuda:0 precision=bf16-mixed float=f32
    torch_shape=() # the 1.2B defaults of torch_bench.py
    small=(TESSERA_BENCH_PRESET=seed TESSERA_BENCH_LAYERS=2 TESSERA_BENCH_BATCH=8 TESSERA_BENCH_SEQ=2048)
    full=(TESSERA_BENCH_PRESET=seed TESSERA_BENCH_BATCH=8 TESSERA_BENCH_SEQ=2048)
    fused=fused steps=(TESSERA_BENCH_STEPS=5 TESSERA_BENCH_WARMUP=2) torch_steps=(--steps 5 --warmup 2)
    limits=(120 150 90 200)
    ;;
  cpu)
    OUT=${OUT:-$root/target/gpu-check-cpu}
    rm -rf "$OUT" && mkdir -p "$OUT"
    build target/gpu-check-cpu-bin
    bin=$root/target/gpu-check-cpu-bin/train_step
    device=cpu precision=fp32 float=f32
    tiny=(--vocab 256 --hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2 --batch 2 --seq 32)
    torch_shape=("${tiny[@]}")
    shape=(TESSERA_BENCH_VOCAB=256 TESSERA_BENCH_HIDDEN=64 TESSERA_BENCH_INTERMEDIATE=128 TESSERA_BENCH_HEADS=4
      TESSERA_BENCH_KV_HEADS=2 TESSERA_BENCH_BATCH=2 TESSERA_BENCH_SEQ=32)
    small=("${shape[@]}" TESSERA_BENCH_LAYERS=2)
    full=("${shape[@]}" TESSERA_BENCH_LAYERS=4)
    # ndarray has no fused kernels: the comparison runs the tensor-op path twice.
    fused=naive steps=(TESSERA_BENCH_STEPS=2 TESSERA_BENCH_WARMUP=1) torch_steps=(--steps 2 --warmup 1)
    limits=(60 60 60 60)
    ;;
  *)
    echo "usage: scripts/gpu_check.sh build|run|cpu" >&2
    exit 2
    ;;
esac

mkdir -p "$OUT/cache" "$OUT/work"
summary=$OUT/summary.txt results=$OUT/results.jsonl logs=$OUT/logs.txt
: >"$summary"
: >"$results"
: >"$logs"
started=$SECONDS
if [ -n "${CUBECL_CACHE_TAR:-}" ] && [ -f "$CUBECL_CACHE_TAR" ]; then
  tar -xzf "$CUBECL_CACHE_TAR" -C "$OUT/cache"
fi
# CubeCL reads cubecl.toml from the working folder up: both caches on, under $OUT.
cat >"$OUT/work/cubecl.toml" <<EOF
[compilation]
cache = { file = "$OUT/cache/compilation" }

[autotune]
cache = { file = "$OUT/cache/autotune" }
EOF

gpu=${device#cuda}
gpu=${gpu#:}
used_mib() {
  if [ "$device" = cpu ]; then echo 0; else nvidia-smi -i "${gpu:-0}" --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '; fi
}

{
  date -u
  if [ "$device" = cpu ]; then
    echo "device: cpu ($(nproc) cores)"
  else
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader || echo "nvidia-smi failed"
    command -v nvcc >/dev/null && nvcc --version | tail -1
  fi
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>&1 || true
  echo "CUDA_PATH=${CUDA_PATH:-} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# step NAME LIMIT CMD...: under `timeout`, in $OUT/work, with a GPU memory sampler; its
# RESULT line (with peak memory and MFU added) goes to results.jsonl.
step() {
  local name=$1 limit=$2 left base sampler="" peak rc=0
  shift 2
  left=$((BUDGET_S - (SECONDS - started)))
  if [ "$left" -lt 30 ]; then
    echo "$name SKIPPED (budget spent: $((SECONDS - started)) s of $BUDGET_S)" | tee -a "$summary"
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit $limit s, $((SECONDS - started)) s in)" | tee -a "$logs"
  base=$(used_mib)
  if [ "$device" != cpu ]; then
    nvidia-smi -i "${gpu:-0}" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/work/$name.mem" &
    sampler=$!
  fi
  (cd "$OUT/work" && timeout --kill-after=10 "$limit" "$@") >"$OUT/work/$name.log" 2>&1 || rc=$?
  [ -n "$sampler" ] && { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
  cat "$OUT/work/$name.log" >>"$logs"
  peak=$(sort -n "$OUT/work/$name.mem" 2>/dev/null | tail -1 || true)
  peak=$((${peak:-0} - base))
  local result
  result=$(grep '^RESULT ' "$OUT/work/$name.log" | tail -1 | cut -d' ' -f2- || true)
  if [ -z "$result" ]; then
    local why="exit $rc"
    [ "$rc" = 124 ] && why="timed out at $limit s"
    echo "$name FAILED ($why): $(grep -v '^ ' "$OUT/work/$name.log" | tail -2 | tr '\n' ' ')" | tee -a "$summary"
    return 0
  fi
  python3 - "$name" "$peak" "$PEAK_TFLOPS" "$result" <<'PY' | tee -a "$summary"
import json, sys
name, peak, peak_tflops, r = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
r["name"], r["peak_gpu_mib"] = name, peak
fpt = r.get("flops_per_token") or 6 * (r["params"] - r["vocab"] * r["hidden"]) + 6 * r["layers"] * r["hidden"] * r["seq"]
r["mfu"] = r["tokens_per_s"] * fpt / (peak_tflops * 1e12)
print(f"{name:<24} {r['tokens_per_s']:>10.1f} tokens/s {r['ms_per_step']:>9.1f} ms/step  peak GPU {peak:>6} MiB  "
      f"MFU {100 * r['mfu']:5.1f}%  loss {r.get('loss_first')} -> {r.get('loss_last')}")
with open(__import__("os").environ["RESULTS"], "a") as f:
    f.write(json.dumps(r) + "\n")
PY
}
export RESULTS=$results

burn_env=(TESSERA_BENCH_DEVICE=$device TESSERA_BENCH_FLOAT=$float TESSERA_BENCH_PRECISION=$precision "${steps[@]}")
step torch-sdpa "${limits[0]}" env PYTHONUNBUFFERED=1 python3 "$root/scripts/torch_bench.py" --device "$device" \
  --dtype "$([ "$device" = cpu ] && echo f32 || echo bf16)" "${torch_shape[@]}" "${torch_steps[@]}"
step burn-2layer-naive "${limits[1]}" env "${burn_env[@]}" "${small[@]}" TESSERA_BENCH_ATTENTION=naive "$bin" --bench
step "burn-2layer-attn-$fused" "${limits[2]}" env "${burn_env[@]}" "${small[@]}" TESSERA_BENCH_ATTENTION=$fused "$bin" --bench
step burn-full-recompute "${limits[3]}" env "${burn_env[@]}" "${full[@]}" TESSERA_BENCH_ATTENTION=auto \
  TESSERA_BENCH_RECOMPUTE=1 "$bin" --bench

# The verdicts: fused against naive (same data, same seed), burn against torch.
python3 - "$results" "$fused" <<'PY' | tee -a "$summary"
import json, sys
rows = {r["name"]: r for r in map(json.loads, open(sys.argv[1]))}
naive, fused = rows.get("burn-2layer-naive"), rows.get(f"burn-2layer-attn-{sys.argv[2]}")
if naive and fused and naive.get("loss_last") and fused.get("loss_last"):
    rel = abs(fused["loss_last"] - naive["loss_last"]) / abs(naive["loss_last"])
    print(f"2-layer {sys.argv[2]} vs naive: last loss {fused['loss_last']:.5f} vs {naive['loss_last']:.5f}, "
          f"relative difference {rel:.2e} ({'agree' if rel <= 1e-2 else 'DISAGREE'}: bf16 tolerance 1e-2)")
else:
    print("2-layer attention comparison: not available (a run failed)")
torch = rows.get("torch-sdpa")
for name, r in rows.items():
    if name.startswith("burn") and torch and r["hidden"] == torch["hidden"] and r["layers"] == torch["layers"]:
        print(f"{name} / torch-sdpa: {r['tokens_per_s'] / torch['tokens_per_s']:.2f}x tokens/s")
PY

(cd "$OUT/cache" && tar -czf "$OUT/cubecl-cache.tar.gz" .) && rm -rf "$OUT/cache"
rm -rf "$OUT/work"
echo "== gpu_check $mode: $((SECONDS - started)) s"
cat "$summary"
