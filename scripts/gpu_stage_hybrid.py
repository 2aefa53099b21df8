"""Which stage makes a Triton case miss its float64 reference: ``chunk_dla`` with each stage group taken from the
PyTorch stages (:mod:`dla.ops.chunked`) and the rest from the kernels, and with other ``tl.dot`` modes and head
dimensions, each against the masked form in float64 on the CPU (``test_cuda.py``'s check, K = 32, V = 16, 4 heads
in 2 key groups by default).

Usage (CUDA machine, repository root; or ``TRITON_INTERPRET=1`` on a CPU, where every mode computes as ``ieee``):
    python scripts/gpu_stage_hybrid.py [T]        # default T = 200; one line per case on stdout

Each line: the case, the fraction of boundary decisions that agree with the reference, the relative error of the
output and of every gradient, and the largest first-token ``dg`` (0 in float64 for these inputs). A case whose
error falls when one stage group comes from PyTorch points at that group's kernels; a case right in ``ieee`` and
wrong in ``tf32x3`` points at the tensor-core products.
"""
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dla.ops.chunk as chunk_mod  # noqa: E402
from dla.ops import chunk_dla, chunked, masked_dla, naive_dla, num_levels  # noqa: E402
from tests.conftest import make_inputs, rel_err  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
T = int(sys.argv[1]) if len(sys.argv) > 1 else 200
GROUPS = {"layout": ["heads_copy"], "backbone": ["backbone_mamba2_fwd", "backbone_mamba2_bwd", "backbone_gdn_fwd",
          "backbone_gdn_bwd"], "scan": ["scan"], "lam": ["lam_fwd", "lam_bwd"], "readout": ["readout_fwd", "readout_bwd"],
          "combine": ["combine_fwd", "combine_bwd"]}
real_select = chunk_mod.select_backend


def hybrid(torch_groups):
    from dla.ops import triton as kernels
    ns = types.SimpleNamespace(**{n: getattr(kernels, n) for n in kernels.__all__})
    for grp in torch_groups:
        for n in GROUPS[grp]:
            setattr(ns, n, getattr(chunked, n))
    return ns


def _to(x, dtype, device):
    return {n: (t.detach().to(device, dtype).requires_grad_(True) if t is not None else None) for n, t in x.items()}


def case(policy, gdn, K, V, H, G, precision=None, torch_groups=(), torch_only=(), dtype=torch.float32):
    R = num_levels(T) if policy == "fenwick" else 8
    x = make_inputs(B=2, T=T, H=H, G=G, K=K, V=V, R=R, gdn=gdn, seed=3)
    kw = dict(policy=policy, capacity=R, tau=0.5, block_size=16)
    xr = _to(_to(x, dtype, "cpu"), torch.float64, "cpu")
    segr = naive_dla(**{n: (t.detach() if t is not None else None) for n, t in xr.items()}, **kw,
                     return_segmentation=True)[2]
    o_ref, _ = masked_dla(**xr, **kw, segmentation=segr)
    xc = _to(x, dtype, dev)
    if torch_groups:
        chunk_mod.select_backend = lambda *a, **k: hybrid(torch_groups)
    try:
        o, _, segc = chunk_dla(**xc, **kw, return_segmentation=True, backend="triton", precision=precision)
    finally:
        chunk_mod.select_backend = real_select
    agree = float((segc.boundary.cpu() == segr.boundary).float().mean())
    do = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = [n for n, t in x.items() if t is not None]
    g_ref = torch.autograd.grad((o_ref * do).sum(), [xr[n] for n in names])
    g = torch.autograd.grad((o.double() * do.to(dev)).sum(), [xc[n] for n in names])
    errs = {"o": rel_err(o.detach().cpu(), o_ref)}
    errs.update({f"d{n}": rel_err(a.cpu(), b) for n, a, b in zip(names, g, g_ref)})
    dg0 = (g[names.index("g")][:, 0].cpu(), g_ref[names.index("g")][:, 0])
    label = (f"{policy:8s} gdn={int(gdn)} K{K} V{V} H{H} G{G} prec={precision or 'auto':6s} "
             f"torch=[{','.join(torch_groups)}]")
    print(f"{label:70s} agree={agree:.4f} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items())
          + f"  dg[t=0] max={float(dg0[0].abs().max()):.1e} ref={float(dg0[1].abs().max()):.1e}", flush=True)


if __name__ == "__main__":
    for gdn in (False, True):
        case("dla", gdn, 32, 16, 4, 2)  # the defaults: tf32x3 on a GPU for float32 inputs
        case("dla", gdn, 32, 16, 4, 2, precision="ieee")
        case("dla", gdn, 32, 16, 4, 4)
        case("dla", gdn, 32, 32, 4, 2)
        case("dla", gdn, 64, 16, 4, 2)
        for grp in GROUPS:
            case("dla", gdn, 32, 16, 4, 2, torch_groups=(grp,))
        case("dla", gdn, 32, 16, 4, 2, torch_groups=tuple(g for g in GROUPS if g != "readout"))
        case("dla", gdn, 32, 16, 4, 2, torch_groups=tuple(g for g in GROUPS if g != "backbone"))
        case("fenwick", gdn, 32, 16, 4, 2)
        case("single", gdn, 32, 16, 4, 2)
