"""The PyTorch stages: closed-form chunk states, the chunk-state recurrence, the backbones and the boundary readout
with their backwards (float64, gradcheck at tiny shapes)."""

import pytest
import torch
import torch.nn.functional as F

from dla.ops import DLAState, chunk_dla, chunked, naive_dla
from dla.ops.chunked.backbone_gdn import chunk_states
from dla.ops.chunked.backbone_mamba2 import decayed_states
from dla.ops.utils.tuning import StageConfig, Tuning
from tests.conftest import make_inputs, rel_err
from tests.ops import stages

f64 = dict(dtype=torch.float64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("N", [1, 2, 15, 16, 17, 40, 300])
@pytest.mark.parametrize("block", [2, 3, 16])
def test_decayed_states_equal_the_recurrence(N, block, record):
    gen = _gen(N)
    tot = -torch.rand(2, 3, N, generator=gen, **f64) * 2
    X, X0 = torch.randn(2, 3, N, 5, generator=gen, **f64), torch.randn(2, 3, 5, generator=gen, **f64)
    Y = decayed_states(tot, X, X0, block)
    ref, S = [X0], X0
    for c in range(N):
        S = torch.exp(tot[..., c, None]) * S + X[..., c, :]
        ref.append(S)
    assert Y.shape == (2, 3, N + 1, 5)
    assert record("closed-form chunk states vs recurrence", rel_err(Y, torch.stack(ref, -2))) < 1e-13


def test_decayed_states_gradcheck():
    gen = _gen(1)
    args = (-torch.rand(1, 1, 7, generator=gen, **f64), torch.randn(1, 1, 7, 2, generator=gen, **f64),
            torch.randn(1, 1, 2, generator=gen, **f64))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(lambda t, x, x0: decayed_states(t, x, x0, 2), args)


def test_chunk_states_gradcheck_and_values():
    gen = _gen(2)
    A = (torch.eye(3, **f64) * 0.9 - 0.2 * torch.randn(1, 2, 5, 3, 3, generator=gen, **f64)).requires_grad_()
    X = torch.randn(1, 2, 5, 3, 2, generator=gen, **f64).requires_grad_()
    S0 = torch.randn(1, 2, 3, 2, generator=gen, **f64).requires_grad_()
    P, S = chunk_states(A, X, S0)
    ref, cur = [], S0
    for c in range(5):
        ref.append(cur)
        cur = A[:, :, c] @ cur + X[:, :, c]
    assert rel_err(P, torch.stack(ref, 2)) < 1e-15 and rel_err(S, cur) < 1e-15
    assert torch.autograd.gradcheck(chunk_states, (A, X, S0))


def _token_recurrence(q, k, v, g, beta, S0):
    """Token by token: the states before each token, the final state and ``q_t^T S_t`` ([B, H, T, *] layout)."""
    B, H, T, K = k.shape
    S, P, o = S0, [], []
    for t in range(T):
        P.append(S)
        a = torch.exp(g[:, :, t])[..., None, None]
        kt, vt = k[:, :, t], v[:, :, t]
        if beta is None:
            S = a * S + kt[..., :, None] * vt[..., None, :]
        else:
            u = beta[:, :, t, None] * (vt - ((a * S).transpose(-1, -2) @ kt[..., None])[..., 0])
            S = a * S + kt[..., :, None] * u[..., None, :]
        o.append((q[:, :, t, None, :] @ S)[..., 0, :])
    return torch.stack(P, 2), S, torch.stack(o, 2)


@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("init", [False, True])
def test_backbone_values_and_gradcheck(gdn, init, record):
    B, H, T, K, V, BT = 1, 1, 12, 3, 2, 4
    gen = _gen(3)
    q = torch.randn(B, H, T, K, generator=gen, **f64)
    k = F.normalize(torch.randn(B, H, T, K, generator=gen, **f64), dim=-1)
    v, g = torch.randn(B, H, T, V, generator=gen, **f64), -torch.rand(B, H, T, generator=gen, **f64)
    beta = torch.rand(B, H, T, generator=gen, **f64) if gdn else None
    S0 = torch.randn(B, H, K, V, generator=gen, **f64) if init else torch.zeros(B, H, K, V, **f64)
    u, P, o, S, gl = stages.backbone(chunked, q, k, v, g, beta, S0, BT)
    Pt, St, ot = _token_recurrence(q, k, v, g, beta, S0)
    assert record("backbone chunk states vs token recurrence", rel_err(P, Pt[:, :, ::BT])) < 1e-14
    assert rel_err(S, St) < 1e-14 and rel_err(o, ot) < 1e-14
    leaves = tuple(t.clone().requires_grad_() for t in (q, k, v, g) + ((beta,) if gdn else ()) + (S0,))

    def fn(*a):
        return stages.backbone(chunked, *a[:4], a[4] if gdn else None, a[-1], BT)[:4]

    assert torch.autograd.gradcheck(fn, leaves)


def _readout_case(seed, T=11, BT=4, R=3, H=1, tau=0.0):
    """A real segmentation (scan) and random readout inputs, head-major like chunk_dla's stages."""
    B, K, V = 1, 3, 2
    gen = _gen(seed)
    Tp = -(-T // BT) * BT
    q = torch.randn(B, H, Tp, K, generator=gen, **f64)
    k = F.normalize(torch.randn(B, H, Tp, K, generator=gen, **f64), dim=-1)
    v = torch.randn(B, H, Tp, V, generator=gen, **f64)
    g = -torch.rand(B, H, Tp, generator=gen, **f64) * 0.3
    g[:, :, T:] = 0
    u, P, _, _, gl = stages.backbone(chunked, q, k, v, g, None, torch.zeros(B, H, K, V, **f64), BT)
    scan = stages.scan(chunked, k.reshape(B * H, Tp, K), u.reshape(B * H, Tp, V), g.reshape(B * H, Tp), T, BT,
                       tau=tau, capacity=R)
    starts = scan.starts.view(B, H, T, R)
    x, real = starts[..., :-1], (scan.lam_index.view(B, H, T, R)[..., 1:] >= 0) & (starts[..., :-1] >= 0)
    dlam = torch.randn(B, H, T, R - 1, generator=gen, **f64) * real
    return q, k, u, gl, P, dlam, x, real, BT


@pytest.mark.parametrize("group_bytes", [1, 1 << 40])
def test_boundary_readout_gradcheck(group_bytes):
    q, k, u, gl, P, dlam, x, real, BT = _readout_case(5)
    assert bool(real.any())
    leaves = tuple(t.detach().clone().requires_grad_() for t in (q, k, u, gl, P, dlam))

    cfg = StageConfig(tuning=Tuning(torch_group_bytes=group_bytes))

    def fn(q, k, u, gl, P, dlam):
        return stages.readout(chunked, q, k, u, gl, P, dlam, x, real, BT, cfg)

    assert torch.autograd.gradcheck(fn, leaves)


def test_boundary_readout_group_size_changes_nothing():
    q, k, u, gl, P, dlam, x, real, BT = _readout_case(6, T=37, R=4, H=2)
    res = []
    for gb in (1, 1 << 40):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, u, gl, P, dlam)]
        out = stages.readout(chunked, *leaves, x, real, BT, StageConfig(tuning=Tuning(torch_group_bytes=gb)))
        res.append([out] + list(torch.autograd.grad(out.square().sum(), leaves)))
    for a, b in zip(*res):
        assert rel_err(a, b) < 1e-14


@pytest.mark.parametrize("gdn", [False, True])
def test_chunked_gradcheck_with_initial_state(gdn):
    """Gradients of a continued call, the initial slots included (virtual boundaries, backbone from ``S0``)."""
    x = make_inputs(B=1, T=13, H=1, G=1, K=3, V=2, R=3, gdn=gdn, seed=9)
    kw = dict(policy="dla", capacity=3, tau=0.0)
    head = {n: (t[:, :6] if t is not None else None) for n, t in x.items()}
    tail = {n: (t[:, 6:].clone().requires_grad_() if t is not None else None) for n, t in x.items()}
    _, st = naive_dla(**head, **kw, output_final_state=True)
    names = [n for n, t in tail.items() if t is not None]
    slots = st.slots.clone().requires_grad_()

    def fn(*args):
        init = DLAState(args[-1], st.counts, st.info, st.num_slots, st.open_norm)
        o, fin = chunk_dla(**dict(zip(names, args[:-1])), **kw, initial_state=init, chunk_size=4,
                           output_final_state=True)
        return o, fin.slots

    assert torch.autograd.gradcheck(fn, tuple(tail[n] for n in names) + (slots,), eps=1e-6, atol=1e-7)
