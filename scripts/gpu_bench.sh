#!/usr/bin/env bash
# Training-step throughput of the seed's 1.2B Llama on one CUDA GPU: tessera's burn
# trainer (model/benches/train_step.rs, built with --features cuda) against PyTorch's
# LlamaForCausalLM with bf16 autocast (scripts/torch_bench.py), same shape, batch and
# sequence length. Prints tokens/s, ms/step and peak GPU memory of each run, then the
# burn/torch ratios; every run's log and RESULT line go to $OUT_DIR.
#
#   scripts/gpu_bench.sh                       # batch 8 x 2048 on cuda:0, burn f32 and bf16, torch sdpa
#   BATCH=4 STEPS=5 scripts/gpu_bench.sh       # smaller, if the 8 x 2048 run does not fit
#   TORCH_ATTN="sdpa eager" scripts/gpu_bench.sh   # eager = naive attention, as burn's model does it
#
# Needs: an NVIDIA driver and NVRTC (burn-cuda compiles kernels at run time; no CUDA
# toolkit is needed to build), nvidia-smi, and for the reference python3 with torch (CUDA)
# and transformers (SKIP_TORCH=1 skips it).
#
# Peak memory: nvidia-smi's memory.used sampled every 100 ms during each run, minus what
# was in use before it — the allocator's whole pool, comparable to torch's
# max_memory_reserved (which torch_bench.py prints too).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda:0}
BATCH=${BATCH:-8}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
BURN_FLOATS=${BURN_FLOATS:-f32 bf16}
TORCH_ATTN=${TORCH_ATTN:-sdpa}
OUT_DIR=${OUT_DIR:-target/gpu-bench}
mkdir -p "$OUT_DIR"

gpu_index=${DEVICE#cuda}
gpu_index=${gpu_index#:}
gpu_index=${gpu_index:-0}
command -v nvidia-smi >/dev/null || { echo "gpu_bench: nvidia-smi not found: no NVIDIA driver here" >&2; exit 1; }
nvidia-smi -i "$gpu_index" --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

used_mib() { nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '; }

# run NAME CMD...: runs CMD with a memory sampler; appends "NAME tokens/s ms/step peak_mib" to the summary.
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
  peak=$(( ${peak:-0} - base ))
  local result
  result=$(grep '^RESULT ' "$OUT_DIR/$name.log" | tail -1 | cut -d' ' -f2- || true)
  if [ -z "$result" ]; then
    echo "$name FAILED (exit $rc; see $OUT_DIR/$name.log)" | tee -a "$summary"
    return 0
  fi
  echo "$result" >"$OUT_DIR/$name.json"
  python3 - "$name" "$peak" "$OUT_DIR/$name.json" <<'EOF' | tee -a "$summary"
import json, sys
name, peak, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = json.load(open(path))
print(f"{name:<22} {r['tokens_per_s']:>10.1f} tokens/s {r['ms_per_step']:>10.1f} ms/step  peak GPU {peak} MiB")
EOF
}

# One build serves every burn run (default features keep a CPU backend too).
cargo bench -p tessera-model --features cuda --bench train_step --no-run
for float in $BURN_FLOATS; do
  run "burn-$float" env TESSERA_BENCH_DEVICE="$DEVICE" TESSERA_BENCH_PRESET=seed TESSERA_BENCH_FLOAT="$float" \
    TESSERA_BENCH_BATCH="$BATCH" TESSERA_BENCH_SEQ="$SEQ" TESSERA_BENCH_STEPS="$STEPS" TESSERA_BENCH_WARMUP="$WARMUP" \
    cargo bench -p tessera-model --features cuda --bench train_step
done

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  for attn in $TORCH_ATTN; do
    run "torch-$attn-bf16" python3 scripts/torch_bench.py --device "$DEVICE" --batch "$BATCH" --seq "$SEQ" \
      --steps "$STEPS" --warmup "$WARMUP" --attn "$attn"
  done
fi

echo
echo "== summary (batch $BATCH x seq $SEQ, seed 1.2B shape, $DEVICE)"
cat "$summary"
# Ratios burn/torch, against the first torch run (the seed's own: sdpa + bf16 autocast).
python3 - "$OUT_DIR" $BURN_FLOATS <<'EOF'
import glob, json, os, sys
out, floats = sys.argv[1], sys.argv[2:]
torch_runs = sorted(glob.glob(os.path.join(out, "torch-*.json")))
if not torch_runs:
    sys.exit(0)
for t in torch_runs:
    ref = json.load(open(t))
    for f in floats:
        p = os.path.join(out, f"burn-{f}.json")
        if os.path.exists(p):
            r = json.load(open(p))
            name = os.path.basename(t)[:-5]
            print(f"burn-{f} / {name}: {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x tokens/s")
EOF
