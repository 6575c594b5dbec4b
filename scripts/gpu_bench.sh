#!/usr/bin/env bash
# Training-step throughput of the seed's 1.2B Llama on one CUDA GPU: tessera's burn
# trainer (model/benches/train_step.rs, built with --features cuda) in four configurations
# against PyTorch's LlamaForCausalLM with bf16 autocast and SDPA (scripts/torch_bench.py),
# same shape, batch and sequence length. Prints tokens/s, ms/step, peak GPU memory and MFU
# of each run, then the burn/torch ratios; every run's log and RESULT line go to $OUT_DIR.
#
#   scripts/gpu_bench.sh                       # batch 8 x 2048 on cuda:0: the four burn variants, torch sdpa
#   scripts/gpu_bench.sh build                 # here, no GPU needed: build the bench binary into
#                                              # target/gpu-bench-bin/ for a GPU machine without Rust
#   BENCH_BIN=target/gpu-bench-bin/train_step scripts/gpu_bench.sh   # run that binary (no cargo)
#   BATCH=4 STEPS=5 scripts/gpu_bench.sh       # smaller, if the 8 x 2048 run does not fit
#   VARIANTS="fp32 bf16-fused-recompute" scripts/gpu_bench.sh
#   TORCH_ATTN="sdpa eager" scripts/gpu_bench.sh   # eager = naive attention, as burn's naive path
#
# The burn variants (the `precision`, `attention` and `recompute_activations` settings):
#   fp32                   fp32 everything (TF32 tensor cores), naive attention
#   bf16-mixed             fp32 master weights and AdamW, bf16 matmul operands, naive attention
#   bf16-fused             bf16-mixed + the fused attention kernels (forward and backward)
#   bf16-fused-recompute   bf16-fused + decoder blocks recomputed in the backward
#
# Needs: an NVIDIA driver and NVRTC (burn-cuda compiles kernels at run time; no CUDA
# toolkit is needed to build), nvidia-smi, and for the reference python3 with torch (CUDA)
# and transformers (SKIP_TORCH=1 skips it). With a prebuilt binary the defaults (4 burn
# runs and 1 torch run of 3 warm-up + 10 steps) are sized for one 8-minute call.
#
# Peak memory: nvidia-smi's memory.used sampled every 100 ms during each run, minus what
# was in use before it: the allocator's whole pool, comparable to torch's
# max_memory_reserved (which torch_bench.py prints too). MFU: tokens/s times the model
# FLOPs per token (6·N + 6·layers·hidden·seq, N the multiplying parameters) over
# PEAK_TFLOPS (989: H100/H200 dense bf16; set it for other GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda:0}
BATCH=${BATCH:-8}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
VARIANTS=${VARIANTS:-fp32 bf16-mixed bf16-fused bf16-fused-recompute}
TORCH_ATTN=${TORCH_ATTN:-sdpa}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
OUT_DIR=${OUT_DIR:-target/gpu-bench}

if [ "${1:-}" = build ]; then
  # The bench profile's executable, copied where the device tool's `carry` can take it.
  exe=$(cargo bench -p tessera-model --features cuda --bench train_step --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "train_step" and m.get("executable"):
        print(m["executable"])' | tail -1)
  [ -n "$exe" ] || { echo "gpu_bench: cargo built no train_step executable" >&2; exit 1; }
  mkdir -p target/gpu-bench-bin
  cp "$exe" target/gpu-bench-bin/train_step
  ls -l target/gpu-bench-bin/train_step
  exit 0
fi

mkdir -p "$OUT_DIR"
gpu_index=${DEVICE#cuda}
gpu_index=${gpu_index#:}
gpu_index=${gpu_index:-0}
command -v nvidia-smi >/dev/null || { echo "gpu_bench: nvidia-smi not found: no NVIDIA driver here" >&2; exit 1; }
nvidia-smi -i "$gpu_index" --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

used_mib() { nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '; }

# run NAME CMD...: runs CMD with a memory sampler; appends NAME's figures to the summary.
summary="$OUT_DIR/summary.txt"
: >"$summary"
run() {
  local name=$1
  shift
  local base samples sampler peak rc=0
  base=$(used_mib)
  samples="$OUT_DIR/$name.mem"
  nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$samples" &
  sampler=$!
  "$@" 2>&1 | tee "$OUT_DIR/$name.log" || rc=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$samples" | tail -1)
  peak=$((${peak:-0} - base))
  local result
  result=$(grep '^RESULT ' "$OUT_DIR/$name.log" | tail -1 | cut -d' ' -f2- || true)
  if [ -z "$result" ]; then
    echo "$name FAILED (exit $rc; see $OUT_DIR/$name.log)" | tee -a "$summary"
    return 0
  fi
  echo "$result" >"$OUT_DIR/$name.json"
  python3 - "$name" "$peak" "$OUT_DIR/$name.json" "$PEAK_TFLOPS" <<'PY' | tee -a "$summary"
import json, sys
name, peak, path, peak_tflops = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
r = json.load(open(path))
r["peak_gpu_mib"] = peak
# The burn bench states its FLOPs per token; the torch run gets the same formula.
fpt = r.get("flops_per_token")
if fpt is None:
    n = r["params"] - r["vocab"] * r["hidden"]
    fpt = 6 * n + 6 * r["layers"] * r["hidden"] * r["seq"]
r["mfu"] = r["tokens_per_s"] * fpt / (peak_tflops * 1e12)
json.dump(r, open(path, "w"))
print(f"{name:<28} {r['tokens_per_s']:>10.1f} tokens/s {r['ms_per_step']:>9.1f} ms/step  peak GPU {peak:>6} MiB  MFU {100 * r['mfu']:5.1f}%")
PY
}

if [ -n "${BENCH_BIN:-}" ]; then
  bench=("$BENCH_BIN" --bench)
else
  # One build serves every burn run.
  cargo bench -p tessera-model --features cuda --bench train_step --no-run
  bench=(cargo bench -p tessera-model --features cuda --bench train_step)
fi
for variant in $VARIANTS; do
  case $variant in
    fp32) precision=fp32 attention=naive recompute=0 ;;
    bf16-mixed) precision=bf16-mixed attention=naive recompute=0 ;;
    bf16-fused) precision=bf16-mixed attention=fused recompute=0 ;;
    bf16-fused-recompute) precision=bf16-mixed attention=fused recompute=1 ;;
    *)
      echo "gpu_bench: unknown variant $variant (fp32, bf16-mixed, bf16-fused, bf16-fused-recompute)" >&2
      exit 2
      ;;
  esac
  run "burn-$variant" env TESSERA_BENCH_DEVICE="$DEVICE" TESSERA_BENCH_PRESET=seed TESSERA_BENCH_FLOAT=f32 \
    TESSERA_BENCH_PRECISION=$precision TESSERA_BENCH_ATTENTION=$attention TESSERA_BENCH_RECOMPUTE=$recompute \
    TESSERA_BENCH_BATCH="$BATCH" TESSERA_BENCH_SEQ="$SEQ" TESSERA_BENCH_STEPS="$STEPS" TESSERA_BENCH_WARMUP="$WARMUP" \
    "${bench[@]}"
done

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  for attn in $TORCH_ATTN; do
    run "torch-$attn-bf16" python3 scripts/torch_bench.py --device "$DEVICE" --batch "$BATCH" --seq "$SEQ" \
      --steps "$STEPS" --warmup "$WARMUP" --attn "$attn"
  done
fi

echo
echo "== summary (batch $BATCH x seq $SEQ, seed 1.2B shape, $DEVICE, MFU against $PEAK_TFLOPS TFLOP/s)"
cat "$summary"
# Ratios burn/torch against each torch run (the first is the seed's own: sdpa + bf16 autocast).
python3 - "$OUT_DIR" $VARIANTS <<'PY'
import glob, json, os, sys
out, variants = sys.argv[1], sys.argv[2:]
for t in sorted(glob.glob(os.path.join(out, "torch-*.json"))):
    ref = json.load(open(t))
    name = os.path.basename(t)[:-5]
    for v in variants:
        p = os.path.join(out, f"burn-{v}.json")
        if os.path.exists(p):
            r = json.load(open(p))
            mem = ""
            if ref.get("peak_gpu_mib") and r.get("peak_gpu_mib"):
                mem = f", {r['peak_gpu_mib'] / ref['peak_gpu_mib']:.2f}x its peak memory"
            print(f"burn-{v} / {name}: {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x tokens/s{mem}")
PY
