"""Where chunk_dla's time goes on a GPU: the stages of the chunked form timed one by one.

Usage (CUDA machine, repo root): python scripts/gpu_profile.py OUT.json [--lengths 4096 16384] [--tokens 65536]
Prints a table and writes OUT.json (GPU, versions, date, shapes, one row per stage).
Stages: the backbone's chunk pass (fwd, fwd+bwd), the segmentation scan (Triton, by warps per program and
policy), the boundary readout (fwd, fwd+bwd), and the whole op (fwd, fwd+bwd, peak memory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dla.bench.ops import _inputs, _meta, _time
from dla.ops import chunk_dla
from dla.ops.dla.chunk_torch import _backbone, _block_segsum, _readout, boundary_candidates
from dla.ops.dla.backbone_gdn_triton import backbone_gdn_triton
from dla.ops.dla.backbone_triton import backbone_triton
from dla.ops.dla.readout_bwd import boundary_terms_bwd
from dla.ops.dla.readout_fwd import boundary_terms_fwd
from dla.ops.dla.scan_triton import dla_scan_triton


def prepare(x, BT=64):
    """chunk_dla_torch's head-major float32 layout."""
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    B, T, H = v.shape[:3]
    rep = H // q.shape[2]
    pad = (-T) % BT
    qh, kh = (F.pad(t.float().repeat_interleave(rep, 2).transpose(1, 2), (0, 0, 0, pad)) for t in (q, k))
    vh = F.pad(v.float().transpose(1, 2), (0, 0, 0, pad))
    gh = F.pad(g.float().transpose(1, 2), (0, pad))
    bh = F.pad(beta.float().transpose(1, 2), (0, pad)) if beta is not None else None
    return qh, kh, vh, gh, bh


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--capacity", type=int, default=30)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--warps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--precisions", nargs="+", default=["ieee", "tf32x3"])
    ap.add_argument("--scan-only", action="store_true", help="time the scans only")
    ap.add_argument("--op-precisions", nargs="+", default=["auto"],
                    help="chunk_dla precision= values timed at tau=0.6 (auto, tf32x3, bf16, ...)")
    ap.add_argument("--readout-tiles", type=lambda a: tuple(int(v) for v in a.split(",")), nargs="+",
                    default=[(64, 4), (64, 8), (128, 8)], help="block_v,num_warps pairs of the readout kernel")
    ap.add_argument("--bwd-tiles", type=lambda a: tuple(int(v) for v in a.split(",")), nargs="*",
                    default=[(32, 8)], help="block_v,num_warps pairs of the readout backward kernels, timed one "
                    "kernel at a time for each of --op-precisions (first backbone only)")
    args = ap.parse_args(argv)
    rows = []
    C = args.capacity

    def add(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)
        Path(args.out).write_text(json.dumps({"meta": _meta(args.tokens), "rows": rows}, indent=1))

    for T in args.lengths:
        B = max(1, args.tokens // T)
        for gdn in (False, True):
            bb = "gdn" if gdn else "mamba2"
            x = _inputs("h16", B, T, C, gdn)
            qh, kh, vh, gh, bh = prepare(x)
            H, K, V = 16, 128, 128
            S0 = torch.zeros(B, H, K, V, device="cuda")
            with torch.no_grad():
                ms = _time(lambda: _backbone(qh, kh, vh, gh, bh, S0, 64), args.budget)
            add(T=T, B=B, backbone=bb, stage="backbone fwd", ms=ms)
            leaves = [t.detach().requires_grad_(True) for t in (qh, kh, vh, gh) + ((bh,) if gdn else ())]

            def bb_step():
                u, P, o, S, gl = _backbone(*leaves[:4], leaves[4] if gdn else None, S0, 64)
                (o.sum() + u.sum() + P.sum()).backward()
            add(T=T, B=B, backbone=bb, stage="backbone fwd+bwd", ms=_time(bb_step, args.budget))
            bb_triton = backbone_gdn_triton if gdn else backbone_triton
            with torch.no_grad():
                ms = _time(lambda: bb_triton(qh, kh, vh, gh, bh, S0, 64), args.budget)
            add(T=T, B=B, backbone=bb, stage="backbone fwd (triton)", ms=ms)

            def bb_step_triton():
                u, P, o, S, gl = bb_triton(*leaves[:4], leaves[4] if gdn else None, S0, 64)
                (o.sum() + u.sum() + P.sum()).backward()
            add(T=T, B=B, backbone=bb, stage="backbone fwd+bwd (triton)", ms=_time(bb_step_triton, args.budget))
            with torch.no_grad():
                u, P, o_base, S_last, gl = _backbone(qh, kh, vh, gh, bh, S0, 64)
            N = B * H
            for policy, tau in (("dla", 0.6), ("dla", 0.0), ("single", 0.6), ("fenwick", 0.6)):
                R = {"single": 1, "fenwick": 16}.get(policy, C)
                ref = None
                grid = [(w, p) for w in args.warps for p in args.precisions]
                for w, prec in (grid if (policy, tau) == ("dla", 0.6) else [(4, "ieee")]):
                    def scan():
                        return dla_scan_triton(kh.reshape(N, -1, K), u.reshape(N, -1, V), gh.reshape(N, -1), T,
                                               chunk_size=64, policy=policy, tau=tau, capacity=R, block_size=64,
                                               score="drift", R=R, initial_state=None, num_warps=w,
                                               dot_precision=prec)
                    res = scan()
                    same = None
                    if ref is None:
                        ref = res
                    else:
                        same = bool(torch.equal(ref.boundary, res.boundary) and torch.equal(ref.starts, res.starts))
                    ms = _time(scan, args.budget, reps=3)
                    add(T=T, B=B, backbone=bb, stage=f"scan {policy} tau={tau:g} warps={w} {prec}", ms=ms,
                        same_as_first=same, slots_per_head=float(res.boundary.sum()) / N)
            if args.scan_only:
                continue
            # readout, with the dla tau=0.6 segmentation
            scan = dla_scan_triton(kh.reshape(N, -1, K), u.reshape(N, -1, V), gh.reshape(N, -1), T, chunk_size=64,
                                   policy="dla", tau=0.6, capacity=C, block_size=64, score="drift", R=C,
                                   initial_state=None)
            starts, lam_index = scan.starts.view(B, H, T, C), scan.lam_index.view(B, H, T, C)
            lamh = x["lam"].float().transpose(1, 2)
            seg = F.pad(_block_segsum(gl[..., -1]), (0, 1))
            with torch.no_grad():
                ms = _time(lambda: _readout(qh, kh, u, gl, P, o_base, lamh, starts, lam_index, seg, None, 64, T,
                                            "triton"), args.budget)
            add(T=T, B=B, backbone=bb, stage="readout fwd (triton)", ms=ms)
            # the forward kernel alone, by value tile and warps
            x_b, lam_b = starts[..., :-1], torch.gather(lamh, -1, lam_index.clamp_min(0))
            real = (lam_index[..., 1:] >= 0) & (x_b >= 0)
            dl_b = torch.where(real, lam_b[..., 1:] - lam_b[..., :-1], 0.)
            cand, jidx, off = boundary_candidates(x_b, real, 64)
            add(T=T, B=B, backbone=bb, stage="distinct candidate chunks per query chunk",
                value=float((F.pad(cand[..., 1:] != cand[..., :-1], (1, 0), value=True)).sum(-1).float().mean()))
            for bv, w in args.readout_tiles:
                ms = _time(lambda: boundary_terms_fwd(qh, kh, u, gl.reshape(B, H, -1), P, seg, cand, jidx, off,
                                                      dl_b, 64, block_v=bv, num_warps=w), args.budget)
                add(T=T, B=B, backbone=bb, stage=f"readout fwd kernel block_v={bv} warps={w}", ms=ms)
            # the backward kernels one at a time (needs masks select them), by precision and tile
            gen = torch.Generator(device="cuda").manual_seed(1)
            dout = torch.randn(B, H, T, V, device="cuda", generator=gen)
            kernels = {"dq": (1, 0, 0, 0, 0, 1), "dk": (0, 1, 0, 0, 0, 0), "du+dP": (0, 0, 1, 0, 1, 0)}
            for prec in (args.op_precisions if not gdn else []):
                p = None if prec == "auto" else prec
                for bv, w in args.bwd_tiles:
                    for kname, needs in kernels.items():
                        ms = _time(lambda: boundary_terms_bwd(dout, qh, kh, u, gl, P, dl_b, x_b, real, cand, jidx,
                                                              off, 64, needs, dot_precision=p, block_v=bv,
                                                              block_v_du=bv, num_warps=w), args.budget)
                        add(T=T, B=B, backbone=bb, stage=f"readout bwd kernel {kname} {prec} block_v={bv} warps={w}",
                            ms=ms)
            rl = [t.detach().requires_grad_(True) for t in (qh, kh, u, P, o_base, lamh)]

            def ro_step():
                out = _readout(rl[0], rl[1], rl[2], gl, rl[3], rl[4], rl[5], starts, lam_index, seg, None, 64, T,
                               "triton")
                out.sum().backward()
            add(T=T, B=B, backbone=bb, stage="readout fwd+bwd (triton fwd, torch bwd)", ms=_time(ro_step, args.budget))
            for tau, prec in [(0.6, p) for p in args.op_precisions] + [(0.0, args.op_precisions[0])]:
                kw = dict(policy="dla", capacity=C, tau=tau, scale=1.0, precision=None if prec == "auto" else prec)
                tag = f"tau={tau:g}" + ("" if prec == "auto" else f" {prec}")
                with torch.no_grad():
                    ms = _time(lambda: chunk_dla(**x, **kw)[0], args.budget)
                add(T=T, B=B, backbone=bb, stage=f"chunk_dla {tag} fwd", ms=ms)
                xs = {n: (t.detach().requires_grad_(True) if t is not None and t.is_floating_point() else t)
                      for n, t in x.items()}
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()

                def step():
                    o = chunk_dla(**xs, **kw)[0]
                    o.backward(torch.ones_like(o))
                ms = _time(step, args.budget)
                add(T=T, B=B, backbone=bb, stage=f"chunk_dla {tag} fwd+bwd", ms=ms,
                    peak_mib=(torch.cuda.max_memory_allocated() - base) / 2 ** 20)
            del x, qh, kh, vh, gh, bh, u, P, o_base, scan, rl, xs
            torch.cuda.empty_cache()
    print("\n| T | B | backbone | stage | ms |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['T']} | {r['B']} | {r['backbone']} | {r['stage']} | {r.get('ms', r.get('value')):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
