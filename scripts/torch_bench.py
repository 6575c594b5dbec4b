#!/usr/bin/env python3
"""Training-step throughput of PyTorch's LlamaForCausalLM, as the seed miner trains it:
fp32 parameters, bf16 autocast, loss with labels, global-norm clipping at 1.0, AdamW
(betas 0.9/0.95, weight decay 0.1). The reference for tessera's burn trainer
(model/benches/train_step.rs): same shape, batch, sequence length and counting
(batch x seq tokens per step, median step time after warm-up).

    python3 scripts/torch_bench.py                 # the seed's 1.2B, batch 8 x 2048
    python3 scripts/torch_bench.py --attn eager    # naive attention, as burn's model does it

Needs torch with CUDA and transformers. Prints one human line and `RESULT {json}`.
"""

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16", help="autocast dtype (f32: no autocast)")
    p.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                   help="transformers' attention; sdpa is its default (the seed's)")
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("torch_bench: torch sees no CUDA GPU", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=max(2048, args.seq),
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation=args.attn,
    )
    model = LlamaForCausalLM(config).to(device)  # fp32 master weights, as the seed
    model.train()
    params = sum(t.numel() for t in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    n = args.batch * args.seq
    autocast = args.dtype == "bf16"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, losses = [], []
    print(
        f"torch_bench: {config.model_type} vocab {args.vocab}, hidden {args.hidden}, intermediate {args.intermediate}, "
        f"layers {args.layers}, heads {args.heads}; batch {args.batch} x seq {args.seq}; attn {args.attn}, "
        f"autocast {args.dtype}; {args.warmup} warm-up + {args.steps} timed steps",
        file=sys.stderr,
    )
    for step in range(args.warmup + args.steps):
        # The same fixed pseudo-random ids as the burn bench.
        ids = (torch.arange(n, dtype=torch.int64) * 2_654_435_761 + step * 97) % args.vocab
        ids = ids.view(args.batch, args.seq).to(device)
        sync()
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        value = loss.item()
        sync()
        elapsed = time.perf_counter() - start
        tag = "  (warm-up)" if step < args.warmup else ""
        print(f"  step {step:>3}: {elapsed * 1e3:>9.1f} ms  loss {value:.4f}{tag}", file=sys.stderr)
        if step >= args.warmup:
            times.append(elapsed * 1e3)
        losses.append(value)

    median = statistics.median(times)
    tokens_per_s = n / (median / 1e3)
    allocated = reserved = None
    gpu = None
    if device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated(device) / 2**20
        reserved = torch.cuda.max_memory_reserved(device) / 2**20
        gpu = torch.cuda.get_device_name(device)
    backend = f"torch-{args.attn}-{args.dtype}"
    mem = f"peak allocated {allocated:.0f} MiB, reserved {reserved:.0f} MiB" if allocated is not None else "cpu"
    print(
        f"{backend:<18} {tokens_per_s:>10.1f} tokens/s {median:>10.1f} ms/step (min {min(times):.1f}, "
        f"max {max(times):.1f}; {len(times)} steps, {params / 1e6:.1f}M params, {n} tokens/step, "
        f"torch {torch.__version__}, {mem})"
    )
    result = {
        "bench": "train_step",
        "backend": backend,
        "device": args.device,
        "gpu": gpu,
        "torch": torch.__version__,
        "attn": args.attn,
        "autocast": args.dtype,
        "params": params,
        "vocab": args.vocab,
        "hidden": args.hidden,
        "intermediate": args.intermediate,
        "layers": args.layers,
        "heads": args.heads,
        "kv_heads": args.kv_heads or args.heads,
        "batch": args.batch,
        "seq": args.seq,
        "steps": len(times),
        "tokens_per_s": tokens_per_s,
        "ms_per_step": median,
        "ms_min": min(times),
        "ms_max": max(times),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_allocated_mib": allocated,
        "peak_reserved_mib": reserved,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
