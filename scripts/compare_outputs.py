"""Outputs and gradients of ``chunk_dla`` on fixed inputs, saved by one revision and compared with another's.

Usage (repo root of each revision; the same GPU for both):
    python scripts/compare_outputs.py save OUT.pt [--device cuda] [--T 4096] [--tokens 16384]
    python scripts/compare_outputs.py compare A.pt B.pt

``save`` runs DLA on both backbones and every policy at the benchmarks' two head shapes (bf16 inputs, as ``dla bench
ops`` makes them) and the float32 Triton path, forward and backward, and saves each output, gradient and
segmentation. ``compare`` prints, per configuration, the relative error of every float tensor and whether the
integer ones (the decisions) are equal: what a refactoring must leave unchanged. It uses only the public API
(``dla.ops.chunk_dla`` with keyword arguments), so an older revision runs it too.
"""

from __future__ import annotations

import argparse
import sys

import torch


def configs():
    for shape, (H, G, K, V) in (("ll_mamba2", (48, 1, 128, 64)), ("h16", (16, 16, 128, 128))):
        for gdn in (False, True):
            for policy in ("dla", "fenwick", "single", "fixed", "dla_unbounded"):
                for dtype in ("bfloat16", "float32"):
                    if dtype == "float32" and (policy != "dla" or shape != "h16"):
                        continue
                    yield f"{shape}/{'gdn' if gdn else 'mamba2'}/{policy}/{dtype}", (H, G, K, V), gdn, policy, dtype


def save(args):
    from dla.ops import chunk_dla, num_levels

    out = {}
    for name, (H, G, K, V), gdn, policy, dtype in configs():
        B = max(args.tokens // args.T, 1)
        R = num_levels(args.T) if policy == "fenwick" else (1 if policy == "single" else 30)
        gen = torch.Generator(device=args.device).manual_seed(0)
        dt = getattr(torch, dtype)
        T = args.T
        x = dict(q=torch.randn(B, T, G, K, device=args.device, generator=gen).to(dt),
                 k=torch.nn.functional.normalize(torch.randn(B, T, G, K, device=args.device, generator=gen),
                                                 dim=-1).to(dt),
                 v=torch.randn(B, T, H, V, device=args.device, generator=gen).to(dt),
                 g=torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=args.device, generator=gen) + 4),
                 lam=(torch.rand(B, T, H, R, device=args.device, generator=gen) + 0.5).to(dt),
                 beta=torch.rand(B, T, H, device=args.device, generator=gen).to(dt) if gdn else None)
        leaves = {n: t.requires_grad_() for n, t in x.items() if t is not None}
        o, _, seg = chunk_dla(**x, policy=policy, capacity=R, tau=0.6, block_size=64, return_segmentation=True)
        do = torch.randn(o.shape, device=args.device, generator=gen).to(o.dtype)
        grads = torch.autograd.grad(o, list(leaves.values()), do)
        rec = {"o": o.detach().float().cpu()}
        rec.update({f"d{n}": g.float().cpu() for n, g in zip(leaves, grads)})
        rec.update({f"seg.{f}": getattr(seg, f).cpu() for f in ("boundary", "num_slots", "merged", "starts")})
        out[name] = rec
        print(name, "done", flush=True)
    torch.save(out, args.path)


def compare(args):
    a, b = torch.load(args.a), torch.load(args.b)
    worst, differ = 0.0, 0
    for name in a:
        if name not in b:
            print(f"{name}: missing in {args.b}")
            differ += 1
            continue
        cells = []
        for key, x in a[name].items():
            y = b[name][key]
            if x.is_floating_point():
                den = float(y.double().norm())
                err = float((x.double() - y.double()).norm()) / (den if den > 0 else 1.0)
                worst = max(worst, err)
                cells.append(f"{key} {err:.1e}")
            else:
                same = torch.equal(x, y)
                differ += not same
                cells.append(f"{key} {'=' if same else 'DIFFERS'}")
        print(f"{name}: " + ", ".join(cells))
    print(f"worst relative error {worst:.2e}; {differ} integer records differ")
    return 1 if differ else 0


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("path")
    s.add_argument("--device", default="cuda")
    s.add_argument("--T", type=int, default=4096)
    s.add_argument("--tokens", type=int, default=16384)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    return save(args) if args.cmd == "save" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
