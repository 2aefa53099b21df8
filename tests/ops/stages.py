"""The chunked form's stages as tests call them: on head-major ``[B, H, Tp, D]`` tensors, for either backend
(:mod:`dla.ops.chunked` or :mod:`dla.ops.triton`), with the stage's forward and backward paired as one autograd
Function so that gradcheck and autograd comparisons can drive them."""

import torch

from dla.ops.chunked.layout import heads_copy
from dla.ops.common.policy import Policy
from dla.ops.utils.precision import resolve_precision
from dla.ops.utils.tuning import StageConfig, Tuning


def config(x, dot=None, **tuning):
    """A stage config for tensors like ``x``: the default ``tl.dot`` mode for their device (or ``dot``) and the
    default tuning with ``tuning``'s changes."""
    return StageConfig(resolve_precision(dot, x.is_cuda), Tuning(**tuning))


def backbone(impl, q, k, v, g, beta, S0, BT, cfg=None):
    """``u, P, o, S, gl`` of the backbone stage (``g [B, H, Tp]``); differentiable in every input."""
    cfg = cfg or config(q)
    B, H, Tp = g.shape
    gl = g.reshape(B, H, Tp // BT, BT).cumsum(-1)
    if beta is None:
        P, o, S = _Mamba2.apply(impl, cfg, q, k, v, gl, S0)
        return v, P, o, S, gl
    u, P, o, S = _GDN.apply(impl, cfg, q, k, v, beta, gl, S0)
    return u, P, o, S, gl


class _Mamba2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, impl, cfg, q, k, v, gl, S0):
        P, o, S, extra = impl.backbone_mamba2_fwd(q.contiguous(), k.contiguous(), v.contiguous(), gl.contiguous(),
                                                  S0.contiguous(), cfg)
        ctx.save_for_backward(q, k, v, gl, S0, P, *extra)
        ctx.impl, ctx.cfg = impl, cfg
        ctx.set_materialize_grads(False)
        return P, o, S

    @staticmethod
    def backward(ctx, dP, do, dS):
        q, k, v, gl, S0, P, *extra = ctx.saved_tensors
        c = lambda x: None if x is None else x.contiguous()  # noqa: E731
        grads = ctx.impl.backbone_mamba2_bwd(q, k, v, gl, S0, P, tuple(extra), c(dP), c(do), c(dS),
                                             ctx.needs_input_grad[2:7], ctx.cfg)
        return (None, None, *grads)


class _GDN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, impl, cfg, q, k, v, beta, gl, S0):
        u, P, o, S, extra = impl.backbone_gdn_fwd(*(x.contiguous() for x in (q, k, v, beta, gl, S0)), cfg)
        ctx.save_for_backward(q, k, v, beta, gl, S0, u, P, *extra)
        ctx.impl, ctx.cfg = impl, cfg
        ctx.set_materialize_grads(False)
        return u, P, o, S

    @staticmethod
    def backward(ctx, du, dP, do, dS):
        q, k, v, beta, gl, S0, u, P, *extra = ctx.saved_tensors
        c = lambda x: None if x is None else x.contiguous()  # noqa: E731
        grads = ctx.impl.backbone_gdn_bwd(q, k, v, beta, gl, S0, u, P, tuple(extra), c(du), c(dP), c(do), c(dS),
                                          ctx.needs_input_grad[2:8], ctx.cfg)
        return (None, None, *grads)


def readout(impl, q, k, u, gl, P, dlam, x, real, BT, cfg=None, sources=None):
    """The boundary terms ``[B, H, T, V]``, differentiable in ``q, k, u, gl, P, dlam`` (head-major ``q, k``; with
    ``sources = (qg, kg)``, the caller's grouped ``[B, T, G, K]`` tensors those are copies of)."""
    return _Readout.apply(impl, cfg or config(q), q, k, u, gl, P, dlam, x, real, BT, sources)


class _Readout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, impl, cfg, q, k, u, gl, P, dlam, x, real, BT, sources):
        qs, ks = sources if sources is not None else (None, None)
        terms, plan, meta = impl.readout_fwd(q, k, u, gl, P, dlam, x, real, BT, cfg=cfg, q=qs, k=ks)
        ctx.save_for_backward(q, k, u, gl, P, dlam, *plan)
        ctx.impl, ctx.cfg, ctx.meta, ctx.BT, ctx.sources = impl, cfg, meta, BT, sources
        return terms

    @staticmethod
    def backward(ctx, grad):
        q, k, u, gl, P, dlam, *plan = ctx.saved_tensors
        qs, ks = ctx.sources if ctx.sources is not None else (q, k)
        heads = (lambda t: t) if ctx.sources is None else \
            (lambda t: heads_copy(t, q.shape[1], q.shape[2] - t.shape[1], q.dtype))
        grads = ctx.impl.readout_bwd(grad.contiguous(), qs, ks, u, gl, P, dlam, tuple(plan), ctx.meta, ctx.BT,
                                     ctx.needs_input_grad[2:8], cfg=ctx.cfg, heads=heads)
        return (None, None, *grads, None, None, None, None)


def scan(impl, k, u, g, T, BT, policy="dla", tau=0.3, capacity=4, block_size=4, score="drift", R=None,
         initial_state=None, lengths=None, heads_per_group=1, cfg=None):
    """The scan stage with the policy's fields as keywords (``R``: default ``capacity``)."""
    pol = Policy(policy, tau, capacity, block_size, score)
    return impl.scan(k, u, g, T, policy=pol, chunk_size=BT, R=R if R is not None else capacity,
                     initial_state=initial_state, lengths=lengths, heads_per_group=heads_per_group, cfg=cfg)


def capture_readout(monkeypatch, x, **kw):
    """The arguments ``chunk_dla(**x, **kw)`` hands its readout stage Function (``impl, cfg, layout, qh, kh, u, gl,
    P, dlam, x, real, BT, q, k, v``), or ``None`` if the readout did not run (a single live slot)."""
    import dla.ops.chunk as chunk_mod
    from dla.ops import chunk_dla

    seen = []
    apply = chunk_mod._Readout.apply
    monkeypatch.setattr(chunk_mod._Readout, "apply", lambda *a: (seen.append(a), apply(*a))[1])
    chunk_dla(**x, **kw)
    monkeypatch.setattr(chunk_mod._Readout, "apply", apply)
    assert len(seen) <= 1
    return seen[0] if seen else None
