"""Every GPU kernel of one chunk_dla forward + backward, with its time: where the op's time goes, glue included.

Usage (CUDA machine, repo root):
    python scripts/gpu_kernel_table.py OUT.json [--shape ll_mamba2] [--T 16384] [--tokens 65536] [--gdn]
        [--policy dla] [--tau 0.6] [--capacity 30] [--precision auto] [--block-v-du N] [--bwd-warps N]
        [--key-warps N] [--merge-dp 0|1] [--max-tile N] [--ut-tile N] [--recurrence-warps N]
        [--copies16 0|1] [--fwd-warps N] [--grouped-qk 0|1] [--dq-do16 0|1] [--reps N] [--ncu]

Runs the op on ``dla bench ops``' inputs (bf16, the named shape, ``tokens / T`` sequences), warms it up, then
records one forward + backward with ``torch.profiler`` and writes each kernel's CUDA time (summed over its calls)
and share, sorted, with the GPU, the versions, the shape and the date. ``--ncu``: instead of the profiler, runs
the recorded step between ``cudaProfilerStart`` and ``cudaProfilerStop`` once, for
``ncu --profile-from-start off`` (hardware counters of the Triton kernels; see ``scripts/gpu_session.sh``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dla.bench.ops import _inputs
from dla.ops import chunk_dla


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
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--reps", type=int, default=1, help="unprofiled steps timed (the median is reported)")
    ap.add_argument("--block-v-du", type=int, default=None,
                    help="value columns per program of the readout backward's key-side kernels (default: its own)")
    ap.add_argument("--bwd-warps", type=int, default=None,
                    help="warps per program of the readout backward's dq kernel (default: its own)")
    ap.add_argument("--key-warps", type=int, default=None,
                    help="warps per program of the readout backward's key-side kernels (default: its own)")
    ap.add_argument("--merge-dp", type=int, default=None,
                    help="1: dk, du, dP in one key-side launch; 0: dP apart (default: the backward's own)")
    ap.add_argument("--copies16", type=int, default=None,
                    help="1: 16-bit operand copies for the readout kernels in 16-bit modes; 0: float32 (default 1)")
    ap.add_argument("--fwd-warps", type=int, default=None,
                    help="warps per program of the readout forward kernel (default: its own)")
    ap.add_argument("--max-tile", type=int, default=None,
                    help="widest key/value tile of the backbone kernels (default: backbone_triton.MAX_TILE)")
    ap.add_argument("--ut-tile", type=int, default=None,
                    help="widest key tile of the GDN UT backward (default: backbone_gdn_triton.UT_TILE)")
    ap.add_argument("--recurrence-warps", type=int, default=None,
                    help="warps of the GDN state recurrences (default: backbone_gdn_triton.RECURRENCE_WARPS)")
    ap.add_argument("--grouped-qk", type=int, default=None,
                    help="1: the readout and scan kernels read the caller's grouped q, k; 0: the per-head copies "
                         "(default: readout_fwd.GROUPED_QK, scan_triton.GROUPED_KEYS)")
    ap.add_argument("--dq-do16", type=int, default=None,
                    help="1: the readout dq kernel reads a 16-bit copy of do in 16-bit modes (default: its own)")
    args = ap.parse_args(argv)
    from dla.ops.dla import backbone_gdn_triton, backbone_triton, readout_bwd, readout_fwd, scan_triton
    if args.max_tile is not None:
        backbone_triton.MAX_TILE = args.max_tile
    if args.ut_tile is not None:
        backbone_gdn_triton.UT_TILE = args.ut_tile
    if args.recurrence_warps is not None:
        backbone_gdn_triton.RECURRENCE_WARPS = args.recurrence_warps
    for kw, val in (("block_v_du", args.block_v_du), ("num_warps", args.bwd_warps),
                    ("num_warps_key", args.key_warps), ("merge_dP", args.merge_dp), ("copies16", args.copies16),
                    ("dq_do16", args.dq_do16)):
        if val is not None:
            flag = kw in ("merge_dP", "copies16", "dq_do16")
            readout_bwd.boundary_terms_bwd.__kwdefaults__[kw] = bool(val) if flag else val
    if args.grouped_qk is not None:
        readout_fwd.GROUPED_QK = scan_triton.GROUPED_KEYS = bool(args.grouped_qk)
    if args.copies16 is not None:
        readout_fwd.boundary_terms_fwd.__kwdefaults__["copies16"] = bool(args.copies16)
    if args.fwd_warps is not None:
        readout_fwd.boundary_terms_fwd.__kwdefaults__["num_warps"] = args.fwd_warps
    B = max(args.tokens // args.T, 1)
    x = _inputs(args.shape, B, args.T, args.capacity, args.gdn)
    for n in ("q", "k", "v", "g", "lam", "beta"):
        if x[n] is not None:
            x[n].requires_grad_(True)
    prec = None if args.precision == "auto" else args.precision

    def step():
        o = chunk_dla(**x, capacity=args.capacity, tau=args.tau, policy=args.policy, precision=prec,
                      backend="triton")[0]
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
            "block_v_du": args.block_v_du, "bwd_warps": args.bwd_warps,
            "key_warps": args.key_warps, "merge_dp": args.merge_dp, "copies16": args.copies16,
            "fwd_warps": args.fwd_warps, "max_tile": backbone_triton.MAX_TILE,
            "grouped_qk": readout_fwd.GROUPED_QK, "scan_grouped_keys": scan_triton.GROUPED_KEYS,
            "dq_do16": args.dq_do16,
            "ut_tile": backbone_gdn_triton.UT_TILE, "recurrence_warps": backbone_gdn_triton.RECURRENCE_WARPS,
            "inputs": "dla bench ops (bf16)",
            "kernel_ms_total": total,
            "wall_ms_unprofiled": wall_ms, "wall_ms_unprofiled_all": walls}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))
    for r in rows[:30]:
        print(f"{r['ms']:9.2f} ms {100 * r['share']:5.1f}% x{r['calls']:<4d} {r['kernel'][:90]}")


if __name__ == "__main__":
    main()
