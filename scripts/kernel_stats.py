"""Registers, spills and shared memory of every Triton kernel chunk_dla launches, compiled for a GPU without one.

Usage (any machine with the dev install; no GPU needed): python scripts/kernel_stats.py [--arch 90] [--K 128]
    [--V 64] [--dot bf16] [--max-tile 32] ...

1. Under ``TRITON_INTERPRET=1`` (a child process) it runs ``chunk_dla`` forward and backward at the given head
   sizes on a short input, for both backbones, and records each kernel launch: the arguments' types, the
   constexpr values and ``num_warps``.
2. It compiles each distinct launch with Triton for ``sm_<arch>`` (``triton.compile`` with a ``GPUTarget``) and runs
   the ``ptxas`` Triton ships with ``-v``, printing registers per thread, spill stores/loads (bytes) and shared
   memory per kernel. Spills are what to look at first when a kernel is slow on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_DTYPES = {"torch.float32": "fp32", "torch.float64": "fp64", "torch.float16": "fp16", "torch.bfloat16": "bf16",
           "torch.int64": "i64", "torch.int32": "i32", "torch.int16": "i16", "torch.int8": "i8", "torch.bool": "i1"}


def record(args) -> list:
    """Child process: run the op under the interpreter and return the launches."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from dla.ops import chunk_dla

    launches, seen = [], set()
    run = InterpretedFunction.run

    def spy(self, *a, grid, warmup, **kw):
        names = self.arg_names
        entry = {"module": self.fn.__module__, "name": self.fn.__name__, "args": {}, "num_warps": kw.get("num_warps", 4)}
        for n, v in list(zip(names, a)) + [(k, v) for k, v in kw.items() if k in names]:
            if isinstance(v, torch.Tensor):
                entry["args"][n] = "*" + _DTYPES[str(v.dtype)]
            elif isinstance(v, bool) or v is None or isinstance(v, str):
                entry["args"][n] = {"const": v}
            elif isinstance(v, int):
                entry["args"][n] = {"int": v}
            elif isinstance(v, float):
                entry["args"][n] = {"float": v}
            else:
                entry["args"][n] = {"const": str(v)}
        key = json.dumps({k: v for k, v in entry.items()}, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            launches.append(entry)
        return run(self, *a, grid=grid, warmup=warmup, **kw)

    InterpretedFunction.run = spy
    from dla.ops import Tuning

    tuning = Tuning(max_tile=args.max_tile) if args.max_tile else None
    torch.manual_seed(0)
    B, T, H, K, V, C = 1, args.T, 1, args.K, args.V, args.C
    for gdn in (False, True):
        q = torch.randn(B, T, H, K)
        k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
        v = torch.randn(B, T, H, V)
        g = -torch.rand(B, T, H) * 0.05
        lam = torch.rand(B, T, H, C) + 0.5
        beta = torch.rand(B, T, H) if gdn else None
        xs = [t.requires_grad_() for t in (q, k, v, g, lam) + ((beta,) if gdn else ())]
        # fp16 marks the kernels that take a 16-bit mode (the interpreter refuses bf16); the others record ieee
        o, _ = chunk_dla(*xs[:5], xs[5] if gdn else None, capacity=C, tau=0.0, backend="triton", tuning=tuning,
                         chunk_size=args.chunk_size, precision="fp16" if args.dot in ("bf16", "fp16") else "ieee")
        o.sum().backward()
    return launches


def compile_stats(launches: list, arch: int, dot: str = "tf32x3") -> list:
    """Compile each launch for sm_<arch> and read ptxas' resource usage. ``dot``: the ``DOT`` constexpr (product
    precision) the GPU path passes. For a 16-bit ``dot`` the launches come from a ``precision="fp16"`` run: kernels
    recorded with ``fp16`` get ``dot``, the others (the scan, Gated DeltaNet's forward UT transform and state
    recurrence) ``tf32x3``, as on the GPU."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    out = []
    for e in launches:
        fn = getattr(importlib.import_module(e["module"]), e["name"])
        sig, consts = {}, {}
        for p in fn.params:
            a = e["args"].get(p.name)
            if p.is_constexpr:
                val = a.get("const", a.get("int", a.get("float"))) if isinstance(a, dict) else a
                if p.name == "DOT":
                    val = dot if dot not in ("bf16", "fp16") or val == "fp16" else "tf32x3"
                sig[p.name] = "constexpr"
                consts[(fn.arg_names.index(p.name),)] = val
            elif isinstance(a, str):
                sig[p.name] = a
            elif "int" in a:
                sig[p.name] = "i32" if abs(a["int"]) < 2 ** 31 else "i64"
            elif "float" in a:
                sig[p.name] = "fp32"
            else:
                sig[p.name] = "constexpr"
                consts[(fn.arg_names.index(p.name),)] = a.get("const")
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=e["num_warps"]))
        with tempfile.TemporaryDirectory() as d:
            ptx = Path(d) / "k.ptx"
            ptx.write_text(ck.asm["ptx"])
            res = subprocess.run([str(ptxas), f"-arch=sm_{arch}a", "-v", str(ptx), "-o", str(Path(d) / "k.cubin")],
                                 capture_output=True, text=True).stderr
        regs = re.search(r"Used (\d+) registers", res)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res)
        out.append({"kernel": e["name"], "num_warps": e["num_warps"],
                    "constexprs": {k: v for k, v in e["args"].items() if isinstance(v, dict) and "const" in v},
                    "registers": int(regs.group(1)) if regs else None,
                    "spill_store_bytes": int(spill.group(1)) if spill else None,
                    "spill_load_bytes": int(spill.group(2)) if spill else None,
                    "shared_bytes": ck.metadata.shared})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100)")
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--V", type=int, default=128)
    ap.add_argument("--C", type=int, default=30)
    ap.add_argument("--T", type=int, default=130, help="tokens of the recorded run (any; shapes set the kernels)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--dot", default="tf32x3", choices=["tf32x3", "ieee", "tf32", "bf16", "fp16"], help="products as on the GPU")
    ap.add_argument("--max-tile", type=int, default=None,
                    help="the backbone kernels' widest tile (dla.ops.Tuning.max_tile; default: the default tuning)")
    ap.add_argument("--record-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)
    if args.record_only:
        print(json.dumps(record(args)))
        return 0
    env = dict(os.environ, TRITON_INTERPRET="1")
    child = subprocess.run([sys.executable, __file__, "--record-only", *(argv or sys.argv[1:])], env=env,
                           capture_output=True, text=True)
    if child.returncode:
        sys.stderr.write(child.stderr)
        return child.returncode
    launches = json.loads(child.stdout.strip().splitlines()[-1])
    rows = compile_stats(launches, args.arch, args.dot)
    print(f"sm_{args.arch}, K={args.K}, V={args.V}, C={args.C}, chunk {args.chunk_size}, products {args.dot}")
    print(f"{'kernel':<32} {'warps':>5} {'regs':>5} {'spill st/ld B':>15} {'shared B':>9}")
    for r in rows:
        print(f"{r['kernel']:<32} {r['num_warps']:>5} {r['registers']!s:>5} "
              f"{r['spill_store_bytes']!s:>7}/{r['spill_load_bytes']!s:<7} {r['shared_bytes']:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
