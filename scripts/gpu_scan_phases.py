"""Where the Triton segmentation scan spends its time on a GPU, per phase (moving the open slot's state, the
chunk's Gram sums, the token loop), for several warps-per-program, dot precisions and state tiles.

Usage (CUDA machine, repo root): python scripts/gpu_scan_phases.py OUT.json [--lengths 4096 16384] [--tokens 65536]
    [--shape h16|ll_mamba2] [--warps 4 8] [--precisions ieee tf32x3] [--tiles 64x32 32x16] [--lazy 1 0]
Inputs as ``dla bench ops`` (bf16 rounded, keys expanded over heads, u = v), policy dla, C=30, tau=0.6.
``--tiles BKxBV``: the sequential kernel's tile of the open slot's state (default: the scan's own choice).
``--lazy``: ``scan_triton.LAZY_OPEN`` settings to time (default: the module's).
``same_decisions`` compares each row's boundaries with the first row's at that length.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from dla.bench.ops import SHAPES, _inputs, _meta, _time
from dla.ops.dla import scan_triton
from dla.ops.dla.scan_triton import dla_scan_triton


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--precisions", nargs="+", default=["ieee", "tf32x3"])
    ap.add_argument("--capacity", type=int, default=30)
    ap.add_argument("--shape", default="h16", choices=sorted(SHAPES))
    ap.add_argument("--tiles", nargs="+", default=["default"], help="BKxBV tiles of the open slot's state")
    ap.add_argument("--lazy", type=int, nargs="+", default=[int(scan_triton.LAZY_OPEN)],
                    help="scan_triton.LAZY_OPEN settings (1: the open slot's state built only when it outlives "
                    "a chunk)")
    args = ap.parse_args(argv)
    rows = []
    for T in args.lengths:
        B = max(1, args.tokens // T)
        H, G, K, V = SHAPES[args.shape]
        x = _inputs(args.shape, B, T, args.capacity, False)
        N = B * H
        k = x["k"].float().repeat_interleave(H // G, 2).transpose(1, 2).reshape(N, T, K).contiguous()
        u = x["v"].float().transpose(1, 2).reshape(N, T, V).contiguous()
        g = x["g"].float().transpose(1, 2).reshape(N, T).contiguous()
        ref = None
        for lazy, prec, w, tile in itertools.product(args.lazy, args.precisions, args.warps, args.tiles):
            scan_triton.LAZY_OPEN = bool(lazy)
            bk, bv = (None, None) if tile == "default" else map(int, tile.split("x"))
            kw = dict(chunk_size=64, policy="dla", tau=0.6, capacity=args.capacity, block_size=64,
                      score="drift", R=args.capacity, initial_state=None, num_warps=w, dot_precision=prec,
                      block_k=bk, block_v=bv)
            ms = _time(lambda: dla_scan_triton(k, u, g, T, **kw), 0.3, reps=3)
            timing = torch.zeros(N, 3, dtype=torch.int64, device="cuda")
            res = dla_scan_triton(k, u, g, T, **kw, timing=timing)
            torch.cuda.synchronize()
            same = None if ref is None else bool(torch.equal(ref.boundary, res.boundary))
            ref = res if ref is None else ref
            ph = (timing.double().mean(0) / 1e6).tolist()  # ms per program
            row = dict(shape=args.shape, T=T, B=B, N=N, lazy=bool(lazy), warps=w, precision=prec, tile=tile, ms=ms,
                       same_decisions=same,
                       open_ms=ph[0], gram_ms=ph[1], loop_ms=ph[2], loop_us_per_token=ph[2] * 1e3 / T,
                       merges_per_head=float((res.merged >= 0).sum()) / N,
                       slots_opened_per_head=float(res.boundary.sum()) / N)
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps({"meta": _meta(args.tokens), "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
