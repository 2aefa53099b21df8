"""Where the Triton segmentation scan spends its time on a GPU, per phase (moving the open slot's state, the
chunk's Gram sums, the token loop), for several warps-per-program and dot precisions.

Usage (CUDA machine, repo root): python scripts/gpu_scan_phases.py OUT.json [--lengths 4096 16384] [--tokens 65536]
Inputs as ``dla bench ops`` (h16: H=16, K=V=128, bf16 rounded, u = v), policy dla, C=30, tau=0.6.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dla.bench.ops import _inputs, _meta, _time
from dla.ops.dla.scan_triton import dla_scan_triton


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--precisions", nargs="+", default=["ieee", "tf32x3"])
    ap.add_argument("--capacity", type=int, default=30)
    args = ap.parse_args(argv)
    rows = []
    for T in args.lengths:
        B = max(1, args.tokens // T)
        x = _inputs("h16", B, T, args.capacity, False)
        N, K, V = B * 16, 128, 128
        k = x["k"].float().transpose(1, 2).reshape(N, T, K).contiguous()
        u = x["v"].float().transpose(1, 2).reshape(N, T, V).contiguous()
        g = x["g"].float().transpose(1, 2).reshape(N, T).contiguous()
        ref = None
        for prec in args.precisions:
            for w in args.warps:
                kw = dict(chunk_size=64, policy="dla", tau=0.6, capacity=args.capacity, block_size=64,
                          score="drift", R=args.capacity, initial_state=None, num_warps=w, dot_precision=prec)
                ms = _time(lambda: dla_scan_triton(k, u, g, T, **kw), 0.3, reps=3)
                timing = torch.zeros(N, 3, dtype=torch.int64, device="cuda")
                res = dla_scan_triton(k, u, g, T, **kw, timing=timing)
                torch.cuda.synchronize()
                same = None if ref is None else bool(torch.equal(ref.boundary, res.boundary))
                ref = res if ref is None else ref
                ph = (timing.double().mean(0) / 1e6).tolist()  # ms per program
                row = dict(T=T, B=B, N=N, warps=w, precision=prec, ms=ms, same_decisions=same,
                           open_ms=ph[0], gram_ms=ph[1], loop_ms=ph[2], loop_us_per_token=ph[2] * 1e3 / T,
                           merges_per_head=float((res.merged >= 0).sum()) / N)
                rows.append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).write_text(json.dumps({"meta": _meta(args.tokens), "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
