#!/usr/bin/env python3
"""SparseLoCo compression and the decompress-aggregate of 64 peers in PyTorch on CPU: the
reference for tessera's Rust implementation (core/benches/sparseloco.rs, core/src/sparseloco/),
same shape, same stages, same counting (median of --reps runs; compression tensor by tensor,
the per-tensor medians summed). `scripts/sparseloco-bench` runs both and prints the ratio.

    python3 scripts/sparseloco_torch_bench.py --layout layout.json [--dump DIR] [--reps N]

--layout: the JSON the Rust bench writes with TESSERA_BENCH_LAYOUT_OUT (the tensors' names and
shapes, chunk/tile/top_k/beta, reps, peers); without it, --shape 1b2|tiny rebuilds the same
Llama layout here. --dump: a directory the Rust bench filled with TESSERA_BENCH_DUMP; the 64
peers' payloads are read from it (so both sides aggregate the same bytes), and when it holds
the dense files of TESSERA_BENCH_DUMP_DENSE=1 the compression runs on Rust's Δ and error
buffer and both outputs are compared bit for bit with Rust's (`--verify`). Without --dump the
inputs and peers are synthetic, built here the way the Rust bench builds them.

Stages, tensor by tensor as in Rust:
  compress   e <- beta*e + delta; finiteness check; 64x64 tiles (matrices) or 4096-value chunks
             (vectors) as rows; torch.topk of |e| per row; indices sorted; 2-bit quantisation
             (f64 mean/std, 4 bins over +-6 sigma, per-tensor lookup of bin means); overflow
             check; packing (12-bit indices, 2-bit codes); e -= dequantised at kept positions.
  clip       per-peer L2 norm from each tensor's code histogram and lookup (as Rust: bincount
             of the packed code bytes), the median of the admitted norms, min(1, median/norm).
  aggregate  per tensor, all peers at once: unpack indices and codes, dequantise with the
             scaled lookup, then the contributor mean into a dense tensor: scatter_add_ of the
             values and of ones per chunk row (index_add_ at tensor positions where a tile is
             partial), divided; or scatter_reduce_ 'mean' (--agg); zero where nobody chose.
Prints lines in the Rust bench's style and `RESULT stage=<name> seconds=<x>` per stage.
"""

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

MAGIC = b"TESSLOCO"
HEADER_LEN = 22


def llama_layout(shape):
    """ParamLayout::llama of core/src/model/params.rs (HF LlamaForCausalLM, untied lm_head)."""
    if shape == "tiny":
        vocab, h, inter, layers = 4096, 256, 1024, 4
    else:
        vocab, h, inter, layers = 32000, 2048, 8192, 16
    kv = h  # 8 heads, 8 kv heads
    out = [("model.embed_tokens.weight", [vocab, h])]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", [h, h]),
            (p + "self_attn.k_proj.weight", [kv, h]),
            (p + "self_attn.v_proj.weight", [kv, h]),
            (p + "self_attn.o_proj.weight", [h, h]),
            (p + "mlp.gate_proj.weight", [inter, h]),
            (p + "mlp.up_proj.weight", [inter, h]),
            (p + "mlp.down_proj.weight", [h, inter]),
            (p + "input_layernorm.weight", [h]),
            (p + "post_attention_layernorm.weight", [h]),
        ]
    out += [("model.norm.weight", [h]), ("lm_head.weight", [vocab, h])]
    return out


def report(stage, seconds, nbytes, note=""):
    gbs = nbytes / seconds / 1e9 if seconds > 0 else float("inf")
    print(f"{stage:<30} {seconds * 1e3:>9.1f} ms  {gbs:>7.2f} GB/s  {note}", flush=True)


def result(stage, seconds):
    print(f"RESULT stage={stage} seconds={seconds:.6f}", flush=True)


def all_finite(torch, t):
    """Whether every value of `t` is finite: one aminmax pass (NaN propagates to both ends),
    several times faster on CPU than isfinite(t).all()."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def median(runs):
    """As the Rust bench: the upper middle of the sorted runs."""
    return sorted(runs)[len(runs) // 2]


class Geometry:
    """One tensor's chunks (core/src/sparseloco/chunks.rs), as rows of a [chunks, width] view:
    a matrix's 64x64 tiles row-major over the tile grid, a vector's contiguous chunks. Partial
    tiles/chunks are padded in the view and masked out of the selection."""

    def __init__(self, torch, shape, chunk, tile, top_k):
        self.shape = list(shape)
        self.numel = math.prod(shape)
        self.matrix = len(shape) == 2 and self.numel > 0
        i64 = torch.int64
        if self.matrix:
            rows, cols = shape
            self.rows, self.cols, self.tile = rows, cols, tile
            self.tr, self.tc = -(-rows // tile), -(-cols // tile)
            self.count = self.tr * self.tc
            self.width = tile * tile
            self.padded = rows % tile != 0 or cols % tile != 0
            c = torch.arange(self.count, dtype=i64)
            tr, tc = c // self.tc, c % self.tc
            self.heights = (rows - tr * tile).clamp(max=tile)
            self.widths = (cols - tc * tile).clamp(max=tile)
            # Position in the tensor of a chunk's local (row 0, col 0).
            self.base = tr * tile * cols + tc * tile
            self.lens = self.heights * self.widths
        else:
            n = self.numel
            self.len0 = chunk if n > chunk else max(n, 1)
            self.count = -(-n // self.len0) if n else 0
            self.width = self.len0
            self.padded = self.count * self.len0 != n
            c = torch.arange(self.count, dtype=i64)
            self.base = c * self.len0
            self.lens = (n - self.base).clamp(max=self.len0)
        self.k = min(top_k, self.width)
        self.ks = self.lens.clamp(max=top_k)
        self.full = bool((self.ks == self.k).all()) if self.count else True
        self.valid = None
        if self.padded:
            j = torch.arange(self.width, dtype=i64)
            if self.matrix:
                lr, lc = j // self.tile, j % self.tile
                self.valid = (lr[None, :] < self.heights[:, None]) & (lc[None, :] < self.widths[:, None])
            else:
                self.valid = j[None, :] < self.lens[:, None]

    def magnitudes(self, torch, e):
        """|e| as [chunks, width] rows, -1 at padding (never selected before a real value)."""
        t = self.tile if self.matrix else 0
        if self.matrix and not self.padded:
            out = torch.empty(self.tr, self.tc, t, t)
            torch.abs(e.view(self.tr, t, self.tc, t).transpose(1, 2), out=out)  # one pass
            return out.view(self.count, t * t)
        if self.matrix:
            p = e.new_full((self.tr * t, self.tc * t), -1.0)
            p[: self.rows, : self.cols] = e.view(self.rows, self.cols).abs()
            return p.view(self.tr, t, self.tc, t).transpose(1, 2).reshape(self.count, t * t)
        if self.padded:
            p = e.new_full((self.count * self.width,), -1.0)
            p[: self.numel] = e.abs()
            return p.view(self.count, self.width)
        return e.abs().view(self.count, self.width)

    def chunk_layout(self):
        """Whether a [chunks, width] buffer maps onto the tensor by one view (no partial tile)."""
        return not (self.matrix and self.padded)

    def from_chunks(self, torch, rows):
        """A [chunks * width] buffer in chunk layout as the flat tensor (chunk_layout only)."""
        if self.matrix:
            t = self.tile
            return rows.view(self.tr, self.tc, t, t).transpose(1, 2).reshape(-1)
        return rows[: self.numel]

    def place(self, torch, chunk_of, local):
        """(protocol index, position in the tensor) of view column `local` of chunk `chunk_of`."""
        if not self.matrix:
            return local, self.base[chunk_of] + local
        t = self.tile
        if t & (t - 1) == 0:
            lr, lc = local >> (t.bit_length() - 1), local & (t - 1)
        else:
            lr, lc = local // t, local % t
        index = local if not self.padded else lr * self.widths[chunk_of] + lc
        return index, self.base[chunk_of] + lr * self.cols + lc

    def positions(self, torch, chunk_of, index):
        """Position in the tensor of protocol index `index` of chunk `chunk_of` (decoding)."""
        index = index.to(torch.int64)
        if not self.matrix:
            return self.base[chunk_of] + index
        t = self.tile
        if not self.padded and t & (t - 1) == 0:
            lr, lc = index >> (t.bit_length() - 1), index & (t - 1)
        else:
            w = self.widths[chunk_of]
            lr, lc = index // w, index % w
        return self.base[chunk_of] + lr * self.cols + lc


def pack_indices(torch, idx):
    """12-bit indices two per 3 bytes: (a, b) -> [a & 0xff, a >> 8 | (b & 0xf) << 4, b >> 4]."""
    n = idx.numel()
    idx = idx.to(torch.int32)
    if n % 2:
        idx = torch.cat((idx, idx.new_zeros(1)))
    pairs = idx.view(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    out = torch.stack((a & 0xFF, (a >> 8) | ((b & 0xF) << 4), b >> 4), dim=1).to(torch.uint8).reshape(-1)
    return out[:-1] if n % 2 else out


def pack_codes(torch, codes):
    """2-bit codes four per byte, code j at bits 2*(j mod 4) of byte j/4."""
    n = codes.numel()
    if n % 4:
        codes = torch.cat((codes, codes.new_zeros(4 - n % 4)))
    q = codes.view(-1, 4)
    return q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)


def unpack_indices(torch, packed, n):
    """Inverse of pack_indices over the last dim of `packed` ([..., ceil(3n/2)]): int16 [..., n]
    (indices < 4096), built in place in one buffer."""
    if n % 2:
        packed = torch.cat((packed, packed.new_zeros(*packed.shape[:-1], 1)), dim=-1)
    g = packed.view(*packed.shape[:-1], -1, 3)
    out = torch.empty(*g.shape[:-1], 2, dtype=torch.int16)
    a, b = out[..., 0], out[..., 1]
    a.copy_(g[..., 1]).bitwise_and_(0xF).bitwise_left_shift_(8).bitwise_or_(g[..., 0])
    b.copy_(g[..., 2]).bitwise_left_shift_(4).bitwise_or_(g[..., 1] >> 4)
    out = out.view(*packed.shape[:-1], -1)
    return out[..., :n] if n % 2 else out


def unpack_codes(torch, packed, n):
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 3).view(*packed.shape[:-1], -1)[..., :n]


def quantise(torch, values):
    """core/src/sparseloco/compress.rs quantise, in f64: (lookup f32[4], codes uint8)."""
    if values.numel() == 0:
        return torch.zeros(4), torch.zeros(0, dtype=torch.uint8)
    v = values.to(torch.float64)
    n = v.numel()
    mean = v.sum() / n
    std = (((v - mean) ** 2).sum() / n).sqrt()
    lo, hi = mean - 6.0 * std, mean + 6.0 * std
    width = (hi - lo) / 4.0
    if width > 0:
        codes = ((v.clamp(lo, hi) - lo) / width).floor().clamp(max=3.0).to(torch.uint8)
    else:
        codes = torch.zeros(n, dtype=torch.uint8)
    sums = torch.zeros(4, dtype=torch.float64).index_add_(0, codes.long(), v)
    counts = torch.bincount(codes, minlength=4)
    centres = lo + (torch.arange(4, dtype=torch.float64) + 0.5) * width
    lookup = torch.where(counts > 0, sums / counts.clamp(min=1), centres).to(torch.float32)
    return lookup, codes


def compress_tensor(torch, geo, beta, delta, error):
    """One tensor: returns (lookup, counts, packed indices, packed codes); updates `error`."""
    e = error.mul_(beta).add_(delta)  # beta*e + delta, rounded after each op, as Rust
    if geo.count == 0:
        z = torch.zeros(0, dtype=torch.uint8)
        return torch.zeros(4), torch.zeros(0, dtype=torch.int64), z, z
    mag = geo.magnitudes(torch, e)
    if not bool(torch.isfinite(mag.amax())):  # amax propagates NaN
        raise ValueError("beta*e + delta is not finite")
    _, sel = torch.topk(mag, geo.k, dim=1, largest=True, sorted=False)
    sel, _ = torch.sort(sel, dim=1)
    chunk_of = torch.arange(geo.count, dtype=torch.int64).unsqueeze(1).expand_as(sel)
    if geo.full:
        counts = torch.full((geo.count,), geo.k, dtype=torch.int64)
        sel, chunk_of = sel.reshape(-1), chunk_of.reshape(-1)
    else:
        keep = mag.gather(1, sel) >= 0
        counts = keep.sum(1)
        sel, chunk_of = sel[keep], chunk_of[keep]
    index, pos = geo.place(torch, chunk_of, sel)
    vals = e.view(-1)[pos]
    lookup, codes = quantise(torch, vals)
    deq = lookup[codes.long()]
    if not (all_finite(torch, lookup) and all_finite(torch, vals - deq)):
        raise ValueError("quantising overflows f32")
    e.view(-1).index_add_(0, pos, deq, alpha=-1)
    return lookup, counts, pack_indices(torch, index), pack_codes(torch, codes)


def rust_values(torch, gen, n, scale):
    """The Rust bench's 'roughly normal' values: the sum of two uniforms, in [-2, 2) * scale."""
    return (torch.rand(n, generator=gen) + torch.rand(n, generator=gen) - 1.0) * (2.0 * scale)


def read_f32(torch, path, count):
    size = os.path.getsize(path)
    if size != 4 * count:
        sys.exit(f"{path}: {size} bytes, expected {4 * count}")
    return torch.from_file(str(path), shared=False, size=count, dtype=torch.float32)


def read_payload(torch, path, geos, settings):
    """Parses a payload (module doc's byte layout) into per-tensor (lookup, counts, idx, codes)."""
    size = os.path.getsize(path)
    buf = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    raw = bytes(buf[:HEADER_LEN].tolist())
    if raw[:8] != MAGIC:
        sys.exit(f"{path}: not a SparseLoCo payload")
    chunk, tile, top_k, count = (
        int.from_bytes(raw[10:12], "little"),
        int.from_bytes(raw[12:14], "little"),
        int.from_bytes(raw[14:18], "little"),
        int.from_bytes(raw[18:22], "little"),
    )
    if (chunk, tile, top_k, count) != (settings["chunk"], settings["tile"], settings["top_k"], len(geos)):
        sys.exit(f"{path}: header {(chunk, tile, top_k, count)} does not match the layout")
    at, out = HEADER_LEN, []
    for geo in geos:
        lookup = buf[at : at + 16].clone().view(torch.float32)
        at += 16
        counts = buf[at : at + 2 * geo.count].clone().view(torch.int16).to(torch.int64)
        at += 2 * geo.count
        n = int(counts.sum())
        ni, nc = n + (n + 1) // 2, (n + 3) // 4
        idx, codes = buf[at : at + ni], buf[at + ni : at + ni + nc]
        at += ni + nc
        out.append((lookup, counts, idx, codes))
    if at != size:
        sys.exit(f"{path}: {size - at} trailing bytes")
    return out


def payload_len(parts):
    return HEADER_LEN + sum(16 + 2 * c.numel() + i.numel() + k.numel() for _, c, i, k in parts)


class Peers:
    """All peers' payloads decoded into one layout per tensor: lookups [P, 4], counts [P, C],
    and the packed indices and codes stacked [P, bytes] where every peer kept the same number
    (else a list per peer). Built before timing, as Rust's from_bytes is."""

    def __init__(self, torch, per_peer, geos):
        self.count = len(per_peer)
        self.received = sum(payload_len(p) for p in per_peer)
        self.tensors = []
        for t in range(len(geos)):
            parts = [p[t] for p in per_peer]
            lookups = torch.stack([p[0] for p in parts])
            counts = torch.stack([p[1] for p in parts])
            ns = [int(c.sum()) for c in counts]
            same = all(torch.equal(counts[0], c) for c in counts[1:])
            if same:
                idx = torch.stack([p[2] for p in parts])
                codes = torch.stack([p[3] for p in parts])
            else:
                idx, codes = [p[2].clone() for p in parts], [p[3].clone() for p in parts]
            self.tensors.append((lookups, counts, ns, same, idx, codes))


def synthetic_peers(torch, gen, geos, real, count):
    """The Rust bench's synthetic peers: per chunk one random index per stratum of len/k,
    random codes, the real payload's lookups times 0.5 + p/count. Peer 0 is `real`."""
    out = [real]
    for p in range(1, count):
        gain = 0.5 + p / count
        parts = []
        for geo, (lookup, counts, _, _) in zip(geos, real):
            ks = geo.ks
            chunk_of = torch.repeat_interleave(torch.arange(geo.count), ks)
            j = torch.arange(int(ks.sum())) - torch.repeat_interleave(torch.cumsum(ks, 0) - ks, ks)
            stride = geo.lens[chunk_of] // ks[chunk_of]
            r = torch.randint(0, 1 << 62, (j.numel(),), generator=gen)
            idx = j * stride + r % stride
            codes = ((r >> 32) & 3).to(torch.uint8)
            parts.append((lookup * gain, ks.clone(), pack_indices(torch, idx), pack_codes(torch, codes)))
        out.append(parts)
    return out


def clip(torch, peers):
    """Per-peer norms from code histograms, median of the admitted, min(1, median / norm)."""
    P = peers.count
    table = torch.tensor([[sum(((b >> (2 * j)) & 3) == c for j in range(4)) for c in range(4)] for b in range(256)],
                         dtype=torch.float64)
    square = torch.zeros(P, dtype=torch.float64)
    for lookups, _, ns, _, _, codes in peers.tensors:
        # Byte histograms, peer by peer (bincount reads the uint8 bytes as they are).
        by_byte = torch.stack([torch.bincount(c, minlength=256) for c in codes])
        nbytes = torch.tensor([c.numel() for c in codes], dtype=torch.float64)
        hist = by_byte.to(torch.float64) @ table
        hist[:, 0] -= 4 * nbytes - torch.tensor(ns, dtype=torch.float64)  # padding codes
        l2 = lookups.to(torch.float64) ** 2
        for b in range(4):  # Rust's order: tensor by tensor, code by code
            square += hist[:, b] * l2[:, b]
    norms = square.sqrt()
    admitted = torch.isfinite(norms) & (norms > 0)
    valid = norms[admitted].sort().values
    m = valid.numel()
    if m == 0:
        return norms, None, [None] * P
    med = valid[m // 2] if m % 2 else (valid[m // 2 - 1] + valid[m // 2]) / 2
    scales = (med / norms).clamp(max=1.0).to(torch.float32)
    return norms, float(med), [float(s) if a else None for s, a in zip(scales, admitted)]


def aggregate_tensor(torch, geo, tensor, scales, how):
    """Contributor mean of one tensor over the admitted peers."""
    lookups, counts, ns, same, idx_b, codes_b = tensor
    admitted = [p for p, s in enumerate(scales) if s is not None]
    out = torch.zeros(geo.numel)
    if not admitted or geo.count == 0:
        return out
    s = torch.tensor([scales[p] for p in admitted], dtype=torch.float32)
    lut = s.unsqueeze(1) * lookups[admitted]  # f32, as Rust's s * v
    if same:
        if len(admitted) < len(scales):
            idx_b, codes_b = idx_b[admitted], codes_b[admitted]
        n = ns[0]
        index = unpack_indices(torch, idx_b, n)  # [P, n]
        codes = unpack_codes(torch, codes_b, n)
        vals = lut.gather(1, codes.to(torch.int64))
        if geo.chunk_layout() and geo.full:
            # Rows = chunks: scatter along dim 1 of [chunks, width] (torch parallelises over
            # rows; a row's sums stay in cache), each row's entries peer by peer so every
            # position still sums its peers in order; then one copy to the tensor's layout.
            P, C, k = index.shape[0], geo.count, geo.k
            rows_idx = torch.empty(C, P, k, dtype=torch.int64)
            rows_idx.copy_(index.view(P, C, k).transpose(0, 1))  # one pass: transpose + widen
            rows_val = vals.view(P, C, k).transpose(0, 1).reshape(C, P * k)
            rows_idx = rows_idx.view(C, P * k)
            if how == "scatter_reduce":
                rows = torch.zeros(C, geo.width).scatter_reduce_(1, rows_idx, rows_val, reduce="mean",
                                                                 include_self=False)
            else:
                rows = torch.zeros(C, geo.width).scatter_add_(1, rows_idx, rows_val)
                count = torch.zeros(C, geo.width).scatter_add_(1, rows_idx, torch.ones(1, 1).expand(C, P * k))
                rows.div_(count.clamp_(min=1.0))  # untouched positions: 0 / 1
            return geo.from_chunks(torch, rows.view(-1))
        if geo.full:
            chunk_of = torch.arange(n, dtype=torch.int64) // geo.k
        else:
            chunk_of = torch.repeat_interleave(torch.arange(geo.count), counts[0])
        pos = geo.positions(torch, chunk_of.unsqueeze(0), index).view(-1)
        vals = vals.view(-1)
    else:
        ps, vs = [], []
        for row, p in enumerate(admitted):
            n = ns[p]
            index = unpack_indices(torch, idx_b[p], n)
            codes = unpack_codes(torch, codes_b[p], n)
            chunk_of = torch.repeat_interleave(torch.arange(geo.count), counts[p])
            ps.append(geo.positions(torch, chunk_of, index))
            vs.append(lut[row][codes.to(torch.int64)])
        pos, vals = torch.cat(ps), torch.cat(vs)
    return mean_of(torch, how, geo.numel, pos, vals)


def mean_of(torch, how, numel, pos, vals):
    """The contributor mean: per position, the sum of its values over their count; 0 if none."""
    out = torch.zeros(numel)
    if how == "scatter_reduce":
        return out.scatter_reduce_(0, pos, vals, reduce="mean", include_self=False)
    total = out.index_add_(0, pos, vals)
    count = torch.zeros(numel).index_add_(0, pos, torch.ones(1).expand(pos.numel()))
    return total.div_(count.clamp_(min=1.0))  # untouched positions: 0 / 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", help="JSON from TESSERA_BENCH_LAYOUT_OUT")
    p.add_argument("--shape", choices=["1b2", "tiny"], default=None,
                   help="without --layout: rebuild this Llama layout (default: $TESSERA_BENCH_SHAPE or 1b2)")
    p.add_argument("--dump", help="directory written by TESSERA_BENCH_DUMP (peers; dense files => verify)")
    p.add_argument("--reps", type=int, default=None, help="default: the layout's, else $TESSERA_BENCH_REPS or 3")
    p.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    p.add_argument("--agg", choices=["scatter_add", "scatter_reduce", "both"], default="both",
                   help="contributor mean by scatter_add_ of values and counts, by scatter_reduce_ 'mean', or "
                        "time both and report the faster as the stage (default)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()

    try:
        import torch
    except ImportError:
        sys.exit("sparseloco_torch_bench: PyTorch is not installed (pip install torch)")

    if args.layout:
        spec = json.loads(Path(args.layout).read_text())
        names = [(t["name"], t["shape"]) for t in spec["tensors"]]
        settings = {k: spec[k] for k in ("chunk", "tile", "top_k", "beta")}
        peer_count, shape_name = spec["peers"], spec["shape"]
        default_reps = spec["reps"]
    else:
        shape_name = args.shape or ("tiny" if os.environ.get("TESSERA_BENCH_SHAPE") == "tiny" else "1b2")
        names = llama_layout(shape_name)
        settings = {"chunk": 4096, "tile": 64, "top_k": 64, "beta": 0.95}
        peer_count = 64
        default_reps = max(1, int(os.environ.get("TESSERA_BENCH_REPS", "3") or 3))
    reps = max(1, args.reps or default_reps)
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or cores
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(args.seed)

    geos = [Geometry(torch, s, settings["chunk"], settings["tile"], settings["top_k"]) for _, s in names]
    total = sum(g.numel for g in geos)
    dense = 4 * total
    dump = Path(args.dump) if args.dump else None
    verify = bool(dump and (dump / "delta.f32").exists())
    print(
        f"torch {torch.__version__}: {total} parameters in {len(geos)} tensors, chunk {settings['chunk']} "
        f"tile {settings['tile']} k {settings['top_k']}, {cores} cores (torch {threads} threads, OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), {reps} reps"
        + (f", inputs from {dump} (verify)" if verify else ""),
        flush=True,
    )

    # 1. Compress tensor by tensor.
    beta = settings["beta"]
    if verify:
        delta_all = read_f32(torch, dump / "delta.f32", total)
        start_all = read_f32(torch, dump / "error-start.f32", total)
        end_all = read_f32(torch, dump / "error-end.f32", total)
    t_compress, parts, error_mismatch, at = 0.0, [], 0, 0
    for geo in geos:
        n = geo.numel
        if verify:
            delta, start = delta_all[at : at + n], start_all[at : at + n]
        else:
            delta, start = rust_values(torch, gen, n, 1e-3), rust_values(torch, gen, n, 1e-4)
        runs, out = [], None
        for _ in range(reps):
            error = start.clone()
            begin = time.perf_counter()
            out = compress_tensor(torch, geo, beta, delta, error)
            runs.append(time.perf_counter() - begin)
        t_compress += median(runs)
        parts.append(out)
        if verify:
            error_mismatch += int((error.view(torch.int32) != end_all[at : at + n].view(torch.int32)).sum())
        at += n
    kept = sum(int(c.sum()) for _, c, _, _ in parts)
    report("compress (tensor by tensor)", t_compress, dense, f"{kept} kept")
    result("compress", t_compress)
    size = payload_len(parts)
    print(f"payload: {size} bytes ({size / 1e6:.1f} MB) vs dense f32 {dense} bytes ({dense / 1e6:.1f} MB): "
          f"1/{dense / size:.1f}, {size * 8 / kept:.2f} bits per kept value", flush=True)

    # 2. The peers: Rust's bytes from --dump, else synthetic ones built the same way.
    if dump:
        per_peer = [read_payload(torch, dump / f"peer-{q:02}.bin", geos, settings) for q in range(peer_count)]
    else:
        per_peer = synthetic_peers(torch, gen, geos, parts, peer_count)
    peers = Peers(torch, per_peer, geos)
    if verify:
        rust = per_peer[0]
        bad = [
            names[t][0]
            for t, (a, b) in enumerate(zip(parts, rust))
            if not (torch.equal(a[0].view(torch.int32), b[0].view(torch.int32)) and torch.equal(a[1], b[1])
                    and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]))
        ]
        print(f"verify compress: {len(geos) - len(bad)} of {len(geos)} tensors' payloads equal Rust's bit for bit"
              + (f" (differ: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''})" if bad else "")
              + f"; error buffer after: {error_mismatch} of {total} values differ", flush=True)
        del delta_all, start_all, end_all
    del per_peer, parts

    # 3. Clip, then the contributor mean tensor by tensor.
    runs, c = [], None
    for _ in range(reps):
        begin = time.perf_counter()
        c = clip(torch, peers)
        runs.append(time.perf_counter() - begin)
    t_clip = median(runs)
    norms, med, scales = c
    report(f"clip ({peers.count} norms)", t_clip, peers.received, f"median {med or 0.0:.4e}")

    ways = ["scatter_add", "scatter_reduce"] if args.agg == "both" else [args.agg]
    timed = {}
    for how in ways:
        runs = []
        for _ in range(reps):
            begin = time.perf_counter()
            finite = all(all_finite(torch, aggregate_tensor(torch, g, t, scales, how))
                         for g, t in zip(geos, peers.tensors))
            runs.append(time.perf_counter() - begin)
        assert finite
        timed[how] = median(runs)
        report(f"aggregate {peers.count} peers ({how})", timed[how], peers.received,
               f"dense output {dense / 1e6:.1f} MB")
    best = min(timed, key=timed.get)
    t_agg = timed[best]
    report(f"decompress-aggregate {peers.count}", t_agg + t_clip, peers.received, f"clip + aggregate ({best})")
    result("clip", t_clip)
    result("aggregate", t_agg)
    result("decompress_aggregate", t_agg + t_clip)
    for how, t in timed.items():
        result(f"aggregate_{how}", t)

    if verify:
        rust_med = (dump / "clip-median.txt").read_text().strip()
        rust_out = read_f32(torch, dump / "aggregate.f32", total)
        for how in ways:
            at, differ, worst = 0, 0, 0.0
            for g, t in zip(geos, peers.tensors):
                out = aggregate_tensor(torch, g, t, scales, how)
                ref = rust_out[at : at + g.numel]
                ne = out.view(torch.int32) != ref.view(torch.int32)
                differ += int(ne.sum())
                if bool(ne.any()):
                    worst = max(worst, float(((out - ref).abs() / ref.abs().clamp(min=1e-30))[ne].max()))
                at += g.numel
            print(f"verify aggregate ({how}): clip median {med!r} (Rust {rust_med}); {differ} of {total} "
                  f"values differ from Rust's" + (f", worst relative difference {worst:.2e}" if differ else ""),
                  flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(f"peak RSS {peak:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
