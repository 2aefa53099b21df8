"""Time the chunked PyTorch form (``chunk_dla_torch``) stage by stage, forward and forward+backward.

Usage (repo root):
    python scripts/cpu_profile_chunk.py [--device cpu|cuda] [--B 2 --T 2048 --H 4 --K 64 --V 64]
                                        [--capacity 30 --tau 0.6] [--baseline REV] [--no-memory]
e.g. before/after on a GPU at the H100 shape of the measurement that started this (bf16 inputs):
    python scripts/cpu_profile_chunk.py --device cuda --B 16 --T 4096 --H 16 --K 128 --V 128 --dtype bfloat16 \
        --baseline 037f734

Stages, for both backbones (Mamba-2: ``beta=None``; Gated DeltaNet): ``_backbone`` alone, the readout alone
(``_readout`` with a fixed segmentation), the segmentation scan (no gradient), and the whole ``chunk_dla_torch``
(policy ``dla``), each forward (no grad) and forward+backward. Times are the minimum over ``--reps`` runs after one
warm-up (the minimum is the least disturbed by other processes on a shared machine); computation in float32 (inputs
of ``--dtype``; the stages run on their float32 head-major copies, as ``chunk_dla_torch`` does). Peak memory is
what torch allocated above the inputs during one forward+backward: ``torch.cuda.max_memory_allocated`` on CUDA,
the profiler's allocation events on CPU (the profiler records every op: for the whole op, whose scan runs a
per-token loop, the profiler itself held ~8 GB at ``T = 4096``, so on CPU the whole op's memory is measured only
for ``T <= 4096``).

``--baseline REV`` also times ``dla/ops/dla/chunk_torch.py`` and ``readout_fwd.py`` as they were at git revision
``REV`` (loaded under other module names; the rest of the package is the working tree's), and prints both columns.
``--backend triton`` runs the Triton scan and boundary readout (CUDA, or CPU under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_revision(rev: str) -> types.ModuleType:
    """``chunk_torch`` (and ``readout_fwd``) as of git revision ``rev``, importable side by side with the tree's.

    The two files are written to a temporary folder (Triton reads kernel sources from files) under module names
    of their own; the rest of the package is the working tree's.
    """
    tag = "dla_rev_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    folder = Path(tempfile.mkdtemp(prefix=tag))
    for name in ("chunk_torch", "readout_fwd"):
        src = subprocess.run(["git", "show", f"{rev}:dla/ops/dla/{name}.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        for other in ("chunk_torch", "readout_fwd"):
            src = src.replace(f"dla.ops.dla.{other}", f"{tag}_{other}")
        (folder / f"{tag}_{name}.py").write_text(src)
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{tag}_chunk_torch")  # readout_fwd is imported lazily, as in the package


def inputs(B, T, H, K, V, C, gdn, device, decay=0.3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = dict(q=torch.randn(B, T, H, K, generator=gen),
             k=F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1),
             v=torch.randn(B, T, H, V, generator=gen),
             g=-torch.rand(B, T, H, generator=gen) * decay,
             lam=torch.rand(B, T, H, C, generator=gen) + 0.5,
             beta=torch.rand(B, T, H, generator=gen) if gdn else None)
    return {n: (t.to(device, dtype) if t is not None else None) for n, t in x.items()}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps):
    """Minimum milliseconds of ``fn`` over ``reps`` runs after one warm-up."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def peak_mib(fn, device):
    """MiB torch allocated above what was live before ``fn`` (one call)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # private API; newer torch may move it
        return float("nan")
    cur = peak = 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak / 2 ** 20


def stages(ct, x, args, gdn):
    """``({stage: fn(grad)}, slots opened per head)`` for the chunk_torch module ``ct``: ``fn(False)`` runs the
    forward (the caller disables grad), ``fn(True)`` forward and backward."""
    B, T, H, K, V, C, BT = args.B, args.T, args.H, args.K, args.V, args.capacity, 64
    dev = x["v"].device
    pad = (-T) % BT
    head = lambda t: t.float().transpose(1, 2).contiguous()  # noqa: E731
    qh, kh, vh = (F.pad(head(x[n]), (0, 0, 0, pad)) for n in ("q", "k", "v"))
    gh = F.pad(head(x["g"]), (0, pad))
    bh = F.pad(head(x["beta"]), (0, pad)) if gdn else None
    S0 = torch.zeros(B, H, K, V, device=dev)
    kw = dict(policy="dla", capacity=C, tau=args.tau, backend=args.backend)
    leaves = {n: (t.detach().requires_grad_(True) if t is not None else None) for n, t in x.items()}
    bb_leaves = [t.detach().requires_grad_(True) for t in (qh, kh, vh, gh) + ((bh,) if gdn else ())]

    N = B * H
    scan_impl = ct.dla_scan
    if args.backend == "triton":
        from dla.ops.dla.scan_triton import dla_scan_triton as scan_impl

    def scan_fn(grad=False):
        with torch.no_grad():
            return scan_impl(kh.reshape(N, -1, K), u.reshape(N, -1, V), gh.reshape(N, -1), T, chunk_size=BT,
                             policy="dla", tau=args.tau, capacity=C, block_size=64, score="drift", R=C,
                             initial_state=None)

    with torch.no_grad():
        u, P, o_base, S_last, gl = ct._backbone(qh, kh, vh, gh, bh, S0, BT)
    scan = scan_fn()
    starts, lam_index = scan.starts.view(B, H, T, C), scan.lam_index.view(B, H, T, C)
    lamh = head(x["lam"])
    ro_leaves = [t.detach().requires_grad_(True) for t in (qh, kh, u, gl, P, o_base, lamh)]

    def bb(grad):
        args_ = bb_leaves if grad else (qh, kh, vh, gh)
        u, P, o, S, _ = ct._backbone(*args_[:4], (args_[4] if grad else bh) if gdn else None, S0, BT)
        if grad:
            (o.sum() + u.sum() + P.sum() + S.sum()).backward()

    def ro(grad):
        q_, k_, u_, gl_, P_, ob_, lam_ = ro_leaves if grad else (qh, kh, u, gl, P, o_base, lamh)
        seg = F.pad(ct._block_segsum(gl_[..., -1]), (0, 1))
        out = ct._readout(q_, k_, u_, gl_, P_, ob_, lam_, starts, lam_index, seg, None, BT, T, args.backend)
        if grad:
            out.sum().backward()

    def whole(grad):
        o = ct.chunk_dla_torch(**(leaves if grad else x), **kw)[0]
        if grad:
            o.backward(torch.ones_like(o))

    out = {"backbone": bb, "readout": ro, "chunk_dla_torch": whole, "scan (no grad)": scan_fn}
    return {name: fn for name, fn in out.items() if name.split()[0] in args.stages}, \
        float(scan.boundary.float().sum()) / N


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backend", default="torch", choices=["torch", "triton"])
    for name, val in (("B", 2), ("T", 2048), ("H", 4), ("K", 64), ("V", 64), ("capacity", 30)):
        ap.add_argument(f"--{name}", type=int, default=val)
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--decay", type=float, default=0.3, help="log-decays g ~ -decay * U(0, 1)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="input dtype")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--baseline", metavar="REV", help="also time chunk_torch.py as of this git revision")
    ap.add_argument("--backbones", nargs="+", default=["mamba2", "gdn"], choices=["mamba2", "gdn"])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--stages", nargs="+", default=["backbone", "readout", "chunk_dla_torch", "scan"],
                    choices=["backbone", "readout", "chunk_dla_torch", "scan"])
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from dla.ops.dla import chunk_torch
    impls = {"current": chunk_torch}
    if args.baseline:
        impls = {f"at {args.baseline}": load_revision(args.baseline), "current": chunk_torch}
    print(f"device {args.device}, backend {args.backend}, B={args.B} T={args.T} H={args.H} K={args.K} V={args.V} "
          f"C={args.capacity} tau={args.tau} decay={args.decay}, {args.dtype} inputs, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}; ms = min of {args.reps}", flush=True)
    cols = [f"{name} {what}" for name in impls for what in ("fwd ms", "fwd+bwd ms")
            ] + ([f"{name} peak MiB" for name in impls] if not args.no_memory else [])
    cols += ["speed-up fwd", "speed-up fwd+bwd"] if args.baseline else []
    print("| backbone | stage | " + " | ".join(cols) + " |")
    print("| --- | --- |" + " --- |" * len(cols), flush=True)
    for bb in args.backbones:
        gdn = bb == "gdn"
        x = inputs(args.B, args.T, args.H, args.K, args.V, args.capacity, gdn, args.device, args.decay,
                   getattr(torch, args.dtype))
        results, slots = {}, None
        for name, ct in impls.items():
            fns, slots = stages(ct, x, args, gdn)
            for stage, fn in fns.items():
                fwd = timed(lambda: (torch.no_grad()(fn))(False), args.device, args.reps)
                fb = None if stage.startswith("scan") else timed(lambda: fn(True), args.device, args.reps)
                skip = args.no_memory or stage.startswith("scan") or (
                    stage == "chunk_dla_torch" and args.device == "cpu" and args.T > 4096)
                mem = None if skip else peak_mib(lambda: fn(True), args.device)
                results.setdefault(stage, {})[name] = (fwd, fb, mem)
        for stage, per in results.items():
            vals = [f"{per[n][0]:.1f}" if i == 0 else ("-" if per[n][1] is None else f"{per[n][1]:.1f}")
                    for n in impls for i in (0, 1)]
            if not args.no_memory:
                vals += ["-" if per[n][2] is None else f"{per[n][2]:.0f}" for n in impls]
            if args.baseline:
                (b0, b1, _), (c0, c1, _) = per.values()
                vals += [f"{b0 / c0:.1f}x", "-" if b1 is None else f"{b1 / c1:.1f}x"]
            print(f"| {bb} | {stage} | " + " | ".join(vals) + " |", flush=True)
        print(f"({bb}: {slots:.1f} slots opened per head)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
