#!/usr/bin/env python3
"""Golden fixture for tessera-model's HF interop test (model/tests/suite/hf.rs).

Builds a tiny `LlamaForCausalLM` with fixed random weights, saves it with
`save_pretrained` (safetensors) into model/tests/fixtures/tiny-llama/, runs it on a fixed
token batch and records the logits and the mean causal-LM loss (`labels=input_ids`) in
expected.json. The Rust test imports the directory and must reproduce both: that proves
tessera's forward is HF's function (RoPE convention, GQA, RMSNorm, SwiGLU, untied head).

The committed test needs no Python; this script is only run to (re)generate the fixture:

    python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers safetensors numpy
    /tmp/hfenv/bin/python scripts/hf_fixture.py

The other direction (HF reads what tessera exports):

    TESSERA_HF_EXPORT=/tmp/tessera-export cargo test -p tessera-model --test suite hf::
    /tmp/hfenv/bin/python scripts/hf_fixture.py --check-export /tmp/tessera-export

loads tessera's export with `from_pretrained` and compares HF's logits and loss with the
ones tessera computed (tessera_expected.json, written by the test).
"""

import argparse
import inspect
import json
import math
import pathlib
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "model" / "tests" / "fixtures" / "tiny-llama"

CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped KV: each KV head serves two query heads
    max_position_embeddings=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)

# 2 x 8 token ids; fixed so the fixture never changes by accident.
TOKENS = [
    [1, 17, 42, 5, 63, 0, 29, 8],
    [33, 2, 2, 50, 11, 47, 60, 19],
]

SEED = 20241101


def randomize(model: LlamaForCausalLM) -> None:
    """Weights large enough that every part of the function shows in the logits.

    HF's init (std 0.02) would leave the logits near zero and attention near uniform, so a
    wrong RoPE or GQA mapping could pass; unit-scale activations make them visible.
    """
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1:  # RMSNorm weights: around 1, not exactly 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[1]
                scale = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0  # sharper attention
                p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def run(model: LlamaForCausalLM, tokens):
    model.eval()
    ids = torch.tensor(tokens, dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return out.logits.to(torch.float32), float(out.loss)


def generate() -> None:
    torch.manual_seed(SEED)
    config = LlamaConfig(**CONFIG)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).to(torch.float32)
    randomize(model)
    FIXTURE.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(FIXTURE, **kwargs)
    # Only what the test reads: config.json, model.safetensors, expected.json.
    (FIXTURE / "generation_config.json").unlink(missing_ok=True)

    logits, loss = run(model, TOKENS)
    expected = {
        "generator": "scripts/hf_fixture.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokens": TOKENS,
        "loss": loss,
        "logits": logits.tolist(),
    }
    (FIXTURE / "expected.json").write_text(json.dumps(expected) + "\n")
    for f in FIXTURE.iterdir():
        f.chmod(0o644)  # save_pretrained may leave the weights owner-only
    size = sum(f.stat().st_size for f in FIXTURE.iterdir())
    print(f"wrote {FIXTURE} ({size} bytes); loss {loss:.6f}")


def check_export(directory: pathlib.Path) -> int:
    """Loads tessera's export in transformers and compares with tessera's own numbers."""
    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager", torch_dtype=torch.float32)
    ours = json.loads((directory / "tessera_expected.json").read_text())
    logits, loss = run(model, ours["tokens"])
    diff = (logits - torch.tensor(ours["logits"], dtype=torch.float32)).abs().max().item()
    rel = abs(loss - ours["loss"]) / abs(ours["loss"])
    print(f"HF on tessera's export: max |logit diff| {diff:.3e}, loss {loss:.7f} vs {ours['loss']:.7f} (rel {rel:.2e})")
    return 0 if diff <= 1e-4 and rel <= 1e-5 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-export", type=pathlib.Path, help="check a tessera-exported directory in HF")
    args = parser.parse_args()
    if args.check_export:
        return check_export(args.check_export)
    generate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
