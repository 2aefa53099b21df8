"""The Triton scalar-decay backbone equals the PyTorch stage (CPU: Triton's interpreter, float32, tiny shapes):
outputs and the gradients of ``q, k, v, g, S0``, alone and through the whole op."""

import os

import pytest
import torch

from dla.ops import Tuning, chunk_dla, chunked
from tests.conftest import make_inputs, rel_err
from tests.ops import stages

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("u", "P", "o", "S", "gl")


def _inputs(B, H, NT, BT, K, V, decay, seed):
    gen = torch.Generator().manual_seed(seed)
    Tp = NT * BT
    q = torch.randn(B, H, Tp, K, generator=gen)
    k = torch.nn.functional.normalize(torch.randn(B, H, Tp, K, generator=gen), dim=-1)
    v = torch.randn(B, H, Tp, V, generator=gen)
    g = -torch.rand(B, H, Tp, generator=gen) * decay
    S0 = torch.randn(B, H, K, V, generator=gen)
    return [x.to(DEVICE).requires_grad_() for x in (q, k, v, g, S0)]


def _run(impl, q, k, v, g, S0, BT, weights, used, cfg=None):
    outs = stages.backbone(impl, q, k, v, g, None, S0, BT, cfg)
    loss = sum((outs[i] * weights[i]).sum() for i in used)
    return outs, torch.autograd.grad(loss, [q, k, v, g, S0])


@pytest.mark.parametrize("B,H,NT,BT,K,V,decay", [
    (1, 1, 1, 16, 16, 16, 0.3),
    (2, 1, 3, 16, 12, 20, 0.3),
    (1, 2, 2, 32, 8, 12, 0.3),
    (1, 2, 4, 16, 5, 7, 8.0),  # strong decay: exp(gl_t - gl_s) underflows across a chunk
    (1, 1, 2, 16, 80, 70, 0.1),  # several K and V tiles
    (2, 2, 2, 64, 16, 16, 0.05),
])
@pytest.mark.parametrize("used", [(0, 1, 2, 3, 4), (2,), (1, 2)])
def test_backbone_triton_matches_torch(B, H, NT, BT, K, V, decay, used, nan_empty, record, tuning=None):
    from dla.ops import triton as kernels

    x = _inputs(B, H, NT, BT, K, V, decay, seed=NT * K + V)
    gen = torch.Generator().manual_seed(1)
    shapes = stages.backbone(chunked, *(t.detach() for t in x[:4]), None, x[4].detach(), BT)
    weights = [torch.randn(t.shape, generator=gen).to(DEVICE) for t in shapes]
    out_tri, grad_tri = _run(kernels, *x, BT, weights, used, stages.config(x[0], **(tuning or {})))
    out_ref, grad_ref = _run(chunked, *x, BT, weights, used)
    for n, a, b in zip(NAMES, out_tri, out_ref):
        assert record(f"triton backbone vs torch, {n}", rel_err(a, b)) < 1e-5, n
    for n, a, b in zip("qkvg", grad_tri, grad_ref):
        assert record(f"triton backbone vs torch, d{n}", rel_err(a, b)) < 1e-5, n
    assert record("triton backbone vs torch, dS0", rel_err(grad_tri[4], grad_ref[4])) < 1e-5


def test_backbone_triton_narrow_tiles(nan_empty, record):
    """``max_tile = 32`` (the default is 64) at ``K = 80``, ``V = 70``: three key and value tiles, the last of each
    partly masked; outputs and gradients as with the default tiles. Caps below 32 are refused."""
    from dla.ops.triton.backbone_mamba2 import tiles

    assert tiles(80, "ieee", Tuning().max_tile) == 64 and tiles(80, "ieee", 32) == 32
    test_backbone_triton_matches_torch(1, 1, 2, 16, 80, 70, 0.1, (0, 1, 2, 3, 4), nan_empty, record,
                                       tuning=dict(max_tile=32))
    for bad in (16, 48):
        with pytest.raises(ValueError, match="tuning.max_tile"):
            Tuning(max_tile=bad)


@pytest.mark.parametrize("T,chunk_size", [(45, 16), (70, 32)])
def test_chunk_dla_triton_backbone_matches_torch(T, chunk_size, record):
    x = make_inputs(B=2, T=T, H=2, G=1, K=12, V=8, R=4, decay=0.5, dtype=torch.float32, seed=T, requires_grad=True)
    x = {n: (t.detach().to(DEVICE).requires_grad_() if t is not None else None) for n, t in x.items()}
    kw = dict(capacity=4, tau=0.3, block_size=5, chunk_size=chunk_size, output_final_state=True)
    o_tri, st_tri = chunk_dla(**x, **kw, backend="triton")
    o_ref, st_ref = chunk_dla(**x, **kw, backend="torch")
    assert record("chunk_dla triton vs torch (Mamba-2), output", rel_err(o_tri, o_ref)) < 1e-5
    assert rel_err(st_tri.slots, st_ref.slots) < 1e-5
    names = [n for n, t in x.items() if t is not None]
    do = torch.randn_like(o_ref)
    loss = lambda o, st: (o * do).sum() + st.slots.square().sum()  # noqa: E731
    g_tri = torch.autograd.grad(loss(o_tri, st_tri), [x[n] for n in names])
    g_ref = torch.autograd.grad(loss(o_ref, st_ref), [x[n] for n in names])
    for n, a, b in zip(names, g_tri, g_ref):
        assert record(f"chunk_dla triton vs torch (Mamba-2), d{n}", rel_err(a, b)) < 1e-5, n
