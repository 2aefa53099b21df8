"""The public chunked DLA: one entry point for training, prefill and packed sequences (``docs/design.md`` section 4).

:func:`chunk_dla` validates its inputs once, picks the backend once (:mod:`dla.ops.chunked`, PyTorch, or
:mod:`dla.ops.triton`, the same stage functions as kernels) and runs the stages, with one autograd Function per
stage boundary:

1. ``_Heads``: the caller's ``[B, T, G, D]`` tensors as head-major copies ``[B, H, Tp, D]`` (float32, or float64
   for float64 inputs; ``Tp`` the length padded to whole chunks).
2. ``_Mamba2Backbone`` / ``_GDNBackbone``: the backbone's chunk pass: pseudo-values ``u``, chunk states ``P``,
   plain output ``o_base``, final state.
3. The segmentation scan (no gradient), or the fixed schedule of ``single`` / ``fenwick``.
4. ``_LamWeights``: ``lam0`` and the telescoping ``dlam`` from the live-slot record.
5. ``_Readout``: the boundary terms over the live boundaries' prefix states.
6. ``_Combine``: ``scale * (lam0 * o_base + terms)`` in the caller's layout and dtype.

The stage Functions save the caller's ``q, k, v`` rather than their head-major copies and rebuild the copies in
the backward (bitwise equal), so a training step keeps the smaller tensors alive. Under ``torch.compile`` the
training call is the single registered op ``torch.ops.dla.chunk_dla`` (fake and autograd registrations; its
backward recomputes the forward), so the layers compile with ``fullgraph=True``.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from types import ModuleType
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from dla.ops import chunked
from dla.ops.chunked.layout import chunk_segsum, grouped_copy, heads_grad
from dla.ops.chunked.state import final_state, initial_terms
from dla.ops.common.boundary_grad import (TEMPERATURE, BoundaryGrad, OldRankGate, initial_open_slot,
                                          opening_scores, rank_gates, scored_openings, slot_gates)
from dla.ops.common.policy import Policy
from dla.ops.common.record import fixed_schedule
from dla.ops.common.state import UNUSED_START, DLAState, Segmentation, empty_segmentation, empty_state
from dla.ops.utils.checks import check_dla_args
from dla.ops.utils.cu_seqlens import PaddedRows, check_cu_seqlens, length_buckets
from dla.ops.utils.precision import interpreting, resolve_precision
from dla.ops.utils.tuning import CHOICES as TUNING_CHOICES
from dla.ops.utils.tuning import StageConfig, Tuning


def chunk_dla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    lam: Optional[Tensor] = None,
    beta: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    policy: Union[str, Policy] = "dla",
    tau: Optional[float] = None,
    capacity: Optional[int] = None,
    block_size: Optional[int] = None,
    score: Optional[str] = None,
    initial_state: Optional[DLAState] = None,
    output_final_state: bool = False,
    return_segmentation: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    chunk_size: int = 64,
    backend: Optional[str] = None,
    precision: Optional[str] = None,
    tuning: Optional[Tuning] = None,
    check_values: Optional[bool] = None,
    boundary_grad: Optional[str] = None,
    boundary_temperature: float = TEMPERATURE,
):
    """Dynamic Linear Attention, chunked (``O(T C)``); semantics of :func:`dla.ops.naive_dla` (additive slot
    transition).

    Args:
        q, k: ``[B, T, G, K]``; v: ``[B, T, H, V]``; g: ``[B, T, H]`` log-decays ``<= 0``; lam: ``[B, T, H, R]`` or
            ``None`` (ones); beta: ``[B, T, H]`` (Gated DeltaNet) or ``None`` (Mamba-2); scale: default
            ``K ** -0.5``. As :func:`dla.ops.naive_dla`.
        policy: a :class:`~dla.ops.Policy`, or its kind completed by ``tau`` (default 0.6), ``capacity`` (30),
            ``block_size`` (64) and ``score`` (``drift``), which must then be left ``None`` if a Policy is given.
        initial_state: a :class:`~dla.ops.DLAState` to continue from (built by the same policy kind and capacity).
        output_final_state, return_segmentation: also return the final state / the
            :class:`~dla.ops.Segmentation`.
        cu_seqlens: ``[N + 1]`` int cumulative sequence offsets (FlashAttention convention) of ``N`` sequences
            packed along ``T`` of a batch of one; every sequence starts with an empty cache (or with row ``n``
            of ``initial_state``, whose batch is then ``N``), and the final state has batch ``N``. The sequences
            run as the rows of right-padded batches grouped by length (a row is padded to at most twice its
            chunks), or of one batch when a state goes in or out.
        chunk_size: tokens per chunk (``>= 1``; the Triton backend needs a power of two ``>= 16``).
        backend: ``torch`` (any device; computes in float64 for float64 inputs, float32 otherwise), ``triton``
            (the kernels, float32; CUDA tensors, or CPU under ``TRITON_INTERPRET=1``), or ``None``: ``triton`` for
            CUDA tensors that are not float64 when Triton is installed, else ``torch``.
        precision: operands of the Triton backbone and readout kernels' matrix products (float32 accumulation,
            states, outputs and gradients in every mode; the segmentation scan keeps float32-accurate products, so
            the decisions do not depend on it; the torch backend ignores it). ``ieee``: float32 on the CUDA cores;
            ``tf32x3``: three TF32 tensor-core passes (float32-accurate); ``tf32``: one pass; ``bf16`` / ``fp16``:
            operands rounded to 16 bits, one pass. ``None`` (auto): on CUDA ``bf16`` for bfloat16 ``v``, else
            ``tf32x3``; ``ieee`` under ``TRITON_INTERPRET=1`` (whose ``tl.dot`` on bfloat16 is wrong: ``bf16`` is
            refused there). Anything else: ``ValueError``.
        tuning: the kernels' launch parameters (:class:`~dla.ops.utils.tuning.Tuning`; default: the measured
            defaults). Results do not depend on it beyond rounding.
        check_values: look at the values (no NaN or inf, ``g <= 0``, a stable delta rule): ``None`` checks CPU
            inputs always and GPU inputs under ``torch.autograd.set_detect_anomaly`` (one host sync).
        boundary_grad: ``None`` (default: the boundary decisions pass no gradient) or ``"ste"``: the trainable
            boundary of ``docs/design.md`` 3.2 (policies ``dla`` and ``dla_unbounded``). Each slot a score opened
            multiplies its readout by ``1 + p - stopgrad(p)``, ``p = sigmoid((I_a - tau) / boundary_temperature)``:
            the outputs and decisions are bitwise those without it, and the backward carries the readout's
            gradient to the score ``I_a`` and through it to ``k, v, g, beta``. Costs a differentiable recompute of
            the scores at the boundaries (PyTorch, both backends); skipped when autograd is off or no input of the
            score needs a gradient.
        boundary_temperature: ``> 0``, the gate's temperature (default 0.1).

    Returns:
        ``(o [B, T, H, V] in the dtype of v, final_state or None)``, plus the :class:`~dla.ops.Segmentation` if
        asked. Gradients are exact for ``q, k, v, g, beta, lam`` (for the gated surrogate with ``boundary_grad``).

    Example:
        >>> B, T, H, K = 1, 100, 2, 16
        >>> q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        >>> o, state = chunk_dla(q, k, v, -torch.rand(B, T, H), capacity=8, output_final_state=True)
        >>> o.shape, state.slots.shape
        (torch.Size([1, 100, 2, 16]), torch.Size([1, 2, 8, 16, 16]))
    """
    pol = Policy.of(policy, tau=tau, capacity=capacity, block_size=block_size, score=score)
    bg = BoundaryGrad.of(boundary_grad, boundary_temperature, pol)
    if torch.compiler.is_compiling() and initial_state is None and not output_final_state and \
            not return_segmentation:
        o = chunk_dla_op(q, k, v, g, lam, beta, cu_seqlens, scale, pol.tau, pol.capacity, pol.kind,
                         pol.block_size, pol.score, chunk_size, "auto" if backend is None else backend,
                         "auto" if precision is None else precision, _tuning_list(tuning), boundary_grad,
                         float(boundary_temperature))
        return o, None
    bounds = None  # the packed sequences' offsets (the q checks come first if q is no [B, T, G, K] tensor)
    if cu_seqlens is not None and isinstance(q, Tensor) and q.dim() == 4:
        bounds = check_cu_seqlens(cu_seqlens, q.shape[1], q.shape[0])
    longest = None if bounds is None else max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    dims = check_dla_args(q, k, v, g, lam, beta, policy=pol, scale=scale, initial_state=initial_state,
                          check_finite=check_values, longest=longest)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    impl = select_backend(backend, v, chunk_size)
    if tuning is not None and not isinstance(tuning, Tuning):
        raise ValueError(f"tuning: expected a dla.ops.utils.tuning.Tuning or None, got {type(tuning).__name__}")
    cfg = StageConfig(resolve_precision(precision, v.is_cuda, dtype=v.dtype), tuning or Tuning())
    run = _Run(impl, cfg, pol, dims.scale, chunk_size, output_final_state, return_segmentation, bg)
    if cu_seqlens is None:
        return run(q, k, v, g, lam, beta, initial_state, dims.R)
    return _packed(run, q, k, v, g, lam, beta, initial_state, dims.R, bounds)


def select_backend(backend: Optional[str], v: Tensor, chunk_size: int) -> ModuleType:
    """The stage module of ``backend`` (``None``: ``triton`` for CUDA tensors that are not float64 when Triton is
    installed, else ``torch``); ``ValueError`` naming the argument where the backend cannot run these inputs."""
    if backend is None:
        backend = "triton" if v.is_cuda and v.dtype != torch.float64 and has_triton() else "torch"
    if backend == "torch":
        return chunked
    if backend != "triton":
        raise ValueError(f"backend: expected None, 'torch' or 'triton', got {backend!r}")
    if chunk_size < 16 or chunk_size > 64 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: the triton backend takes 16, 32 or 64 (its segmentation scan holds "
                         f"[chunk, chunk] tables in shared memory), got {chunk_size}")
    if v.dtype == torch.float64:
        raise ValueError("backend: 'triton' computes in float32; pass float32/bfloat16/float16 inputs or use "
                         "backend='torch' (float64)")
    if not v.is_cuda and not interpreting():
        raise ValueError("backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    if not has_triton():
        raise ValueError("backend: 'triton' needs Triton installed (pip install triton)")
    from dla.ops import triton as kernels  # an optional dependency: imported only when chosen

    return kernels


def has_triton() -> bool:
    """Whether Triton can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class _Layout:
    """How the stages' head-major copies are made from the caller's tensors (and rebuilt in the backwards)."""

    impl: ModuleType
    H: int
    pad: int
    dtype: torch.dtype

    @torch.no_grad()
    def copy(self, x: Tensor) -> Tensor:
        return self.impl.heads_copy(x, self.H, self.pad, self.dtype)


@dataclass(frozen=True)
class _Run:
    """One call's stage pipeline: backend, stage config, policy and the options that do not change per batch."""

    impl: ModuleType
    cfg: StageConfig
    policy: Policy
    scale: float
    BT: int
    output_final_state: bool
    return_segmentation: bool
    boundary_grad: Optional[BoundaryGrad] = None

    def __call__(self, q, k, v, g, lam, beta, init, R, lengths=None):
        impl, cfg, policy, BT = self.impl, self.cfg, self.policy, self.BT
        B, T, G, K = q.shape
        H, V = v.shape[2], v.shape[3]
        dt = torch.promote_types(v.dtype, torch.float32)
        if T == 0:
            return self._empty(v, init, B, H, K, V, R, dt)
        NT = -(-T // BT)
        pad = NT * BT - T
        Tp = NT * BT
        layout = _Layout(impl, H, pad, dt)
        qh, kh, vh = (_Heads.apply(x, layout) for x in (q, k, v))  # [B, H, Tp, *]
        gh = F.pad(g.to(dt).transpose(1, 2), (0, pad))  # [B, H, Tp]: padded tokens do not decay
        gl = gh.reshape(B, H, NT, BT).cumsum(-1)  # chunk-local: never differences of one long cumsum
        S0 = init.slots.to(dt).sum(2) if init is not None else torch.zeros(B, H, K, V, dtype=dt, device=v.device)
        if beta is None:
            P, o_base, S_last = _Mamba2Backbone.apply(impl, cfg, layout, qh, kh, vh, gl, S0, q, k, v)
            u = vh
        else:
            bh = F.pad(beta.to(dt).transpose(1, 2), (0, pad)).contiguous()
            u, P, o_base, S_last = _GDNBackbone.apply(impl, cfg, layout, qh, kh, vh, bh, gl, S0, q, k, v)

        out_state, out_seg = self.output_final_state, self.return_segmentation
        scan = None
        if not policy.data_dependent and init is None and not out_state and not out_seg:
            starts, lam_index = (x.expand(B, H, T, R) for x in fixed_schedule(policy, T, R, v.device))
        else:
            hpg = H // G
            keys = grouped_copy(k.detach(), Tp) if hpg > 1 else kh.detach()  # one row per group of heads
            rows = None if lengths is None else lengths.to(v.device).repeat_interleave(H)
            scan = impl.scan(keys.reshape(B * G, Tp, K), u.detach().reshape(B * H, Tp, V),
                             gh.detach().reshape(B * H, Tp), T, policy=policy, chunk_size=BT, R=R,
                             initial_state=init, lengths=rows, heads_per_group=hpg, cfg=cfg)
            starts, lam_index = scan.starts.view(B, H, T, R), scan.lam_index.view(B, H, T, R)

        lam_all = lam if lam is not None else torch.ones(B, T, H, R, dtype=dt, device=v.device)
        gates = masks = None
        if self.boundary_grad is not None and torch.is_grad_enabled() and \
                any(x is not None and x.requires_grad for x in (k, v, g, beta)):
            gates, lam_all, masks = self._gates(kh, u, gh, scan, init, lam_all, starts, lam_index, dt)
        lam0, dlam = _LamWeights.apply(impl, lam_all, lam_index, dt)
        x = starts[..., :-1]  # boundary positions [B, H, T, R - 1]
        nxt_live = lam_index[..., 1:] >= 0
        terms = None
        if x.shape[-1] > 0:
            terms = _Readout.apply(impl, cfg, layout, qh, kh, u, gl, P, dlam, x, nxt_live & (x >= 0), BT, q, k,
                                   v if beta is None else None)
        seg = chunk_segsum(gl) if init is not None or out_state else None
        if init is not None:
            ldec = (seg[:, :, :NT, 0, None] + gl).reshape(B, H, Tp)[:, :, :T]  # log D(-1, t)
            extra = initial_terms(qh[:, :, :T], ldec, x, dlam, nxt_live & (x < 0), init,
                                  cfg.tuning.torch_group_bytes)
            terms = extra if terms is None else terms + extra
        o = _Combine.apply(impl, lam0, o_base, terms, self.scale, v.dtype)
        if gates is not None and policy.kind == "dla_unbounded":  # the slots that share lam[..., C - 1]
            last = lam[..., -1].detach() if lam is not None else torch.ones_like(g)
            w = self.scale * last.transpose(1, 2)
            o = OldRankGate.apply(o, gates, layout.copy, q.detach(), k.detach(), (v if beta is None else u).detach(),
                                  beta is None, gh.detach(), w.to(dt), *masks, policy.capacity - 1, BT)

        final = None
        if out_state:
            width = policy.state_width(R, int(scan.m.max()))
            final = final_state(kh, u, gl, P, S_last, seg, scan, init, width, BT, policy)
        if not out_seg:
            return o, final
        view = lambda t: t.view(B, H, T, *t.shape[2:]).transpose(1, 2)  # noqa: E731
        segm = Segmentation(score=view(scan.score), boundary=view(scan.boundary), num_slots=view(scan.num_slots),
                            merged=view(scan.merged), starts=view(scan.starts), lam_index=view(scan.lam_index))
        return o, final, segm

    def _gates(self, kh, u, gh, scan, init, lam, starts, lam_index, dt):
        """The boundary gradient's gates (``docs/design.md`` 3.2): ``gates [B, H, T]`` (value 1, differentiable
        through the recomputed scores), ``lam`` read per rank ``[B, T, H, R]`` times its slot's gate (equal to
        ``lam`` where the record reads it) and the openings ``(opened, scored)`` ``[B * H, T]``. ``dla_unbounded``
        gates the ranks below ``capacity - 1`` here; the older slots, which share the last entry, get theirs from
        :class:`OldRankGate`."""
        B, H, Tp, K = kh.shape
        T, V, N, R = starts.shape[2], u.shape[-1], B * H, starts.shape[-1]
        carry, fresh = initial_open_slot(init, N, K, V, dt, kh.device)
        opened = scan.boundary
        scored = scored_openings(opened, fresh)
        info = opening_scores(kh.reshape(N, Tp, K), u.reshape(N, Tp, V), gh.reshape(N, Tp), opened, scored, carry,
                              self.policy.score, self.BT)
        gates = slot_gates(self.boundary_grad, self.policy.tau, info, scored)
        ranks = torch.arange(R, device=kh.device)
        gated = (lam_index >= 0) & (ranks < (R if self.policy.merges else R - 1))
        per_rank = rank_gates(gates, starts.reshape(N, T, R), gated.reshape(N, T, R)).view(B, H, T, R)
        lam_r = torch.gather(lam.to(dt).transpose(1, 2), -1, lam_index.clamp_min(0)) * per_rank
        return gates.view(B, H, T), lam_r.transpose(1, 2), (opened, scored)

    def _empty(self, v, init, B, H, K, V, R, dt):
        """No tokens: an empty output, the state unchanged (or empty), an empty segmentation."""
        o = v * 0  # [B, 0, H, V], connected to the inputs' graph
        final = None
        if self.output_final_state:
            final = init if init is not None else empty_state(B, H, K, V, self.policy.state_width(R, 0), dt,
                                                              v.device, self.policy)
        if not self.return_segmentation:
            return o, final
        return o, final, empty_segmentation(B, 0, H, R, dt, v.device)


def _packed(run: _Run, q, k, v, g, lam, beta, init, R, bounds: List[int]):
    """:class:`_Run` over packed sequences (offsets ``bounds``): the rows of right-padded batches, one per length
    bucket (one batch when a state goes in or out), scattered back to the packed order."""
    lens = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if init is not None and init.slots.shape[0] != len(lens):
        raise ValueError(f"initial_state: packed sequences take one row per sequence ({len(lens)}), got batch "
                         f"{init.slots.shape[0]}")
    groups = length_buckets(lens, run.BT) if init is None and not run.output_final_state else \
        [list(range(len(lens)))]
    outs, segs, places, final = [], [], [], None
    for idx in groups:
        pr = PaddedRows(bounds, idx, q.device)
        res = run(pr.rows(q), pr.rows(k), pr.rows(v), pr.rows(g), pr.rows(lam), pr.rows(beta), init, R, pr.lengths)
        outs.append(res[0][pr.valid])  # [tokens of the bucket, H, V]
        places.append(pr.positions)
        final = res[1]
        if run.return_segmentation:
            segs.append([getattr(res[2], f)[pr.valid] for f in Segmentation.__dataclass_fields__])
    place = torch.cat(places)
    inverse = None
    if len(groups) > 1:  # back to the packed order
        inverse = torch.empty_like(place)
        inverse[place] = torch.arange(place.numel(), device=place.device)
    unpack = lambda parts: (torch.cat(parts) if inverse is None else torch.cat(parts)[inverse])[None]  # noqa: E731
    o = unpack(outs)
    if not run.return_segmentation:
        return o, final
    fill = {"starts": UNUSED_START, "lam_index": -1}  # fenwick's record width grows with a bucket's length

    def widest(parts, name):
        if name not in fill:
            return parts
        width = max(x.shape[-1] for x in parts)
        return [F.pad(x, (0, width - x.shape[-1]), value=fill[name]) for x in parts]
    names = list(Segmentation.__dataclass_fields__)
    return o, final, Segmentation(*(unpack(widest([seg[n] for seg in segs], f)) for n, f in enumerate(names)))


# ---------------------------------------------------------------- the stage Functions

class _Heads(torch.autograd.Function):
    """``[B, T, G, D] -> [B, H, Tp, D]`` (the layout's copy); the backward sums each group's heads in the copy's
    dtype, then casts once (:func:`~dla.ops.chunked.layout.heads_grad`). Twice differentiable."""

    @staticmethod
    def forward(ctx, x, layout):
        ctx.shape, ctx.x_dtype = x.shape, x.dtype
        return layout.impl.heads_copy(x, layout.H, layout.pad, layout.dtype)

    @staticmethod
    def backward(ctx, grad):
        B, T, G, D = ctx.shape
        return heads_grad(grad, G, T, ctx.x_dtype), None


class _Mamba2Backbone(torch.autograd.Function):
    """``P, o_base, S`` from the copies ``qh, kh, vh``, ``gl`` and ``S0``; the caller's ``q, k, v`` come along
    only to be saved (the backward rebuilds the copies from them)."""

    @staticmethod
    def forward(ctx, impl, cfg, layout, qh, kh, vh, gl, S0, q, k, v):
        P, o, S, extra = impl.backbone_mamba2_fwd(qh, kh, vh, gl, S0, cfg)
        ctx.save_for_backward(q, k, v, gl, S0, P, *extra)
        ctx.impl, ctx.cfg, ctx.layout = impl, cfg, layout
        ctx.set_materialize_grads(False)  # unused outputs (often P or S) need no zero gradient
        return P, o, S

    @staticmethod
    @once_differentiable
    def backward(ctx, dP, do, dS):
        q, k, v, gl, S0, P, *extra = ctx.saved_tensors
        copies = (ctx.layout.copy(x) for x in (q, k, v))
        needs = ctx.needs_input_grad[3:8]
        grads = ctx.impl.backbone_mamba2_bwd(*copies, gl, S0, P, tuple(extra), _c(dP), _c(do), _c(dS), needs,
                                             ctx.cfg)
        return (None, None, None, *grads, None, None, None)


class _GDNBackbone(torch.autograd.Function):
    """``u, P, o_base, S`` of Gated DeltaNet from the copies, ``beta [B, H, Tp]``, ``gl`` and ``S0``."""

    @staticmethod
    def forward(ctx, impl, cfg, layout, qh, kh, vh, beta, gl, S0, q, k, v):
        u, P, o, S, extra = impl.backbone_gdn_fwd(qh, kh, vh, beta, gl, S0, cfg)
        ctx.save_for_backward(q, k, v, beta, gl, S0, u, P, *extra)
        ctx.impl, ctx.cfg, ctx.layout = impl, cfg, layout
        ctx.set_materialize_grads(False)
        return u, P, o, S

    @staticmethod
    @once_differentiable
    def backward(ctx, du, dP, do, dS):
        q, k, v, beta, gl, S0, u, P, *extra = ctx.saved_tensors
        copies = (ctx.layout.copy(x) for x in (q, k, v))
        needs = ctx.needs_input_grad[3:9]
        grads = ctx.impl.backbone_gdn_bwd(*copies, beta, gl, S0, u, P, tuple(extra), _c(du), _c(dP), _c(do), _c(dS),
                                          needs, ctx.cfg)
        return (None, None, None, *grads, None, None, None)


class _LamWeights(torch.autograd.Function):
    """``lam0 [B, H, T]`` and ``dlam [B, H, T, R - 1]`` from the caller's ``lam [B, T, H, RL]`` and the record."""

    @staticmethod
    def forward(ctx, impl, lam, lam_index, dtype):
        lam0, dlam, index = impl.lam_fwd(lam, lam_index, dtype)
        ctx.save_for_backward(index)
        ctx.impl, ctx.lam_shape, ctx.lam_dtype = impl, lam.shape, lam.dtype
        ctx.set_materialize_grads(False)
        return lam0, dlam

    @staticmethod
    @once_differentiable
    def backward(ctx, g0, gd):
        (index,) = ctx.saved_tensors
        if g0 is None and gd is None:
            return None, None, None, None
        return None, ctx.impl.lam_bwd(index, _c(g0), _c(gd), ctx.lam_shape, ctx.lam_dtype), None, None


class _Readout(torch.autograd.Function):
    """The boundary terms ``[B, H, T, V]`` from ``qh, kh, u, gl, P, dlam`` and the live boundaries ``x, real``;
    ``q, k`` (and ``v`` when ``u`` is its copy) come along to be saved in place of the copies."""

    @staticmethod
    def forward(ctx, impl, cfg, layout, qh, kh, u, gl, P, dlam, x, real, BT, q, k, v):
        terms, plan, meta = impl.readout_fwd(qh, kh, u, gl, P, dlam, x, real, BT, cfg=cfg, q=q, k=k)
        ctx.save_for_backward(q, k, v if v is not None else u, gl, P, dlam, *plan)
        ctx.impl, ctx.cfg, ctx.layout, ctx.meta, ctx.BT, ctx.u_is_v = impl, cfg, layout, meta, BT, v is not None
        return terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, u, gl, P, dlam, *plan = ctx.saved_tensors
        if ctx.u_is_v:
            u = ctx.layout.copy(u)
        needs = ctx.needs_input_grad[3:9]
        grads = ctx.impl.readout_bwd(grad.contiguous(), q, k, u, gl, P, dlam, tuple(plan), ctx.meta, ctx.BT, needs,
                                     cfg=ctx.cfg, heads=ctx.layout.copy)
        return (None, None, None, *grads, None, None, None, None, None, None)


class _Combine(torch.autograd.Function):
    """``o [B, T, H, V]`` in ``dtype`` = ``scale * (lam0 * o_base + terms)`` (``terms`` may be ``None``)."""

    @staticmethod
    def forward(ctx, impl, lam0, o_base, terms, scale, dtype):
        ctx.save_for_backward(lam0, o_base)
        ctx.impl, ctx.scale, ctx.has_terms = impl, scale, terms is not None
        return impl.combine_fwd(lam0, o_base, terms, scale, dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        lam0, o_base = ctx.saved_tensors
        d_lam0, d_ob, d_terms = ctx.impl.combine_bwd(do, lam0, o_base, ctx.scale, ctx.has_terms)
        return None, d_lam0, d_ob, d_terms, None, None


def _c(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


# ---------------------------------------------------------------- torch.compile: one opaque op

_TUNING_NONE = -1  # how a None field of Tuning travels in the op's integer list


def _tuning_list(tuning: Optional[Tuning]) -> Optional[List[int]]:
    """A :class:`Tuning` as the op's ``int[]`` argument (``None`` stays ``None``)."""
    if tuning is None:
        return None
    return [_TUNING_NONE if x is None else TUNING_CHOICES[f.name].index(x) if f.name in TUNING_CHOICES else int(x)
            for f, x in zip(fields(tuning), astuple(tuning))]


def _tuning_of(values: Optional[List[int]]) -> Optional[Tuning]:
    if values is None:
        return None
    return Tuning(**{f.name: None if x == _TUNING_NONE else TUNING_CHOICES[f.name][x] if f.name in TUNING_CHOICES
                     else x for f, x in zip(fields(Tuning), values)})


def _op_forward(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score, chunk_size,
                backend, precision, tuning, boundary_grad, boundary_temperature):
    return chunk_dla(q, k, v, g, lam, beta, scale=scale, policy=Policy(policy, tau, capacity, block_size, score),
                     cu_seqlens=cu_seqlens, chunk_size=chunk_size, backend=None if backend == "auto" else backend,
                     precision=None if precision == "auto" else precision, tuning=_tuning_of(tuning),
                     boundary_grad=boundary_grad, boundary_temperature=boundary_temperature)[0]


@torch.library.custom_op("dla::chunk_dla", mutates_args=())
def chunk_dla_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Optional[Tensor], beta: Optional[Tensor],
                 cu_seqlens: Optional[Tensor], scale: Optional[float], tau: float, capacity: int, policy: str,
                 block_size: int, score: str, chunk_size: int, backend: str, precision: str,
                 tuning: Optional[List[int]], boundary_grad: Optional[str] = None,
                 boundary_temperature: float = TEMPERATURE) -> Tensor:
    """``chunk_dla(...)[0]`` as one op; arguments as :func:`chunk_dla` with the policy's fields spelled out,
    ``"auto"`` for a ``None`` backend or precision, and the tuning as a list of its fields."""
    with torch.no_grad():
        return _op_forward(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score,
                           chunk_size, backend, precision, tuning, boundary_grad, boundary_temperature).contiguous()


@chunk_dla_op.register_fake
def _chunk_dla_fake(q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size, score,
                    chunk_size, backend, precision, tuning, boundary_grad=None, boundary_temperature=TEMPERATURE):
    return v.new_empty(v.shape)  # contiguous, as the op's output


@torch.library.custom_op("dla::chunk_dla_backward", mutates_args=())
def chunk_dla_backward_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Optional[Tensor],
                          beta: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: Optional[float], tau: float,
                          capacity: int, policy: str, block_size: int, score: str, chunk_size: int, backend: str,
                          precision: str, tuning: Optional[List[int]], boundary_grad: Optional[str],
                          boundary_temperature: float, needs: List[bool]) -> List[Tensor]:
    """Gradients ``[dq, dk, dv, dg, dlam, dbeta]`` of ``(o * do).sum()`` by recomputing the forward; an empty
    tensor where ``needs`` is off."""
    inputs = [q, k, v, g, lam, beta]
    leaves = [x.detach().requires_grad_(bool(n)) if x is not None else None for x, n in zip(inputs, needs)]
    want = [x for x in leaves if x is not None and x.requires_grad]
    grads = iter(())
    if want:
        with _autograd_on(), torch.enable_grad():
            o = _op_forward(*leaves, cu_seqlens, scale, tau, capacity, policy, block_size, score, chunk_size,
                            backend, precision, tuning, boundary_grad, boundary_temperature)
            grads = iter(torch.autograd.grad(o, want, do))
    return [next(grads).contiguous() if x is not None and x.requires_grad else q.new_empty(0) for x in leaves]


def _autograd_on():
    """Let autograd record inside an op's kernel: the dispatcher excludes the autograd keys below an op's autograd
    layer (thread-local), so a kernel that differentiates a recomputation must lift that exclusion for its body."""
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(keys, name))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@chunk_dla_backward_op.register_fake
def _chunk_dla_backward_fake(do, q, k, v, g, lam, beta, cu_seqlens, scale, tau, capacity, policy, block_size,
                             score, chunk_size, backend, precision, tuning, boundary_grad, boundary_temperature,
                             needs):
    inputs = [q, k, v, g, lam, beta]
    return [x.new_empty(x.shape) if x is not None and n else q.new_empty(0) for x, n in zip(inputs, needs)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in inputs[:7]))
    ctx.present = [x is not None for x in inputs[:7]]
    ctx.params = inputs[7:]


def _backward(ctx, do):
    saved = [x if present else None for x, present in zip(ctx.saved_tensors, ctx.present)]
    needs = [bool(n) and saved[i] is not None for i, n in enumerate(ctx.needs_input_grad[:6])]
    grads = chunk_dla_backward_op(do, *saved, *ctx.params, needs)
    return (*(gr if n else None for gr, n in zip(grads, needs)), *([None] * (len(ctx.needs_input_grad) - 6)))


chunk_dla_op.register_autograd(_backward, setup_context=_setup_context)
