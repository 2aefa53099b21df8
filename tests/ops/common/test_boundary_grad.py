"""The trainable boundary (``boundary_grad="ste"``, docs/design.md 3.2): every implementation's gradients are those
of the gated surrogate, checked by finite differences; the outputs and decisions do not change; bad arguments are
refused."""

import os

import pytest
import torch

from dla.ops import chunk_dla, masked_dla, naive_dla
from dla.ops.chunk import chunk_dla_op
from dla.ops.common.boundary_grad import initial_open_slot, opening_scores, scored_openings
from dla.ops.common.score import SCORES
from tests.conftest import make_inputs, rel_err

NAMES = ("q", "k", "v", "g", "lam", "beta")
TEMP = 0.2


def surrogate(q, k, v, g, lam, beta, seg, *, tau, capacity, policy, temperature=TEMP, scale=None, score="drift"):
    """The slot form replaying the fixed decisions of ``seg``, each scored slot's readout times
    ``1 + sigmoid(z_a(theta)) - sigmoid(z_a(theta0))`` (``theta0``: the scores in ``seg``): value 1 at ``theta0``
    and the straight-through gate's derivative, so that finite differences see the surrogate's gradient."""
    B, T, G, K = q.shape
    H, V = v.shape[2], v.shape[3]
    rep, scale = H // G, K ** -0.5 if scale is None else scale
    fn = SCORES[score]
    out = []
    for b in range(B):
        for h in range(H):
            slots, rows = [], []  # slot: [S, gate]
            for t in range(T):
                kt, qt, at = k[b, t, h // rep], q[b, t, h // rep], torch.exp(g[b, t, h])
                slots = [[at * S, gate] for S, gate in slots]
                ut = v[b, t, h] if beta is None else beta[b, t, h] * (v[b, t, h] - kt @ sum(S for S, _ in slots)) \
                    if slots else beta[b, t, h] * v[b, t, h]
                st = torch.outer(kt, ut)
                if not slots:
                    slots.append([st, None])
                elif bool(seg.boundary[b, t, h]):
                    S_open = slots[-1][0]
                    info = fn((S_open * S_open).sum(), (S_open * st).sum(), (kt @ kt) * (ut @ ut), K * V)
                    i = int(seg.merged[b, t, h])
                    if i >= 0:
                        slots[i:i + 2] = [[slots[i][0] + slots[i + 1][0], slots[i][1]]]
                    z0 = (seg.score[b, t, h].detach() - tau) / temperature
                    slots.append([st, 1 + torch.sigmoid((info - tau) / temperature) - torch.sigmoid(z0)])
                else:
                    slots[-1][0] = slots[-1][0] + st
                o = 0
                for r, (S, gate) in enumerate(reversed(slots)):
                    w = lam[b, t, h, min(r, capacity - 1)]
                    o = o + (w if gate is None else w * gate) * (qt @ S)
                rows.append(o * scale)
            out.append(torch.stack(rows))
    return torch.stack(out).view(B, H, T, V).transpose(1, 2)


def _inputs(gdn, policy, seed=0, **kw):
    C = kw.pop("R", 3)
    x = make_inputs(gdn=gdn, R=C, seed=seed, requires_grad=True, **kw)
    return [x[n] for n in NAMES], dict(policy=policy, capacity=C, tau=0.5)


def _grads(o, w, args):
    return torch.autograd.grad((o * w).sum(), [a for a in args if a is not None])


def test_surrogate_reference_by_finite_differences():
    """The reference's autograd is the derivative of the surrogate (gradcheck: finite differences, float64)."""
    for gdn, policy in ((False, "dla"), (True, "dla_unbounded")):
        args, opt = _inputs(gdn, policy, B=1, T=9, H=1, G=1, K=2, V=2, R=2, seed=3)
        _, _, seg = naive_dla(*args, **opt, return_segmentation=True)
        assert int(seg.boundary[:, 1:].sum()) >= 3
        f = lambda *a: surrogate(*a, seg, **opt)  # noqa: E731
        assert torch.autograd.gradcheck(f, tuple(args), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("policy,C,G", [("dla", 3, 1), ("dla", 2, 2), ("dla_unbounded", 3, 2),
                                        ("dla_unbounded", 1, 1)])
@pytest.mark.parametrize("gdn", [False, True], ids=["mamba2", "gdn"])
def test_every_implementation_has_the_surrogate_gradient(gdn, policy, C, G):
    """naive (autograd of the slot form), masked (recomputed scores) and chunked (torch, float64) against the
    surrogate, for every input; the gate's path changes the gradients of the score's inputs."""
    args, opt = _inputs(gdn, policy, B=2, T=37, H=2, G=G, K=4, V=3, R=C, seed=7)
    opt["tau"] = 0.4
    o_ref, _, seg = naive_dla(*args, **opt, return_segmentation=True)
    assert int(seg.boundary[:, 1:].sum()) >= 20
    assert policy != "dla" or int((seg.merged >= 0).sum()) >= 10
    w = torch.randn_like(o_ref)
    ref = _grads(surrogate(*args, seg, **opt), w, args)
    off = _grads(o_ref, w, args)
    runs = {
        "naive": naive_dla(*args, **opt, boundary_grad="ste", boundary_temperature=TEMP)[0],
        "masked": masked_dla(*args, **opt, segmentation=seg, boundary_grad="ste", boundary_temperature=TEMP)[0],
        "chunk": chunk_dla(*args, **opt, chunk_size=16, boundary_grad="ste", boundary_temperature=TEMP)[0],
    }
    names = [n for n, a in zip(NAMES, args) if a is not None]
    for impl, o in runs.items():
        assert torch.equal(o, o_ref) if impl == "naive" else rel_err(o, o_ref) < 1e-13
        for name, got, want in zip(names, _grads(o, w, args), ref):
            assert rel_err(got, want) < 1e-11, (impl, name, rel_err(got, want))
    for name, a, b in zip(names, ref, off):  # the score's inputs get the gate's path; q and lam do not
        assert (rel_err(a, b) > 1e-3) == (name in ("k", "v", "g", "beta")), (name, rel_err(a, b))


@pytest.mark.parametrize("policy", ["dla", "dla_unbounded"])
def test_from_an_initial_state_and_packed(policy):
    """Slots carried in from a state (token 0 scored against the state's open slot; the reference: autograd of
    the slot form, which the tests above hold to the surrogate) and packed sequences (equal to separate calls)."""
    args, opt = _inputs(True, policy, B=1, T=50, H=2, G=1, K=3, V=3, R=3, seed=11)
    head = [a[:, :20].detach() if a is not None else None for a in args]
    _, state = naive_dla(*head, **opt, output_final_state=True)
    tail = [a[:, 20:].detach().requires_grad_() if a is not None else None for a in args]
    o_ref, _, seg = naive_dla(*tail, **opt, initial_state=state, return_segmentation=True)
    assert bool(seg.boundary[:, 0].any())
    w = torch.randn_like(o_ref)
    ref = _grads(naive_dla(*tail, **opt, initial_state=state, boundary_grad="ste", boundary_temperature=TEMP)[0], w,
                 tail)
    off = _grads(o_ref, w, tail)
    o, _ = chunk_dla(*tail, **opt, initial_state=state, chunk_size=8, boundary_grad="ste", boundary_temperature=TEMP)
    assert rel_err(off[1], ref[1]) > 1e-3  # the gates reach k
    for got, want in zip(_grads(o, w, tail), ref):
        assert rel_err(got, want) < 1e-11
    cu = torch.tensor([0, 17, 30])
    o_p, _ = chunk_dla(*tail, **opt, cu_seqlens=cu, chunk_size=8, boundary_grad="ste", boundary_temperature=TEMP)
    parts = [chunk_dla(*(a[:, s:e] if a is not None else None for a in tail), **opt, chunk_size=8,
                       boundary_grad="ste", boundary_temperature=TEMP)[0] for s, e in ((0, 17), (17, 30))]
    for a, b in zip(_grads(o_p, w[:, :30], tail), _grads(torch.cat(parts, 1), w[:, :30], tail)):
        assert rel_err(a, b) < 1e-12


def test_outputs_and_decisions_unchanged():
    """Bitwise: outputs, segmentation and final state with the option equal those without it (float32 and 64)."""
    for dtype in (torch.float32, torch.float64):
        for policy, gdn in (("dla", False), ("dla_unbounded", True)):
            args, opt = _inputs(gdn, policy, B=2, T=70, H=2, G=1, K=4, V=4, R=4, seed=2, dtype=dtype)
            o0, s0, seg0 = chunk_dla(*args, **opt, output_final_state=True, return_segmentation=True)
            o1, s1, seg1 = chunk_dla(*args, **opt, output_final_state=True, return_segmentation=True,
                                     boundary_grad="ste")
            assert torch.equal(o0, o1) and torch.equal(s0.slots, s1.slots)
            assert all(torch.equal(getattr(seg0, f), getattr(seg1, f)) for f in ("boundary", "merged", "starts"))
            with torch.no_grad():  # inference: no gates at all
                assert torch.equal(chunk_dla(*args, **opt, boundary_grad="ste")[0], o0)


def test_gradients_of_q_and_lam_unchanged_and_off_is_default():
    args, opt = _inputs(False, "dla", B=1, T=40, H=2, G=1, K=4, V=4, R=4, seed=4, dtype=torch.float32)
    o0 = chunk_dla(*args, **opt)[0]
    o1 = chunk_dla(*args, **opt, boundary_grad=None, boundary_temperature=0.5)[0]
    o2 = chunk_dla(*args, **opt, boundary_grad="ste")[0]
    w = torch.randn_like(o0)
    g0, g1, g2 = (_grads(o, w, args) for o in (o0, o1, o2))
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert torch.equal(g0[0], g2[0]) and rel_err(g2[4], g0[4]) < 1e-6


def test_opening_scores_equal_the_segmentation_scores():
    """The differentiable recompute gives the slot form's scores at every scored opening, also from a state."""
    args, opt = _inputs(False, "dla", B=2, T=45, H=2, G=2, K=3, V=4, R=3, seed=5)
    args = [a.detach() if a is not None else None for a in args]
    _, state = naive_dla(*(a[:, :10] if a is not None else None for a in args), **opt, output_final_state=True)
    for init, sl in ((None, slice(0, 45)), (state, slice(10, 45))):
        q, k, v, g, lam, _ = (a[:, sl] if a is not None else None for a in args)
        _, _, seg = naive_dla(q, k, v, g, lam, **opt, initial_state=init, return_segmentation=True)
        B, T, H, V = v.shape
        N, K = B * H, k.shape[-1]
        rows = lambda x: x.transpose(1, 2).reshape(N, T, *x.shape[3:])  # noqa: E731
        opened = rows(seg.boundary)
        carry, fresh = initial_open_slot(init, N, K, V, k.dtype, k.device)
        scored = scored_openings(opened, fresh)
        got = opening_scores(rows(k), rows(v), rows(g), opened, scored, carry, "drift", block=16)
        assert int(scored.sum()) >= 20 and (init is not None or not bool(scored[:, 0].any()))
        assert rel_err(got[scored], rows(seg.score)[scored]) < 1e-12 and bool((got[~scored] == 0).all())


@pytest.mark.parametrize("impl", [naive_dla, masked_dla, chunk_dla])
def test_bad_arguments(impl):
    args, opt = _inputs(False, "dla", B=1, T=6, H=1, G=1, K=2, V=2, R=2)
    for bad in ("sigmoid", True, 1):
        with pytest.raises(ValueError, match="boundary_grad"):
            impl(*args, **opt, boundary_grad=bad)
    for bad in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="boundary_temperature"):
            impl(*args, **opt, boundary_grad="ste", boundary_temperature=bad)
    for policy in ("single", "fenwick", "fixed"):
        kw = dict(opt, policy=policy)
        lam = None if policy == "single" else args[4]
        if policy == "fenwick":
            lam = torch.ones(1, 6, 1, 4, dtype=torch.float64)
        with pytest.raises(ValueError, match="boundary_grad"):
            impl(*args[:4], lam, None, **kw, boundary_grad="ste")


def test_registered_op_carries_the_option():
    """The op ``torch.compile`` sees (``torch.ops.dla.chunk_dla``) passes the option to its backward."""
    args, opt = _inputs(True, "dla", B=1, T=30, H=2, G=1, K=3, V=3, R=3, seed=9, dtype=torch.float32)
    want = chunk_dla(*args, **opt, boundary_grad="ste")[0]
    o = chunk_dla_op(*args, None, None, opt["tau"], opt["capacity"], "dla", 64, "drift", 64, "auto", "auto", None,
                     "ste", 0.1)
    w = torch.randn_like(o)
    for a, b in zip(_grads(o, w, args), _grads(want, w, args)):
        assert rel_err(a, b) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("policy,gdn", [("dla", False), ("dla_unbounded", True)])
def test_triton_backend_matches_the_float64_surrogate(policy, gdn):
    """The Triton stages (no kernel change: the gates enter through lam), float32, on the GPU or the interpreter."""
    args, opt = _inputs(gdn, policy, B=1, T=40, H=2, G=1, K=4, V=4, R=3, seed=6)
    o_ref, _, seg = naive_dla(*args, **opt, return_segmentation=True)
    w = torch.randn_like(o_ref)
    ref = _grads(surrogate(*args, seg, **opt), w, args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a32 = [a.detach().float().to(device).requires_grad_() if a is not None else None for a in args]
    o, _, seg32 = chunk_dla(*a32, **opt, chunk_size=16, backend="triton", precision="ieee", boundary_grad="ste",
                            boundary_temperature=TEMP, return_segmentation=True)
    assert torch.equal(seg32.boundary.cpu(), seg.boundary)
    for got, want in zip(_grads(o, w.float().to(device), a32), ref):
        assert rel_err(got, want) < 2e-5
