"""16-bit ``tl.dot`` operands in the backbone and readout kernels (``precision=``): small, nonzero error against
float64 references, far above ``ieee``'s, and the same segmentation. On CPU the interpreter runs ``fp16`` (the
code path of ``bf16``, whose products the interpreter gets wrong); a GPU adds ``bf16``."""

import os

import pytest
import torch
import torch.nn.functional as F

from dla.ops import chunk_dla, chunked
from dla.ops.utils.precision import min_tile, resolve_precision
from dla.ops.utils.tuning import StageConfig
from tests.conftest import rel_err
from tests.ops import stages

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="needs a GPU or TRITON_INTERPRET=1")
LOW = ["fp16", "bf16"] if CUDA else ["fp16"]
# (outputs, gradients); measured under the interpreter, fp16: at most 4.6e-4 and 6.4e-4 (~2^-11 per product)
TOL = {"fp16": (2e-3, 3e-3), "bf16": (1e-2, 2e-2)}  # bf16 rounds 8x coarser than fp16
KW = dict(capacity=4, tau=0.3, chunk_size=16, block_size=8)


@pytest.fixture(autouse=True)
def _poisoned(nan_empty):
    """Every test here runs with NaN-filled empties (``nan_empty`` in tests/conftest.py)."""


def seq_inputs(T=70, H=2, K=16, V=32, R=4, gdn=False, seed=0):
    """``[1, T, H, *]`` inputs at the models' scale: ``q ~ N(0, 1) / sqrt(K)``, unit keys, ``v ~ N(0, 1)``."""
    gen = torch.Generator().manual_seed(seed)
    x = dict(q=torch.randn(1, T, H, K, generator=gen) / K ** 0.5,
             k=F.normalize(torch.randn(1, T, H, K, generator=gen), dim=-1),
             v=torch.randn(1, T, H, V, generator=gen), g=-torch.rand(1, T, H, generator=gen) * 0.3,
             lam=torch.rand(1, T, H, R, generator=gen) + 0.5,
             beta=torch.rand(1, T, H, generator=gen) if gdn else None)
    return {n: (t.to(DEVICE) if t is not None else None) for n, t in x.items()}


def grads_of(outs, leaves, seed=1):
    """Gradients of ``sum_i <outs_i, w_i>`` for fixed random ``w_i`` (drawn in float64 so every dtype sees the
    same weights)."""
    gen = torch.Generator().manual_seed(seed)
    w = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    return torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(outs, w)), leaves)


def check(name, low, ieee, ref, tol, record, tag):
    """``low``'s relative error against ``ref`` below ``tol`` and over 10x ``ieee``'s: the mode is in use."""
    assert not low.isnan().any(), name
    e_low, e_ieee = rel_err(low, ref), rel_err(ieee, ref)
    assert e_ieee < 1e-5, name
    record(f"{tag}, {name}", e_low)
    assert 10 * e_ieee < e_low < tol, (name, e_low, e_ieee)


@needs_triton
@pytest.mark.parametrize("prec", LOW)
@pytest.mark.parametrize("gdn", [False, True])
def test_backbone_low_precision(gdn, prec, record):
    from dla.ops import triton as kernels

    x = seq_inputs(T=64, gdn=gdn)
    names = ["q", "k", "v", "g"] + (["beta"] if gdn else []) + ["S0"]
    # [B, H, T, *] as chunk_dla's stages take them
    args = [x[n].transpose(1, 2).contiguous() for n in names[:-1]]
    args.append(0.1 * torch.randn(1, 2, 16, 32, generator=torch.Generator().manual_seed(2)).to(DEVICE))

    def run(impl, dtype, dot=None):
        leaves = [a.to(dtype).requires_grad_() for a in args]
        q, k, v, g, *rest = leaves
        cfg = StageConfig(dot) if dot is not None else None
        u, P, o, S, _ = stages.backbone(impl, q, k, v, g, rest[0] if gdn else None, rest[-1], 16, cfg)
        return (u, P, o, S), grads_of((u, P, o, S), leaves)

    ref_out, ref_grad = run(chunked, torch.float64)
    ieee_out, ieee_grad = run(kernels, torch.float32, "ieee")
    low_out, low_grad = run(kernels, torch.float32, prec)
    out_tol, grad_tol = TOL[prec]
    tag = f"{'gdn' if gdn else 'mamba2'} backbone {prec} vs float64"
    for n, lo, ie, ref in zip("uPoS", low_out, ieee_out, ref_out):
        if n == "o" or not gdn:
            if n == "u":  # the scalar-decay backbone returns v itself
                assert torch.equal(lo, ie)
                continue
            check(n, lo, ie, ref, out_tol, record, tag)
        else:  # Gated DeltaNet's u (read by the scan) and states stay float32-accurate in every mode
            assert rel_err(lo, ref) < 1e-5, n
    for n, lo, ie, ref in zip(names, low_grad, ieee_grad, ref_grad):
        check("d" + n, lo, ie, ref, grad_tol, record, tag)


@needs_triton
@pytest.mark.parametrize("prec", LOW)
@pytest.mark.parametrize("gdn", [False, True])
def test_readout_low_precision(gdn, prec, monkeypatch, record):
    """The readout in a 16-bit mode (its kernels reading 16-bit copies of their operands, ``do`` included) against
    float64 and ``ieee``."""
    from dla.ops import triton as kernels

    seen = stages.capture_readout(monkeypatch, seq_inputs(gdn=gdn, seed=3), **KW, backend="triton", precision="ieee")
    impl, cfg, layout, *tensors, xb, real, BT, q, k, v = seen
    assert cfg.dot == "ieee" and real.sum() > 100  # the readout has work to do
    leaves = [t.detach().double().requires_grad_() for t in tensors]
    ref = stages.readout(chunked, *leaves, xb, real, BT)
    ref_grad = grads_of([ref], leaves)

    def run(mode):
        lv = [t.detach().float().requires_grad_() for t in tensors]
        out = stages.readout(kernels, *lv, xb, real, BT, StageConfig(mode))
        return out, grads_of([out], lv)

    (ieee, ieee_grad), (low, low_grad) = run("ieee"), run(prec)
    out_tol, grad_tol = TOL[prec]
    tag = f"{'gdn' if gdn else 'mamba2'} readout {prec} vs float64"
    check("o", low, ieee, ref, out_tol, record, tag)
    for n, lo, ie, rf in zip(("q", "k", "u", "gl", "P", "dlam"), low_grad, ieee_grad, ref_grad):
        check("d" + n, lo, ie, rf, grad_tol, record, tag)


@needs_triton
@pytest.mark.parametrize("prec", LOW)
@pytest.mark.parametrize("gdn", [False, True])
def test_chunk_dla_low_precision_vs_ieee(gdn, prec, record):
    x = seq_inputs(gdn=gdn, seed=4)
    names = [n for n, t in x.items() if t is not None]

    def run(mode):
        leaves = {n: (t.clone().requires_grad_() if t is not None else None) for n, t in x.items()}
        o, _, seg = chunk_dla(**leaves, **KW, backend="triton", precision=mode, return_segmentation=True)
        return o, grads_of([o], [leaves[n] for n in names]), seg

    (o_ie, g_ie, seg_ie), (o_lo, g_lo, seg_lo) = run("ieee"), run(prec)
    assert seg_ie.boundary.sum() > 10
    for f in ("boundary", "starts", "lam_index", "num_slots", "merged"):
        assert torch.equal(getattr(seg_lo, f), getattr(seg_ie, f)), f  # the scan does not see the mode
    out_tol, grad_tol = TOL[prec]
    tag = f"{'gdn' if gdn else 'mamba2'} chunk_dla {prec} vs ieee"
    pairs = [("o", o_lo, o_ie, out_tol)] + [("d" + n, a, b, grad_tol) for n, a, b in zip(names, g_lo, g_ie)]
    for n, a, b, tol in pairs:
        err = record(f"{tag}, {n}", rel_err(a, b))
        assert 1e-5 < err < tol, (n, err)
    if not gdn:  # the torch.library op carries the mode through
        o_op = torch.ops.dla.chunk_dla(*(x[n] for n in ("q", "k", "v", "g", "lam", "beta")), None, None, KW["tau"],
                                       KW["capacity"], "dla", KW["block_size"], "drift", KW["chunk_size"], "triton",
                                       prec, None)
        assert torch.equal(o_op, o_lo.detach())


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_bf16_operands_on_gpu():
    """bf16 inputs: auto takes bf16 operands; float32-accurate products (tf32x3) differ from them, within bf16
    rounding. float32 inputs: auto is tf32x3."""
    x = {n: (t.bfloat16() if t is not None else None) for n, t in seq_inputs(seed=5).items()}
    o_auto = chunk_dla(**x, **KW)[0]
    assert torch.equal(o_auto, chunk_dla(**x, **KW, precision="bf16")[0])
    o_exact = chunk_dla(**x, **KW, precision="tf32x3")[0]
    assert 0 < rel_err(o_auto.float(), o_exact.float()) < TOL["bf16"][0]
    x32 = seq_inputs(seed=5)
    assert torch.equal(chunk_dla(**x32, **KW)[0], chunk_dla(**x32, **KW, precision="tf32x3")[0])


def test_resolve_precision(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_precision(None, True) == "tf32x3"
    assert resolve_precision("auto", True, dtype=torch.float32) == "tf32x3"
    assert resolve_precision(None, True, dtype=torch.bfloat16) == "bf16"  # the field's choice for bf16 inputs
    assert resolve_precision("auto", True, dtype=torch.float16) == "tf32x3"  # fp16 operands only when asked
    assert resolve_precision("tf32x3", True, dtype=torch.bfloat16) == "tf32x3"
    assert resolve_precision("fp16", True) == "fp16"
    assert resolve_precision(None, False, dtype=torch.bfloat16) == "ieee"
    assert resolve_precision("bf16", True) == "bf16"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_precision(None, True, dtype=torch.bfloat16) == "ieee"  # never bf16 under the interpreter
    assert resolve_precision("fp16", False) == "fp16"
    with pytest.raises(ValueError, match="precision: 'bf16' is wrong under TRITON_INTERPRET"):
        resolve_precision("bf16", False)


def test_min_tile():
    """Tensor-core modes never take 16-column tiles (Triton 3.6 on Hopper got them wrong); ``ieee`` may."""
    assert min_tile("bf16") == min_tile("fp16") == min_tile("tf32x3") == min_tile("tf32") == 32
    assert min_tile("ieee") == 16


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_precision_is_a_value_error(backend):
    if backend == "triton" and not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    x = seq_inputs(T=32)
    with pytest.raises(ValueError, match=r"^precision: expected None, 'auto' or one of .*got 'float8'"):
        chunk_dla(**x, **KW, backend=backend, precision="float8")
    with pytest.raises(ValueError, match=r"^precision: .* got 'TF32'"):
        chunk_dla(**x, **KW, backend=backend, precision="TF32")
    with pytest.raises(ValueError, match=r"^precision: .* got 'half'"):
        chunk_dla(**x, **KW, backend=backend, precision="half")
