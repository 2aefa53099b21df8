"""The readout backward's two ``dq`` forms (``dla.ops.Tuning.dq_kernel``: ``chunk``, ``pair``) side by side on one GPU:
their gradients against each other, and their times.

Usage (CUDA machine, repo root):
    python scripts/gpu_dq_kernels.py OUT [--T 16384] [--tokens 65536] [--shapes ll_mamba2 h16] [--reps 5]
        [--tuning FIELD=VALUE ...]

For each shape of ``dla bench ops`` and both backbones (DLA-Mamba-2, DLA-GDN; bf16 inputs made as ``dla bench ops``
makes them, ``tau`` = 0.6, C = 30, ``tokens / T`` sequences), runs one ``chunk_dla`` forward + backward per form on
the same inputs and upstream gradient, and writes ``OUT/dq_kernels.json`` and ``OUT/dq_kernels.log``: per form the
median wall time of ``--reps`` unprofiled steps, the CUDA time of every readout-backward kernel and of all kernels
(one profiled step), and per input the relative error of the ``pair`` form's gradient against the ``chunk`` form's.
``--device cpu --dtype float32 --precision fp16`` with ``TRITON_INTERPRET=1`` and a tiny ``--T`` runs it end to end on
a CPU (no times).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from dla.bench.ops import SHAPES, op_inputs
from dla.ops import Tuning, chunk_dla

FORMS = ("chunk", "pair")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def run_form(x, do, tuning: Tuning, args, cuda: bool) -> dict:
    leaves = {n: t for n, t in x.items() if t is not None}
    prec = None if args.precision == "auto" else args.precision

    def step():
        o = chunk_dla(**x, capacity=args.capacity, tau=args.tau, policy="dla", precision=prec, backend="triton",
                      tuning=tuning)[0]
        return torch.autograd.grad(o, list(leaves.values()), do)

    grads = step()  # compiles
    out = {"grads": {n: g.float().cpu() for n, g in zip(leaves, grads)}}
    if not cuda:
        return out
    step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] = kernels.get(e.name, 0.0) + e.device_time / 1e3
    readout = {n: ms for n, ms in kernels.items() if "readout_bwd" in n}
    out.update(wall_ms=statistics.median(walls), walls_ms=walls, kernel_ms_total=sum(kernels.values()),
               readout_bwd_ms=readout, readout_bwd_ms_total=sum(readout.values()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for dq_kernels.json and dq_kernels.log")
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--shapes", nargs="+", default=["ll_mamba2", "h16"], choices=sorted(SHAPES))
    ap.add_argument("--backbones", nargs="+", default=["mamba2", "gdn"], choices=["mamba2", "gdn"])
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--capacity", type=int, default=30)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--reps", type=int, default=5, help="unprofiled steps timed per form (the median is reported)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tuning", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="other fields of dla.ops.Tuning, for both forms")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "dq_kernels.log", "w")

    def say(line: str):
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    changes = {}
    for item in args.tuning:
        name, _, value = item.partition("=")
        changes[name] = None if value.lower() == "none" else (int(value) if value.lstrip("-").isdigit() else value)
    base = Tuning().replace(**changes)
    cuda = args.device == "cuda"
    meta = {"gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": time.strftime("%F"), "T": args.T,
            "tokens": args.tokens, "tau": args.tau, "capacity": args.capacity, "precision": args.precision,
            "dtype": args.dtype, "tuning": dataclasses.asdict(base)}
    say(json.dumps(meta))
    rows = []
    for shape in args.shapes:
        for backbone in args.backbones:
            B = max(args.tokens // args.T, 1)
            x = op_inputs(shape, B, args.T, args.capacity, backbone == "gdn", device=args.device,
                          dtype=getattr(torch, args.dtype))
            for t in x.values():
                if t is not None:
                    t.requires_grad_(True)
            H, V = SHAPES[shape][0], SHAPES[shape][3]
            do = torch.randn(B, args.T, H, V, device=args.device,
                             generator=torch.Generator(device=args.device).manual_seed(1)).to(x["v"].dtype)
            res = {form: run_form(x, do, base.replace(dq_kernel=form), args, cuda) for form in FORMS}
            errs = {n: rel_err(res["pair"]["grads"][n], res["chunk"]["grads"][n]) for n in res["chunk"]["grads"]}
            row = {"shape": shape, "backbone": backbone, "B": B, "grad_rel_err_pair_vs_chunk": errs}
            for form in FORMS:
                row[form] = {k: v for k, v in res[form].items() if k != "grads"}
            rows.append(row)
            say(f"{shape} {backbone} B={B}: gradients pair vs chunk, relative error: "
                + ", ".join(f"d{n} {e:.1e}" for n, e in errs.items()))
            if cuda:
                for form in FORMS:
                    r = row[form]
                    parts = ", ".join(f"{n.split('(')[0]} {ms:.2f}" for n, ms in sorted(r["readout_bwd_ms"].items()))
                    say(f"  {form:5s}: step {r['wall_ms']:.1f} ms wall, kernels {r['kernel_ms_total']:.1f} ms, "
                        f"readout backward {r['readout_bwd_ms_total']:.2f} ms ({parts})")
            del x, do, res
            if cuda:
                torch.cuda.empty_cache()
    (out_dir / "dq_kernels.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    worst = max(max(r["grad_rel_err_pair_vs_chunk"].values()) for r in rows)
    say(f"worst relative gradient error pair vs chunk: {worst:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
