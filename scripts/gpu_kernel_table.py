"""Every GPU kernel of one chunk_dla forward + backward, with its time: where the op's time goes, glue included.

Usage (CUDA machine, repo root):
    python scripts/gpu_kernel_table.py OUT.json [--shape ll_mamba2] [--T 16384] [--tokens 65536] [--gdn]
        [--policy dla] [--tau 0.6] [--capacity 30] [--precision auto] [--tuning FIELD=VALUE ...] [--reps N]
        [--ncu]

Runs the op on ``dla bench ops``' inputs (bf16, the named shape, ``tokens / T`` sequences), warms it up, then
records one forward + backward with ``torch.profiler`` and writes each kernel's CUDA time (summed over its calls)
and share, sorted, with the GPU, the versions, the shape, the tuning and the date. ``--tuning`` changes fields of
:class:`dla.ops.Tuning` (e.g. ``--tuning max_tile=32 key_warps=4``), for A/B runs of launch parameters.
``--ncu``: instead of the profiler, runs the recorded step between ``cudaProfilerStart`` and ``cudaProfilerStop``
once, for ``ncu --profile-from-start off`` (hardware counters of the Triton kernels; ``scripts/gpu_ncu_source.sh``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from dla.bench.ops import op_inputs
from dla.ops import Tuning, chunk_dla


def parse_tuning(items) -> Tuning:
    """``["field=value", ...]`` as a :class:`Tuning` (``None`` for ``value`` ``none``; integers, else strings)."""
    changes = {}
    for item in items or ():
        name, _, value = item.partition("=")
        changes[name] = None if value.lower() == "none" else (int(value) if value.lstrip("-").isdigit() else value)
    return Tuning().replace(**changes)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="ll_mamba2")
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--gdn", action="store_true")
    ap.add_argument("--policy", default="dla")
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--capacity", type=int, default=30)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--tuning", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="fields of dla.ops.Tuning to change (launch parameters)")
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--reps", type=int, default=1, help="unprofiled steps timed (the median is reported)")
    args = ap.parse_args(argv)
    tuning = parse_tuning(args.tuning)
    B = max(args.tokens // args.T, 1)
    x = op_inputs(args.shape, B, args.T, args.capacity, args.gdn)
    for n in ("q", "k", "v", "g", "lam", "beta"):
        if x[n] is not None:
            x[n].requires_grad_(True)
    prec = None if args.precision == "auto" else args.precision

    def step():
        o = chunk_dla(**x, capacity=args.capacity, tau=args.tau, policy=args.policy, precision=prec,
                      backend="triton", tuning=tuning)[0]
        o.backward(torch.ones_like(o))

    for _ in range(2):  # compile and warm up
        step()
    torch.cuda.synchronize()
    if args.ncu:
        torch.cuda.cudart().cudaProfilerStart()
        step()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        return
    walls = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
    wall_ms = statistics.median(walls)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            d = kernels.setdefault(e.name, {"ms": 0.0, "calls": 0})
            d["ms"] += e.device_time / 1e3
            d["calls"] += 1
    total = sum(d["ms"] for d in kernels.values())
    rows = sorted(({"kernel": n[:120], **d, "share": d["ms"] / total} for n, d in kernels.items()),
                  key=lambda r: -r["ms"])
    meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": time.strftime("%F"), "shape": args.shape,
            "T": args.T, "B": B, "backbone": "gdn" if args.gdn else "mamba2", "policy": args.policy,
            "tau": args.tau, "capacity": args.capacity, "precision": args.precision,
            "tuning": dataclasses.asdict(tuning), "inputs": "dla bench ops (bf16)", "kernel_ms_total": total,
            "wall_ms_unprofiled": wall_ms, "wall_ms_unprofiled_all": walls}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))
    for r in rows[:30]:
        print(f"{r['ms']:9.2f} ms {100 * r['share']:5.1f}% x{r['calls']:<4d} {r['kernel'][:90]}")


if __name__ == "__main__":
    main()
