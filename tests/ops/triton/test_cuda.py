"""GPU checks (skipped without CUDA): the chunked op on the GPU against the float64 CPU references.

Run on a GPU machine with ``python -m pytest tests/ops/triton/test_cuda.py``. Gradients are checked on the GPU
because Triton 3.6 on Hopper has miscompiled gated backward kernels before (fla issue #640).
"""

import pytest
import torch

from dla.ops import chunk_dla, masked_dla, naive_dla, num_levels
from tests.conftest import make_inputs, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _to(x, dtype, device="cuda"):
    return {n: (t.detach().to(device, dtype).requires_grad_(t.requires_grad) if t is not None else None)
            for n, t in x.items()}


@pytest.mark.parametrize("policy", ["dla", "fenwick", "single", "fixed", "dla_unbounded"])
@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("backend,dtype,precision,tol", [
    ("torch", torch.float64, None, 1e-12), ("torch", torch.float32, None, 2e-5), ("triton", torch.float32, None, 2e-5),
    ("triton", torch.bfloat16, "tf32x3", 2e-2), ("triton", torch.bfloat16, None, 2e-2)],
    ids=["torch-f64", "torch-f32", "triton-f32", "triton-bf16", "triton-bf16ops"])
def test_cuda_matches_cpu_reference(policy, gdn, backend, dtype, precision, tol, record, K=32, V=16, H=4, G=2):
    """``triton-bf16``: bfloat16 inputs, float32-accurate products; ``triton-bf16ops``: bfloat16 inputs with the
    default, bfloat16 operands in the backbone and readout products (Triton 3.6 on Hopper got these wrong before
    ``prec_dot_tc``, ``min_tile`` and the float32 UT backward; run them in their own process: an illegal memory
    access spoils every later test)."""
    T = 200
    R = num_levels(T) if policy == "fenwick" else 8
    x = make_inputs(B=2, T=T, H=H, G=G, K=K, V=V, R=R, gdn=gdn, seed=3, requires_grad=True)
    kw = dict(policy=policy, capacity=R, tau=0.5, block_size=16)
    with torch.no_grad():
        seg = naive_dla(**_to(x, torch.float64, "cpu"), **kw, return_segmentation=True)[2]
    # the reference in float64 on the CPU, on the inputs as the GPU sees them (after rounding to dtype)
    xr = _to(_to(x, dtype, "cpu"), torch.float64, "cpu")
    for t in xr.values():
        if t is not None:
            t.requires_grad_(True)
    segr = naive_dla(**{n: (t.detach() if t is not None else None) for n, t in xr.items()}, **kw,
                     return_segmentation=True)[2]
    o_ref, _ = masked_dla(**xr, **kw, segmentation=segr)
    xc = _to(x, dtype)
    o, _, segc = chunk_dla(**xc, **kw, return_segmentation=True, backend=backend, precision=precision)
    agree = float((segc.boundary.cpu() == segr.boundary).float().mean())
    name = f"cuda {backend} {str(dtype)[6:]}" + (f" {precision} operands" if precision else "")
    record(f"{name} boundary agreement (1 - fraction)", 1 - agree)
    assert agree > (0.999 if dtype != torch.bfloat16 else 0.95)
    if agree < 1.0:
        return  # a flipped near-threshold decision changes the function; the agreement bound is the check
    do = torch.randn_like(o_ref)
    names = [n for n, t in x.items() if t is not None]
    g_ref = torch.autograd.grad((o_ref * do).sum(), [xr[n] for n in names])
    # the same upstream gradient as the reference, in float64 (a float32 copy of do alone differs by ~3e-8)
    g = torch.autograd.grad((o.double() * do.to("cuda")).sum(), [xc[n] for n in names])
    assert record(f"{name} output", rel_err(o.detach().cpu(), o_ref.detach())) < tol
    for n, a, b in zip(names, g, g_ref):
        assert record(f"{name} gradient d{n}", rel_err(a.cpu(), b)) < tol * 5, n


@pytest.mark.parametrize("K, V, H, G", [(128, 64, 4, 1), (128, 128, 2, 2)], ids=["ll_mamba2", "h16"])
@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("backend,dtype,precision,tol", [
    ("triton", torch.float32, None, 2e-5), ("triton", torch.bfloat16, None, 2e-2)], ids=["triton-f32", "triton-bf16ops"])
def test_cuda_head_dims_of_the_benchmarks(K, V, H, G, gdn, backend, dtype, precision, tol, record):
    """The benchmarks' head dimensions (one key group of 128 read by every head with ``V = 64``; ``K = V = 128``)
    against the float64 CPU references: the kernels' widest tiles."""
    test_cuda_matches_cpu_reference("dla", gdn, backend, dtype, precision, tol, record, K=K, V=V, H=H, G=G)
