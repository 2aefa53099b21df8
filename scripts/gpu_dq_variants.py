"""The readout backward (boundary_terms_bwd) in several configurations of its ``dq`` kernel, on one GPU, on the
inputs one ``chunk_dla`` backward hands it: time per configuration and every gradient against the default's.

Usage (CUDA machine, repo root):
    python scripts/gpu_dq_variants.py OUT.json [--shape ll_mamba2] [--T 16384] [--tokens 65536] [--tau 0.6]
        [--capacity 30] [--gdn] [--reps 5] [--variant NAME=JSON ...]

A variant is keyword arguments of :func:`dla.ops.dla.readout_bwd.boundary_terms_bwd` as JSON, e.g.
``warps4='{"num_warps": 4}'`` (commit 141c9dc also had ``split_dq`` and ``maxnreg``); ``default={}`` is always
first. For each: the median of ``--reps`` timed calls (CUDA events, after one more warm-up;
``dla.bench.timing.median_ms``), the CUDA time of each kernel in one profiled call, the peak memory above the inputs,
and the relative error (``|a - b| / |b|``, norms) of each gradient against the default's. The JSON holds the GPU,
the versions, the shape and the date.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dla.bench.timing import median_ms
from dla.bench.ops import _inputs
from dla.ops import chunk_dla
from dla.ops.dla import readout_bwd

NAMES = ("dq", "dk", "du", "dgl", "dP", "ddlam")
DEFAULT_VARIANTS = [  # the eleventh session also timed a split dq kernel (two kernels), 16 warps and maxnreg 128
    "dq_do32={\"dq_do16\": false}",
    "block_v64={\"block_v\": 64}",
    "warps4={\"num_warps\": 4}",
]


def capture(args):
    """The positional and keyword arguments of the one ``boundary_terms_bwd`` call of a ``chunk_dla`` backward."""
    B = max(args.tokens // args.T, 1)
    x = _inputs(args.shape, B, args.T, args.capacity, args.gdn)
    for n in ("q", "k", "v", "g", "lam", "beta"):
        if x[n] is not None:
            x[n].requires_grad_(True)
    seen = []
    real = readout_bwd.boundary_terms_bwd

    def spy(*a, **kw):
        seen.append((a, kw))
        return real(*a, **kw)

    readout_bwd.boundary_terms_bwd = spy
    try:
        o = chunk_dla(**x, capacity=args.capacity, tau=args.tau, backend="triton")[0]
        o.backward(torch.ones_like(o))
    finally:
        readout_bwd.boundary_terms_bwd = real
    assert len(seen) == 1, len(seen)
    return seen[0], B


def rel(a, b):
    if a is None or b is None:
        return None
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", default="ll_mamba2")
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--capacity", type=int, default=30)
    ap.add_argument("--gdn", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variant", nargs="*", default=DEFAULT_VARIANTS)
    args = ap.parse_args(argv)
    (a, kw), B = capture(args)
    variants = [("default", {})] + [(v.split("=", 1)[0], json.loads(v.split("=", 1)[1])) for v in args.variant]
    rows, ref = [], None
    for name, extra in variants:
        call = lambda: readout_bwd.boundary_terms_bwd(*a, **{**kw, **extra})  # noqa: E731
        try:
            got = call()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = median_ms(call, "cuda", reps=args.reps)
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            kernels = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    kernels[e.name[:60]] = kernels.get(e.name[:60], 0.0) + e.device_time / 1e3
            if ref is None:
                ref = got
            errs = {n: rel(g, r) for n, g, r in zip(NAMES, got, ref)}
            row = {"variant": name, "kwargs": extra, "ms": ms,
                   "peak_gib_above_inputs": peak, "rel_err_vs_default": errs,
                   "kernels_ms": dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:6])}
        except Exception as exc:  # a configuration that does not compile or run: reported, the others go on
            row = {"variant": name, "kwargs": extra, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        rows.append(row)
        if "error" in row:
            print(f"{name:<18} ERROR {row['error'][:150]}", flush=True)
        else:
            worst = max((v for v in row["rel_err_vs_default"].values() if v is not None), default=0.0)
            top = ", ".join(f"{k[:26]} {v:.2f}" for k, v in list(row["kernels_ms"].items())[:3])
            print(f"{name:<18} {row['ms']:8.2f} ms  peak {peak:5.2f} GiB  max rel err {worst:.1e}  | {top}",
                  flush=True)
    meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": time.strftime("%F"), "shape": args.shape,
            "T": args.T, "B": B, "backbone": "gdn" if args.gdn else "mamba2", "tau": args.tau,
            "capacity": args.capacity, "precision": kw.get("dot_precision"), "reps": args.reps,
            "inputs": "dla bench ops (bf16), the arguments one chunk_dla backward passes"}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
