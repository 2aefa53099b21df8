"""Time the chunked form stage by stage, forward and forward+backward, on either backend.

Usage (repo root):
    python scripts/cpu_profile_chunk.py [--device cpu|cuda] [--backend torch|triton] [--B 2 --T 2048 --H 4 --K 64
                                        --V 64] [--capacity 30 --tau 0.6] [--no-memory]
e.g. on a GPU at the H100 shape with bf16 inputs:
    python scripts/cpu_profile_chunk.py --device cuda --backend triton --B 16 --T 4096 --H 16 --K 128 --V 128 \
        --dtype bfloat16

Stages, for both backbones (Mamba-2: ``beta=None``; Gated DeltaNet), through the stage functions of
``dla.ops.chunked`` or ``dla.ops.triton`` (head-major, as the tests drive them: ``tests/ops/stages.py``): the backbone alone, the segmentation scan (no gradient), the readout
alone (``lam`` weights, boundary terms and the combination, on a fixed segmentation), and the whole ``chunk_dla``
(policy ``dla``), each forward (no grad) and forward+backward. Times are the minimum over ``--reps`` runs after one
warm-up (the least disturbed by other processes on a shared machine); computation in float32 (inputs of
``--dtype``). Peak memory is what torch allocated above the inputs during one forward+backward:
``torch.cuda.max_memory_allocated`` on CUDA, the profiler's allocation events on CPU (for ``T <= 4096``: the
profiler records every op of the scan's token loop). To compare two revisions, run this in a ``git worktree`` of
each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dla.ops import Policy, chunk_dla  # noqa: E402
from dla.ops.chunk import select_backend  # noqa: E402
from dla.ops.utils.precision import resolve_precision  # noqa: E402
from dla.ops.utils.tuning import StageConfig  # noqa: E402
from tests.ops import stages as stage_fns  # noqa: E402


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


def stages(x, args, gdn):
    """``({stage: fn(grad)}, slots opened per head)``: ``fn(False)`` runs the forward (the caller disables grad),
    ``fn(True)`` forward and backward."""
    B, T, H, K, V, C, BT = args.B, args.T, args.H, args.K, args.V, args.capacity, 64
    impl = select_backend(args.backend, x["v"], BT)
    cfg = StageConfig(resolve_precision(None, x["v"].is_cuda, dtype=x["v"].dtype))
    dev = x["v"].device
    pad = (-T) % BT
    head = lambda t: F.pad(t.float().transpose(1, 2), (0, 0, 0, pad) if t.dim() == 4 else (0, pad)).contiguous()  # noqa: E731
    qh, kh, vh, gh = (head(x[n]) for n in ("q", "k", "v", "g"))
    bh = head(x["beta"]) if gdn else None
    S0 = torch.zeros(B, H, K, V, device=dev)
    leaves = {n: (t.detach().requires_grad_(True) if t is not None else None) for n, t in x.items()}
    bb_in = [qh, kh, vh, gh] + ([bh] if gdn else [])
    bb_leaves = [t.detach().requires_grad_(True) for t in bb_in]
    N = B * H

    with torch.no_grad():
        u, P, o_base, S_last, gl = stage_fns.backbone(impl, qh, kh, vh, gh, bh, S0, BT, cfg)

    def scan_fn(grad=False):
        return impl.scan(kh.reshape(N, -1, K), u.reshape(N, -1, V), gh.reshape(N, -1), T,
                         policy=Policy("dla", args.tau, C), chunk_size=BT, R=C, initial_state=None, cfg=cfg)

    scan = scan_fn()
    starts, lam_index = scan.starts.view(B, H, T, C), scan.lam_index.view(B, H, T, C)
    x_b = starts[..., :-1]
    real = (lam_index[..., 1:] >= 0) & (x_b >= 0)
    ro_leaves = [t.detach().requires_grad_(True) for t in (qh, kh, u, gl, P, o_base, x["lam"])]

    def bb(grad):
        args_ = bb_leaves if grad else bb_in
        u, P, o, S, _ = stage_fns.backbone(impl, *args_[:4], args_[4] if gdn else None, S0, BT, cfg)
        if grad:
            (o.sum() + P.sum() + S.sum() + (u.sum() if gdn else 0)).backward()

    def ro(grad):
        q_, k_, u_, gl_, P_, ob_, lam_ = ro_leaves if grad else (qh, kh, u, gl, P, o_base, x["lam"])
        from dla.ops.chunk import _Combine, _LamWeights

        lam0, dlam = _LamWeights.apply(impl, lam_, lam_index, torch.float32)
        terms = stage_fns.readout(impl, q_, k_, u_, gl_, P_, dlam, x_b, real, BT, cfg)
        out = _Combine.apply(impl, lam0, ob_, terms, K ** -0.5, torch.float32)
        if grad:
            out.sum().backward()

    def whole(grad):
        o = chunk_dla(**(leaves if grad else x), policy="dla", capacity=C, tau=args.tau, backend=args.backend)[0]
        if grad:
            o.backward(torch.ones_like(o))

    out = {"backbone": bb, "readout": ro, "chunk_dla": whole, "scan (no grad)": scan_fn}
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
    ap.add_argument("--backbones", nargs="+", default=["mamba2", "gdn"], choices=["mamba2", "gdn"])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--stages", nargs="+", default=["backbone", "readout", "chunk_dla", "scan"],
                    choices=["backbone", "readout", "chunk_dla", "scan"])
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, backend {args.backend}, B={args.B} T={args.T} H={args.H} K={args.K} V={args.V} "
          f"C={args.capacity} tau={args.tau} decay={args.decay}, {args.dtype} inputs, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}; ms = min of {args.reps}", flush=True)
    cols = ["fwd ms", "fwd+bwd ms"] + ([] if args.no_memory else ["peak MiB"])
    print("| backbone | stage | " + " | ".join(cols) + " |")
    print("| --- | --- |" + " --- |" * len(cols), flush=True)
    for bb in args.backbones:
        gdn = bb == "gdn"
        x = inputs(args.B, args.T, args.H, args.K, args.V, args.capacity, gdn, args.device, args.decay,
                   getattr(torch, args.dtype))
        fns, slots = stages(x, args, gdn)
        for stage, fn in fns.items():
            fwd = timed(lambda: (torch.no_grad()(fn))(False), args.device, args.reps)
            fb = None if stage.startswith("scan") else timed(lambda: fn(True), args.device, args.reps)
            skip = args.no_memory or stage.startswith("scan") or (
                stage == "chunk_dla" and args.device == "cpu" and args.T > 4096)
            mem = None if skip else peak_mib(lambda: fn(True), args.device)
            vals = [f"{fwd:.1f}", "-" if fb is None else f"{fb:.1f}"]
            if not args.no_memory:
                vals.append("-" if mem is None else f"{mem:.0f}")
            print(f"| {bb} | {stage} | " + " | ".join(vals) + " |", flush=True)
        print(f"({bb}: {slots:.1f} slots opened per head)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
