"""Triton forward of DLA's boundary readout (DESIGN.md section 4, step 3).

One program per (value tile, query chunk, batch x head). For each candidate key chunk ``c`` (at most ``R``,
see :func:`dla.ops.dla.chunk_torch.boundary_candidates`) it adds

    coefA[t] * q_t^T P_c  +  sum_s W[t, s] D(s, t) (q_t . k_s) u_s

where ``coefA[t] = sum_{x in c} dlam_t(x) D(c*BT - 1, t)`` and ``W[t, s] = sum_{x in c, x > s} dlam_t(x)``.
The math and index conventions are in ``docs/math.md`` section 7. Every product is
:func:`dla.ops.utils.triton_dot.prec_dot` with the ``DOT`` constexpr (modes in :mod:`dla.ops.utils.precision`);
the accumulator and the output are float32 in every mode.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from dla.ops.utils.precision import min_tile, resolve_precision
from dla.ops.utils.saved import save_rebuilt, saved_rebuilt
from dla.ops.utils.triton_dot import prec_dot, prec_operand


def _idx(t: torch.Tensor) -> torch.Tensor:
    """``jidx`` or ``off`` as the kernels read them: int16 or int32 kept (the kernels compare these per-rank
    indices, never address with them; ``cand``, which they do address with, is always int32), else int32."""
    return (t if t.dtype in (torch.int16, torch.int32) else t.to(torch.int32)).contiguous()


@triton.jit
def _run(b_jt, j, BR: tl.constexpr):
    """First and last rank whose boundary lies in candidate ``j`` for some token (empty: ``BR, -1``)."""
    o_r = tl.arange(0, BR)
    hit = b_jt == j
    return tl.min(tl.where(hit, o_r[None, :], BR)), tl.max(tl.where(hit, o_r[None, :], -1))


@triton.jit
def _coef(b_jt, b_off, b_dl, j, BT: tl.constexpr, BR: tl.constexpr):
    """``cs [BT]``: sum of ``dlam`` of the boundaries in candidate ``j``; ``W [BT, BT]``: those at offsets ``> s``.
    From the query chunk's ``[BT, BR]`` tiles of :func:`_tables`: the rank loop reads registers, not memory, and
    takes a rank's column of a tile with ``tl.gather`` (H200, ``ll_mamba2`` shape, T = 16384: the key-side backward
    kernel 36.0 -> 26.9 ms against masked row sums)."""
    o_s = tl.arange(0, BT)
    b_a = tl.where(b_jt == j, b_dl, 0.)  # dlam of the ranks whose boundary lies in candidate j
    b_W = tl.zeros([BT, BT], dtype=tl.float32)
    r, r_hi = _run(b_jt, j, BR)
    while r <= r_hi:  # a candidate's boundaries are a run of ranks; the loop visits only those
        i_r = tl.zeros([BT, 1], dtype=tl.int32) + r  # [BT, 1]: column r of every row
        b_W += tl.where(o_s[None, :] < tl.gather(b_off, i_r, 1), tl.gather(b_a, i_r, 1), 0.)
        r += 1
    return tl.sum(b_a, 1), b_W


@triton.jit
def _tables(jidx, off, dl, i_bh, o_t, m_t, T, R1: tl.constexpr, BR: tl.constexpr):
    """The query chunk's per-rank tables as ``[BT, BR]`` tiles, one coalesced load each: every token's candidate
    index per rank (-1: none), its boundary's offset inside that candidate (int32) and ``dlam`` (0 past ``R1``)."""
    o_r = tl.arange(0, BR)
    p_tr = (i_bh * T + o_t[:, None]) * R1 + o_r[None, :]
    m_tr = m_t[:, None] & (o_r[None, :] < R1)
    return (tl.load(jidx + p_tr, mask=m_tr, other=-1), tl.load(off + p_tr, mask=m_tr, other=0).to(tl.int32),
            tl.load(dl + p_tr, mask=m_tr, other=0.))


@triton.jit
def _decay(gl, p_seg, i_bh, i_t, c, b_gi, Tp, BT: tl.constexpr):
    """``[BT, BT]`` decay ``exp(e[t, s])`` from key ``s`` of chunk ``c`` to query ``t`` of chunk ``i_t``: masked for
    the chunk itself, an outer product of two ``[BT]`` exponentials for an older chunk (both exponents <= 0)."""
    o_s = tl.arange(0, BT)
    b_gc = tl.load(gl + i_bh * Tp + c * BT + o_s)
    if c == i_t:
        b_x = tl.exp(tl.where(o_s[None, :] <= o_s[:, None], b_gi[:, None] - b_gc[None, :], float("-inf")))
    else:
        b_gend = tl.load(gl + i_bh * Tp + c * BT + BT - 1)
        b_x = tl.exp(b_gi + tl.load(p_seg + c + 1))[:, None] * tl.exp(b_gend - b_gc)[None, :]
    return b_x


@triton.jit
def readout_fwd_kernel(
    q, k, u, gl, P, seg, cand, jidx, off, dl, o,
    T, Tp, NT,
    K: tl.constexpr, V: tl.constexpr, R1: tl.constexpr, J: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, DOT: tl.constexpr, HG: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_g = i_bh // HG  # the row of q and k: b G + h // HG, one per group of HG heads
    o_t = i_t * BT + tl.arange(0, BT)  # query positions
    o_s = tl.arange(0, BT)  # key offsets inside a key chunk
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V

    b_q = prec_operand(tl.load(q + (i_g * Tp + o_t[:, None]) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                               other=0.), DOT)  # kept across the candidates: 16 bits in the 16-bit modes
    b_gi = tl.load(gl + i_bh * Tp + o_t, mask=m_t, other=0.)  # [BT] chunk-local log-decay of the queries
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    p_seg = seg + (i_bh * (NT + 1) + i_t) * (NT + 1)
    p_cand = cand + (i_bh * NT + i_t) * J
    # the per-rank tables, once: a candidate's boundaries are a run of ranks (chronological)
    b_jt, b_off, b_dl = _tables(jidx, off, dl, i_bh, o_t, m_t, T, R1, BR)  # [BT, BR] each
    for j in range(J):
        c = tl.load(p_cand + j)
        fresh = j == 0
        if j > 0:
            fresh = c != tl.load(p_cand + j - 1)  # candidates are sorted; a repeat holds no boundary
        if fresh:
            # coefficients of this key chunk, from the ranks whose boundary lies in it (for some token)
            b_cA, b_W = _coef(b_jt, b_off, b_dl, j, BT, BR)
            b_cA = b_cA * tl.exp(tl.load(p_seg + c) + b_gi)
            # part A: q_t^T P_c
            p_P = P + ((i_bh * NT + c) * K + o_k[:, None]) * V + o_v[None, :]
            b_P = tl.load(p_P, mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV]
            b_qP = prec_dot(b_q, b_P, DOT)
            b_o += b_cA[:, None] * b_qP
            # part B: masked intra-chunk products against chunk c's keys and values
            o_c = c * BT + o_s
            b_k = tl.load(k + (i_g * Tp + o_c[:, None]) * K + o_k[None, :], mask=m_k[None, :], other=0.)
            b_u = tl.load(u + (i_bh * Tp + o_c[:, None]) * V + o_v[None, :], mask=m_v[None, :], other=0.)
            b_qk = prec_dot(b_q, tl.trans(b_k), DOT)
            b_A = b_qk * b_W * _decay(gl, p_seg, i_bh, i_t, c, b_gi, Tp, BT)
            b_o += prec_dot(b_A, b_u, DOT)
    tl.store(o + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], b_o, mask=m_t[:, None] & m_v[None, :])


def _groups(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor) -> int:
    """Heads per group of ``q, k`` (``[B, G, Tp, K]``) for ``u`` (``[B, H, Tp, V]``): ``H / G``."""
    B, H, Tp = u.shape[:3]
    if q.shape != k.shape or q.dim() != 4 or q.shape[0] != B or q.shape[2] != Tp or H % q.shape[1]:
        raise ValueError(f"q, k: expected [B, G, Tp, K] with G dividing the {H} heads of u {tuple(u.shape)}, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    return H // q.shape[1]


def grouped_copy(x: torch.Tensor, Tp: int) -> torch.Tensor:
    """The caller's ``[B, T, G, K]`` keys or queries as ``[B, G, Tp, K]`` (zero rows past ``T``), in their dtype:
    what the readout kernels read for a group of heads (the per-head copies repeat it ``H / G`` times)."""
    return torch.nn.functional.pad(x.transpose(1, 2), (0, 0, 0, Tp - x.shape[1])).contiguous()


def boundary_terms_fwd(q, k, u, gl, P, seg, cand, jidx, off, dlam, BT: int, *, dot_precision: Optional[str] = None,
                       block_v: int = 64, num_warps: int = 4, copies16: bool = True) -> torch.Tensor:
    """Launch :func:`readout_fwd_kernel`.

    Args:
        q, k: ``[B, H, Tp, K]``, or ``[B, G, Tp, K]`` read by groups of ``H / G`` heads (:func:`grouped_copy`);
        u: ``[B, H, Tp, V]``; gl: ``[B, H, NT, BT]``; P: ``[B, H, NT, K, V]``;
        seg: ``[B, H, NT + 1, NT + 1]``; cand: ``[B, H, NT, J]``; jidx, off: ``[B, H, T, R1]`` int;
        dlam: ``[B, H, T, R1]``. All float tensors float32 (computed in float32).
        dot_precision: the operands of every ``tl.dot``: ``ieee`` (float32 on the CUDA cores), ``tf32``,
            ``tf32x3`` (three TF32 tensor-core passes, float32-accurate to about 1e-7 relative), ``bf16`` or
            ``fp16`` (16-bit operands, float32 accumulation; :mod:`dla.ops.utils.precision`); ``None``: ``tf32x3``
            on a GPU, ``ieee`` under the interpreter.
        block_v, num_warps: value columns per program and warps per program (tuning knobs).
        copies16: in the 16-bit modes, the kernel reads 16-bit copies of ``k``, ``u`` and ``P``, which every
            pair reads again (the products round them so anyway): half the bytes.
    Returns:
        ``[B, H, T, V]`` float32 boundary terms (unscaled).
    """
    B, H, Tp, V = u.shape
    K, HG = k.shape[-1], _groups(q, k, u)
    NT, T, R1, J = P.shape[2], jidx.shape[2], jidx.shape[-1], cand.shape[-1]
    dot_precision = resolve_precision(dot_precision, k.is_cuda, "dot_precision")
    f32 = lambda x: x.float().contiguous()  # noqa: E731
    # the operands each pair reads again: 16-bit copies in the 16-bit modes
    lo = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dot_precision) if copies16 else None
    op = (lambda x: x.to(lo).contiguous()) if lo is not None else f32  # noqa: E731
    o = torch.empty(B, H, Tp, V, dtype=torch.float32, device=k.device)
    BK = max(min_tile(dot_precision), triton.next_power_of_2(K))
    BV = max(min_tile(dot_precision), min(block_v, triton.next_power_of_2(V)))
    grid = (triton.cdiv(V, BV), triton.cdiv(T, BT), B * H)
    readout_fwd_kernel[grid](
        op(q) if HG > 1 else f32(q), op(k), op(u), f32(gl), op(P), f32(seg), cand.to(torch.int32).contiguous(),
        _idx(jidx), _idx(off), f32(dlam), o,
        T, Tp, NT, K=K, V=V, R1=R1, J=J, BT=BT, BK=BK, BV=BV, BR=max(2, triton.next_power_of_2(R1)),
        DOT=dot_precision, HG=HG, num_warps=num_warps,
    )
    return o[:, :, :T]


@triton.jit(do_not_specialize=["T"])
def plan_kernel(x, real, cand, jidx, off, T, sxt, R1: tl.constexpr, J: tl.constexpr, BT: tl.constexpr,
                BR: tl.constexpr):
    """Each token's candidate index and offset per rank (:func:`dla.ops.dla.chunk_torch.boundary_candidates`' ``jidx``
    and ``off``), one program per (query chunk, batch x head): ``jidx`` = the number of the chunk's sorted candidates
    below the boundary's chunk (its first occurrence), -1 where not real."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NT = tl.num_programs(0)
    o_t = i_t * BT + tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    m = (o_t < T)[:, None] & (o_r < R1)[None, :]
    b_x = tl.load(x + (i_bh * T + o_t[:, None]) * sxt + o_r[None, :], mask=m, other=0)
    b_real = tl.load(real + (i_bh * T + o_t[:, None]) * R1 + o_r[None, :], mask=m, other=0) != 0
    b_cx = tl.where(b_real, b_x // BT, -1)  # x >= 0 where real
    b_j = tl.zeros([BT, BR], dtype=tl.int32)
    p_cand = cand + (i_bh * NT + i_t) * J
    for j in range(J):
        b_j += (tl.load(p_cand + j) < b_cx).to(tl.int32)
    p_out = (i_bh * T + o_t[:, None]) * R1 + o_r[None, :]
    tl.store(jidx + p_out, tl.where(b_real, b_j, -1).to(jidx.dtype.element_ty), mask=m)
    b_off = tl.minimum(tl.maximum(b_x - b_cx * BT, 0), BT - 1)
    tl.store(off + p_out, b_off.to(off.dtype.element_ty), mask=m)


def boundary_plan(x: torch.Tensor, real: torch.Tensor, BT: int):
    """:func:`dla.ops.dla.chunk_torch.boundary_candidates` for the Triton readout: ``cand`` (int32) by
    :func:`dla.ops.dla.chunk_torch.candidate_chunks` (``NT`` tokens, small), ``jidx`` and ``off`` in compact
    integer types (:func:`dla.ops.utils.saved.compact_index`) by :func:`plan_kernel`, one pass over the records
    instead of a dozen PyTorch passes over ``[B, H, T, R1]`` int64 tensors. Equal to ``boundary_candidates``
    (tests)."""
    from dla.ops.dla.chunk_torch import candidate_chunks

    B, H, T, R1 = x.shape
    NT = (T + BT - 1) // BT
    if x.stride(-1) != 1 or x.stride(-2) < R1 or x.stride(1) != T * x.stride(2) or x.stride(0) != H * x.stride(1):
        x = x.contiguous()
    cand = candidate_chunks(x, real, BT).to(torch.int32)
    J = R1 + 1
    jidx = torch.empty(B, H, T, R1, dtype=torch.int16 if J <= torch.iinfo(torch.int16).max else torch.int32,
                       device=x.device)
    off = torch.empty(B, H, T, R1, dtype=torch.int16 if BT <= torch.iinfo(torch.int16).max else torch.int32,
                      device=x.device)
    if jidx.numel():
        plan_kernel[(NT, B * H)](x, real.contiguous(), cand.contiguous(), jidx, off, T, x.stride(2), R1=R1, J=J,
                                 BT=BT, BR=triton.next_power_of_2(max(R1, 1)), num_warps=4)
    return cand, jidx, off


GROUPED_QK = True
"""Whether :class:`BoundaryTerms` hands its kernels the caller's grouped ``q, k`` (:func:`grouped_copy`) when the
``Rebuild`` knows them and there are fewer groups than heads, instead of the per-head copies (a tuning knob; the
results are the same, bitwise in the float32 modes)."""


class BoundaryTerms(torch.autograd.Function):
    """Triton forward and, for float32 (GPU or interpreter), Triton backward (:mod:`dla.ops.dla.readout_bwd`: per
    query chunk ``dq, dlam`` and the query side of ``dgl``; per key chunk ``dk, du, dP`` and its side of ``dgl``
    over the query chunks reading it; deterministic). Other dtypes use the PyTorch form's backward
    (:func:`dla.ops.dla.chunk_torch.boundary_terms_backward`).

    Inputs as :func:`dla.ops.dla.chunk_torch.boundary_terms` without ``seg`` (computed here from ``gl``), then
    ``dot``: the ``tl.dot`` mode of the forward and the Triton backward (``dot_precision`` of
    :func:`boundary_terms_fwd`; ``None``: its default); ``rebuild``: ``None`` or a
    :class:`dla.ops.utils.saved.Rebuild` (``q, k``, and ``u`` for Mamba-2, kept as their sources).
    """

    @staticmethod
    def forward(ctx, q, k, u, gl, P, dlam, x, real, BT, dot=None, rebuild=None):
        from dla.ops.dla.chunk_torch import _block_segsum, boundary_candidates
        from dla.ops.dla.readout_bwd import use_triton_bwd

        seg = torch.nn.functional.pad(_block_segsum(gl[..., -1]), (0, 1))
        dtype, (B, H) = q.dtype, q.shape[:2]
        ctx.triton_bwd = use_triton_bwd(q)  # decided once: what is saved depends on it
        if ctx.triton_bwd:  # the Triton backward reads compact indices and neither x nor real
            cand, jidx, off = boundary_plan(x, real, BT)
            src = (rebuild.source(q), rebuild.source(k)) if rebuild is not None else (None, None)
            if GROUPED_QK and src[0] is not None and src[1] is not None and src[1].shape[2] < H:
                # the per-head copies of grouped q, k come from the caller's tensors: the kernels read those
                # (H / G times fewer bytes, shared by a group's heads in the cache), and the backward keeps them
                # (G = H: the per-head copies are those tensors; the backward rebuilds them, nothing more is kept)
                q, k = (grouped_copy(t, q.shape[2]) for t in src)
            save_rebuilt(ctx, rebuild, q, k, u, gl, P, dlam, None, None, cand, jidx, off)
        else:
            cand, jidx, off = boundary_candidates(x, real, BT)
            save_rebuilt(ctx, rebuild, q, k, u, gl, P, dlam, x, real, cand, jidx, off)
        ctx.BT, ctx.dot = BT, dot
        out = boundary_terms_fwd(q, k, u, gl.reshape(B, H, -1), P, seg, cand, jidx, off, dlam, BT, dot_precision=dot)
        return out.to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        """Triton kernels (:func:`dla.ops.dla.readout_bwd.boundary_terms_bwd`) for float32 on a GPU or under the
        interpreter; otherwise the PyTorch form (:func:`dla.ops.dla.readout_bwd.boundary_terms_bwd_torch`)."""
        from dla.ops.dla.readout_bwd import boundary_terms_bwd, boundary_terms_bwd_torch

        needs = ctx.needs_input_grad[:6]
        if ctx.triton_bwd:
            grads = boundary_terms_bwd(grad, *saved_rebuilt(ctx), ctx.BT, needs, dot_precision=ctx.dot)
        else:
            grads = boundary_terms_bwd_torch(grad, *saved_rebuilt(ctx), ctx.BT, needs)
        return (*grads, None, None, None, None, None)
