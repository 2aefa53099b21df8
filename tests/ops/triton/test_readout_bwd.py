"""The Triton backward of the boundary readout equals the PyTorch backward (CPU: Triton's interpreter, float32)."""

import os

import pytest
import torch

from dla.ops import Tuning, chunk_dla, chunked, num_levels
from dla.ops.chunked.readout import boundary_candidates
from tests.conftest import make_inputs, rel_err
from tests.ops import stages

pytest.importorskip("triton")
from dla.ops import triton as kernels  # noqa: E402
from dla.ops.triton import readout_backward  # noqa: E402
from dla.ops.triton.readout_backward import boundary_terms_bwd, key_pairs, query_pairs  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("q", "k", "u", "gl", "P", "dlam")


@pytest.fixture(autouse=True)
def _poisoned(nan_empty):
    """Every test here runs with NaN-filled empties (``nan_empty`` in tests/conftest.py)."""


def readout_inputs(monkeypatch, x, whole=False, **kw):
    """What ``chunk_dla(backend="triton")`` hands its readout stage: ``q, k, u, gl, P, dlam`` (head-major copies),
    ``x, real, BT`` and, with ``whole``, the caller's ``(q, k)`` too. ``None`` if the readout did not run."""
    seen = stages.capture_readout(monkeypatch, x, **kw, backend="triton")
    if seen is None:
        return None
    impl, cfg, layout, *args, q, k, v = seen
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    return (*args, (q.detach(), k.detach())) if whole else tuple(args)


def check_grads(args, record=None, tag="", **tuning):
    """Gradients of the Triton readout stage (forward and backward kernels, ``tuning``'s changes) against the
    PyTorch stage's."""
    *tensors, x, real, BT = args
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = stages.readout(kernels, *leaves, x, real, BT, stages.config(leaves[0], **tuning))
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, do)
    ref = stages.readout(chunked, *leaves, x, real, BT)
    want = torch.autograd.grad(ref, leaves, do)
    for n, a, b in zip(NAMES, got, want):
        assert not a.isnan().any(), n
        err = rel_err(a, b)
        if record is not None:
            record(f"triton readout backward vs torch{tag}, d{n}", err)
        assert err < 1e-5, n
    return got


def inputs(T, R, gdn, seed, B=2, H=2, K=12, V=20):
    x = make_inputs(B=B, T=T, H=H, G=1, K=K, V=V, R=R, gdn=gdn, dtype=torch.float32, seed=seed)
    return {n: (t.to(DEVICE) if t is not None else None) for n, t in x.items()}


DQ_KERNELS = ("chunk", "pair")  # Tuning.dq_kernel
# the default form over every length and chunk; the other at one short and one multi-chunk case (the interpreter is
# slow: the whole matrix twice would cost CI minutes for what test_..._dq_kernels_agree checks more directly)
LENGTHS = [(k, T, c) for T in (1, 45, 70) for c in (16, 32) for k in DQ_KERNELS if k == "chunk" or (T, c) in
           ((45, 32), (70, 16))]


@pytest.mark.parametrize("dq_kernel,T,chunk_size", LENGTHS)
@pytest.mark.parametrize("policy,capacity", [("dla", 4), ("fenwick", None), ("fixed", 3), ("dla_unbounded", 3)])
@pytest.mark.parametrize("gdn", [False, True])
def test_triton_readout_backward_matches_torch(policy, capacity, gdn, T, chunk_size, dq_kernel, monkeypatch, record):
    R = num_levels(T) if policy == "fenwick" else capacity
    x = inputs(T, R, gdn, seed=T + chunk_size, K=12 if gdn else 8, V=20 if gdn else 12)
    args = readout_inputs(monkeypatch, x, policy=policy, capacity=R, tau=0.3, block_size=5, chunk_size=chunk_size)
    if args is None:
        assert R == 1  # a single live slot has no boundary terms
        return
    check_grads(args, record, f", dq_kernel={dq_kernel}", dq_kernel=dq_kernel)


@pytest.mark.parametrize("dq_kernel", DQ_KERNELS)
def test_triton_readout_backward_initial_state(monkeypatch, record, dq_kernel):
    x = inputs(60, 4, gdn=True, seed=3)
    head = {n: (t[:, :25] if t is not None else None) for n, t in x.items()}
    tail = {n: (t[:, 25:] if t is not None else None) for n, t in x.items()}
    kw = dict(capacity=4, tau=0.3, chunk_size=16)
    _, st = chunk_dla(**head, **kw, output_final_state=True, backend="torch")
    check_grads(readout_inputs(monkeypatch, tail, initial_state=st, **kw), record, f", initial state, {dq_kernel}",
                dq_kernel=dq_kernel)
    # and the whole op's gradients, virtual boundaries included
    tail = {n: (t.requires_grad_() if t is not None else None) for n, t in tail.items()}
    names = [n for n, t in tail.items() if t is not None]
    o_tri, _ = chunk_dla(**tail, **kw, initial_state=st, backend="triton", tuning=Tuning(dq_kernel=dq_kernel))
    o_ref, _ = chunk_dla(**tail, **kw, initial_state=st, backend="torch")
    do = torch.randn_like(o_ref)
    g_tri = torch.autograd.grad((o_tri * do).sum(), [tail[n] for n in names])
    g_ref = torch.autograd.grad((o_ref * do).sum(), [tail[n] for n in names])
    for n, a, b in zip(names, g_tri, g_ref):
        assert rel_err(a, b) < 1e-5, n


@pytest.mark.parametrize("dq_kernel", DQ_KERNELS)
def test_triton_readout_backward_old_boundary_read_by_every_chunk(monkeypatch, record, dq_kernel):
    # capacity 2 and a tau that only one loud token passes: its boundary stays live to the end
    T = 200
    x = inputs(T, 2, gdn=False, seed=0, K=8, V=12)
    x["v"][:, 5] *= 30
    args = readout_inputs(monkeypatch, x, capacity=2, tau=1.2, chunk_size=16)
    *_, xb, real, BT = args
    NT = -(-T // BT)
    ptr, _, order, _ = key_pairs(boundary_candidates(xb, real, BT)[0])
    readers = (ptr[1:] - ptr[:-1]).view(-1, NT)
    assert (readers[:, 0] == NT).all()  # key chunk 0 (position 5) is a candidate of every query chunk
    assert set((order[:readers.shape[0]] % NT).tolist()) == {0}  # and its programs start first
    torch.manual_seed(0)
    first = check_grads(args, record, f", one boundary read by every chunk, {dq_kernel}", dq_kernel=dq_kernel)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(check_grads(args, dq_kernel=dq_kernel), first))  # deterministic
    assert first[4].abs().sum() > 0


@pytest.mark.parametrize("dq_kernel", DQ_KERNELS)
def test_triton_readout_backward_partial_needs(monkeypatch, dq_kernel):
    x = inputs(45, 4, gdn=True, seed=7)
    q, k, u, gl, P, dlam, xb, real, BT = readout_inputs(monkeypatch, x, capacity=4, tau=0.3, chunk_size=16)
    cand, jidx, off = boundary_candidates(xb, real, BT)
    grad = torch.randn(*dlam.shape[:3], u.shape[-1], device=u.device)
    cfg = stages.config(q, dq_kernel=dq_kernel)
    full = boundary_terms_bwd(grad, q, k, u, gl, P, dlam, cand, jidx, off, BT, (True,) * 6, cfg)
    for i in range(6):
        needs = tuple(j == i for j in range(6))
        part = boundary_terms_bwd(grad, q, k, u, gl, P, dlam, cand, jidx, off, BT, needs, cfg)
        assert all((p is None) == (j != i) for j, p in enumerate(part)), NAMES[i]
        assert torch.equal(part[i], full[i]), NAMES[i]


@pytest.mark.parametrize("dq_kernel", DQ_KERNELS)
def test_triton_readout_backward_value_tiles(monkeypatch, dq_kernel):
    """Several value tiles (a partial last one) in the dq / dk loops and across du programs: the same gradients."""
    x = inputs(70, 4, gdn=False, seed=3, K=8, V=40)
    q, k, u, gl, P, dlam, xb, real, BT = readout_inputs(monkeypatch, x, capacity=4, tau=0.3, chunk_size=16)
    cand, jidx, off = boundary_candidates(xb, real, BT)
    grad = torch.randn(*dlam.shape[:3], u.shape[-1], device=u.device)
    args = (grad, q, k, u, gl, P, dlam, cand, jidx, off, BT, (True,) * 6)
    one = boundary_terms_bwd(*args, stages.config(q, dq_block_v=64, key_block_v=64, dq_kernel=dq_kernel))  # one tile
    tiled = boundary_terms_bwd(*args, stages.config(q, dq_block_v=16, key_block_v=16, dq_kernel=dq_kernel))  # 16+16+8
    for n, a, b in zip(NAMES, tiled, one):
        assert rel_err(a, b) < 1e-6, n
    assert one[2].abs().sum() > 0 and one[4].abs().sum() > 0


@pytest.mark.parametrize("dq_kernel", DQ_KERNELS)
@pytest.mark.parametrize("cap_pairs", [1, 5])
def test_triton_readout_backward_windows(monkeypatch, cap_pairs, dq_kernel):
    """Pair tiles held for a window of heads at a time (one head a window, or a few): the same gradients, bitwise,
    as all heads in one window."""
    x = inputs(70, 4, gdn=False, seed=5, B=2, H=3, K=8, V=12)
    q, k, u, gl, P, dlam, xb, real, BT = readout_inputs(monkeypatch, x, capacity=4, tau=0.3, chunk_size=16)
    cand, jidx, off = boundary_candidates(xb, real, BT)
    grad = torch.randn(*dlam.shape[:3], u.shape[-1], device=u.device)
    args = (grad, q, k, u, gl, P, dlam, cand, jidx, off, BT, (True,) * 6)
    one = boundary_terms_bwd(*args, stages.config(q, dq_kernel=dq_kernel))
    pair_bytes = 2 * BT * BT * 4 + BT * 4
    seen = []
    windows = readout_backward.windows
    monkeypatch.setattr(readout_backward, "windows", lambda *a: (seen.append(windows(*a)), seen[-1])[1])
    got = boundary_terms_bwd(*args, stages.config(q, pair_tile_bytes=cap_pairs * pair_bytes, dq_kernel=dq_kernel))
    wins, most = seen[0]
    assert len(wins) > 1 and [w[0] for w in wins[1:]] == [w[1] for w in wins[:-1]] and wins[-1][1] == 6
    assert cap_pairs > 1 or all(b1 == b0 + 1 for b0, b1, _ in wins)
    for n, a, b in zip(NAMES, got, one):
        assert torch.equal(a, b), n


def test_key_pairs_inverts_candidate_lists():
    gen = torch.Generator().manual_seed(0)
    B, H, NT, J = 2, 3, 7, 4
    i = torch.arange(NT)
    cand = torch.cat([torch.randint(0, NT, (B, H, NT, J - 1), generator=gen) % (i[:, None] + 1),
                      i[None, None, :, None].expand(B, H, NT, 1)], -1).sort(-1).values
    ptr, pairs, order, slot = key_pairs(cand)
    busy = (ptr[1:] - ptr[:-1])[order.long()]
    assert sorted(order.tolist()) == list(range(B * H * NT)) and (busy[:-1] >= busy[1:]).all()
    for b in range(B):
        for h in range(H):
            for c in range(NT):
                n = (b * H + h) * NT + c
                got = pairs[ptr[n]:ptr[n + 1]].tolist()
                want = [ii * J + j for ii in range(NT) for j in range(J)
                        if cand[b, h, ii, j] == c and (j == 0 or cand[b, h, ii, j - 1] != c)]
                assert got == want
                assert [slot[b, h, e // J, e % J].item() for e in got] == list(range(ptr[n], ptr[n + 1]))


def test_triton_backend_computes_in_float32():
    x = make_inputs(B=1, T=20, H=2, G=1, K=4, V=4, R=4, dtype=torch.float64)
    with pytest.raises(ValueError, match="^backend: 'triton' computes in float32"):
        chunk_dla(**{n: t.to(DEVICE) if t is not None else None for n, t in x.items()}, capacity=4, chunk_size=16,
                  backend="triton")


@pytest.mark.parametrize("dq_kernel", DQ_KERNELS)
@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("dot", ["ieee", "fp16"])
def test_triton_readout_grouped_qk(monkeypatch, record, G, dot, dq_kernel):
    """With the caller's grouped ``q, k`` at hand, the readout kernels read one row per group of heads instead of
    the per-head copies: the same output and gradients (``dq``, ``dk`` per head). G = H: the per-head path either
    way."""
    x = make_inputs(B=2, T=70, H=4, G=G, K=8, V=12, R=4, dtype=torch.float32, seed=G)
    x = {n: (t.to(DEVICE) if t is not None else None) for n, t in x.items()}
    *tensors, xb, real, BT, sources = readout_inputs(monkeypatch, x, whole=True, capacity=4, tau=0.3, chunk_size=16)
    assert sources[0].shape[2] == G

    def run(src):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = stages.readout(kernels, *leaves, xb, real, BT, stages.config(leaves[0], dot, dq_kernel=dq_kernel),
                             sources=src)
        return out, torch.autograd.grad(out, leaves, do)

    do = torch.randn(*tensors[2].shape[:2], xb.shape[2], tensors[2].shape[-1], device=DEVICE)
    (o_g, g_g), (o_h, g_h) = run(sources), run(None)
    # the same values in the same order (fp16: q rounded on the host instead of inside the kernels, also RTNE)
    same = torch.equal if dot == "ieee" else (lambda a, b: rel_err(a, b) < 1e-6)
    assert same(o_g, o_h)
    for n, a, b in zip(NAMES, g_g, g_h):
        record(f"readout grouped q, k (G={G}, {dot}, {dq_kernel}) vs per head, d{n}", rel_err(a, b))
        assert a.shape == b.shape and not a.isnan().any() and same(a, b), n


@pytest.mark.parametrize("dot", ["ieee", "fp16"])
@pytest.mark.parametrize("gdn", [False, True])
def test_triton_readout_backward_dq_kernels_agree(monkeypatch, record, dot, gdn):
    """The two ``dq`` forms (``Tuning.dq_kernel``) give the same gradients: grouped keys (G < H), K = 32 and
    V = 16 (a masked value tile in the 16-bit mode), T not a multiple of the chunk."""
    x = make_inputs(B=2, T=75, H=4, G=2, K=32, V=16, R=5, gdn=gdn, dtype=torch.float32, seed=11)
    x = {n: (t.to(DEVICE) if t is not None else None) for n, t in x.items()}
    *tensors, xb, real, BT, sources = readout_inputs(monkeypatch, x, whole=True, capacity=5, tau=0.3, chunk_size=32)
    do = torch.randn(*tensors[2].shape[:2], xb.shape[2], tensors[2].shape[-1], device=DEVICE)

    def grads(dq_kernel):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = stages.readout(kernels, *leaves, xb, real, BT, stages.config(leaves[0], dot, dq_kernel=dq_kernel),
                             sources=sources)
        return torch.autograd.grad(out, leaves, do)

    chunk, pair = grads("chunk"), grads("pair")
    for n, a, b in zip(NAMES, pair, chunk):
        record(f"readout dq_kernel pair vs chunk ({dot}, {'gdn' if gdn else 'mamba2'}), d{n}", rel_err(a, b))
        assert not a.isnan().any() and a.abs().sum() > 0 and rel_err(a, b) < 1e-6, n


def test_query_pairs_lists_distinct_candidates():
    gen = torch.Generator().manual_seed(1)
    B, H, NT, J = 2, 3, 7, 4
    i = torch.arange(NT)
    cand = torch.cat([torch.randint(0, NT, (B, H, NT, J - 1), generator=gen) % (i[:, None] + 1),
                      i[None, None, :, None].expand(B, H, NT, 1)], -1).sort(-1).values
    qptr, qpairs = query_pairs(cand)
    ptr = key_pairs(cand)[0]
    flat = cand.flatten()
    for n in range(B * H * NT):
        got = qpairs[qptr[n]:qptr[n + 1]].tolist()
        assert got == [n * J + j for j in range(J) if j == 0 or flat[n * J + j] != flat[n * J + j - 1]]
    assert torch.equal(qptr[::NT], ptr[::NT])  # whole heads: the same pair numbers as the key side's
    assert sorted(qpairs.tolist()) == list(range(B * H * NT * J))
