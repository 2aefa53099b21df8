"""Where the segmentation scan's token loop spends its time, by ablation, and the current scan against an older one.

Usage (CUDA machine, repo root):
    git show 2b183ce:dla/ops/dla/scan_triton.py > OLD.py    # the scan before the chunk score tables
    python scripts/gpu_scan_ablate.py OUT.json --old OLD.py [--T 16384] [--variants old base norec ...]

Inputs as ``dla bench ops``' ``ll_mamba2`` shape (48 heads, K = 128, V = 64, bf16-rounded, ``u = v``), 65,536 tokens
per call, policy ``dla``, C = 30, tau = 0.6. Variants: ``base`` (this checkout's scan), ``old`` (the file given),
and timing-only edits of the old file's token loop (decisions may change; they measure, they are not correct):
``norec`` (no per-token live-slot record), ``nomerge`` (no merge), ``noscore`` (a trivial score instead of the
IEEE divisions and square roots), ``fastmath`` (approximate division and square root), ``floor`` (all three
removed). Each row: kernel ms, each program's mean ms per phase (``timing``), slots opened, merges, and whether the
integer fields equal the first variant's.
"""
import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile

import torch

import dla.ops.dla.scan_triton as base_mod
from dla.bench.ops import _inputs, _meta, _time

EDITS = {
    "norec": [(f"            tl.store(o_{a} + p_rec + {b}", f"            if False: tl.store(o_{a} + p_rec + {b}")
              for a in ("starts", "lam") for b in ("b_rank", "o_r")],
    "nomerge": [("if opened & (m == capacity) & (capacity >= 2):",
                 "if opened & (m == capacity) & (capacity >= 2) & (m < 0):")],
    "noscore": [("_score(x, y, z_t, n_el, eps, c_n, sqrt_n_c, USE_DRIFT, USE_RN)", "(x + y + z_t)")],
    "fastmath": [("USE_RN=dt == torch.float32,", "USE_RN=False,")],
}
EDITS["floor"] = EDITS["norec"] + EDITS["nomerge"] + EDITS["noscore"]
EDITS["norec_nomerge"] = EDITS["norec"] + EDITS["nomerge"]
FIELDS = ("boundary", "num_slots", "merged", "starts", "lam_index", "pos", "counts", "m")


def _module(name, text, tmp):
    path = tmp / f"scan_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"scan_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--old", help="an older scan_triton.py (needed by every variant but base)")
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--variants", nargs="+", default=["old", "base"])
    ap.add_argument("--warps", type=int, nargs="+", default=[4])
    args = ap.parse_args(argv)
    T, H, K, V = args.T, 48, 128, 64
    B = max(1, 65536 // T)
    x = _inputs("ll_mamba2", B, T, 30, False)
    N = B * H
    k = x["k"].float().expand(B, T, H, K).transpose(1, 2).reshape(N, T, K).contiguous()
    u = x["v"].float().transpose(1, 2).reshape(N, T, V).contiguous()
    g = x["g"].float().transpose(1, 2).reshape(N, T).contiguous()
    tmp = pathlib.Path(tempfile.mkdtemp())
    old = pathlib.Path(args.old).read_text() if args.old else None
    rows, ref = [], None
    for name in args.variants:
        if name == "base":
            mod = base_mod
        else:
            if old is None:
                sys.exit(f"variant {name}: needs --old")
            text = old
            for a, b in EDITS.get(name, []):
                if a not in text:
                    sys.exit(f"variant {name}: the old file has no {a!r}")
                text = text.replace(a, b)
            mod = _module(name, text, tmp)
        for w in args.warps:
            kw = dict(chunk_size=64, policy="dla", tau=0.6, capacity=30, block_size=64, score="drift", R=30,
                      initial_state=None, num_warps=w)
            ms = _time(lambda: mod.dla_scan_triton(k, u, g, T, **kw), 0.3, reps=3)
            timing = torch.zeros(N, 3, dtype=torch.int64, device="cuda")
            res = mod.dla_scan_triton(k, u, g, T, **kw, timing=timing)
            torch.cuda.synchronize()
            ph = (timing.double().mean(0) / 1e6).tolist()  # ms per program
            row = dict(variant=name, warps=w, T=T, N=N, ms=round(ms, 2), open_ms=round(ph[0], 2),
                       gram_ms=round(ph[1], 2), loop_ms=round(ph[2], 2), loop_us_tok=round(ph[2] * 1e3 / T, 3),
                       opened=int(res.boundary.sum()), merges=int((res.merged >= 0).sum()))
            if ref is None:
                ref = res
            else:
                row["same_as_first"] = all(torch.equal(getattr(res, f), getattr(ref, f)) for f in FIELDS)
                row["score_maxdiff"] = float((res.score - ref.score).abs().max())
            rows.append(row)
            print(json.dumps(row), flush=True)
            pathlib.Path(args.out).write_text(json.dumps({"meta": _meta(65536), "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
