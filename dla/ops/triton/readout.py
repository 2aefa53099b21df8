"""The readout's forward as Triton kernels (``docs/design.md`` section 4, step 3): the stage of
:func:`dla.ops.chunked.readout.readout_fwd`.

One program per (value tile, query chunk, batch x head). For each distinct candidate key chunk ``c`` (at most ``R``;
:func:`boundary_plan`) it adds ``coefA[t] q_t^T P_c + sum_s W[t, s] D(s, t) (q_t . k_s) u_s``
(:mod:`dla.ops.triton.readout_common`). Every product is :func:`dla.ops.triton.dot.prec_dot` with the ``DOT``
constexpr (modes in :mod:`dla.ops.utils.precision`); the accumulator and the output are float32 in every mode. In
the 16-bit modes the kernel reads 16-bit copies of ``k``, ``u`` and ``P``, which every pair reads again (the
products round them so anyway): half the bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dla.ops.chunked.layout import chunk_segsum, grouped_copy
from dla.ops.chunked.readout import candidate_chunks
from dla.ops.triton.dot import prec_dot, prec_operand
from dla.ops.triton.readout_common import coef, decay, heads_per_group, int_index, tables
from dla.ops.utils.precision import min_tile
from dla.ops.utils.tuning import StageConfig


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
    b_jt, b_off, b_dl = tables(jidx, off, dl, i_bh, o_t, m_t, T, R1, BR)  # [BT, BR] each
    for j in range(J):
        c = tl.load(p_cand + j)
        fresh = j == 0
        if j > 0:
            fresh = c != tl.load(p_cand + j - 1)  # candidates are sorted; a repeat holds no boundary
        if fresh:
            # coefficients of this key chunk, from the ranks whose boundary lies in it (for some token)
            b_cA, b_W = coef(b_jt, b_off, b_dl, j, BT, BR)
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
            b_A = b_qk * b_W * decay(gl, p_seg, i_bh, i_t, c, b_gi, Tp, BT)
            b_o += prec_dot(b_A, b_u, DOT)
    tl.store(o + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], b_o, mask=m_t[:, None] & m_v[None, :])


@triton.jit(do_not_specialize=["T"])
def plan_kernel(x, real, cand, jidx, off, T, sxt, R1: tl.constexpr, J: tl.constexpr, BT: tl.constexpr,
                BR: tl.constexpr):
    """Each token's candidate index and offset per rank (:func:`~dla.ops.chunked.readout.boundary_candidates`' ``jidx``
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
    """:func:`dla.ops.chunked.readout.boundary_candidates` for the Triton readout: ``cand`` (int32) by
    :func:`~dla.ops.chunked.readout.candidate_chunks` (``NT`` tokens, small), ``jidx`` and ``off`` in compact
    integer types by :func:`plan_kernel`, one pass over the records instead of a dozen PyTorch passes over
    ``[B, H, T, R1]`` int64 tensors. Equal to ``boundary_candidates`` (tests)."""
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


def boundary_terms_fwd(q, k, u, gl, P, seg, cand, jidx, off, dlam, BT: int, *, dot: str, block_v: int = 64,
                       num_warps: int = 4) -> torch.Tensor:
    """Launch :func:`readout_fwd_kernel`.

    Args:
        q, k: ``[B, H, Tp, K]``, or ``[B, G, Tp, K]`` read by groups of ``H / G`` heads
            (:func:`~dla.ops.chunked.layout.grouped_copy`); u: ``[B, H, Tp, V]``; gl: ``[B, H, Tp]``;
            P: ``[B, H, NT, K, V]``; seg: ``[B, H, NT + 1, NT + 1]``; cand: ``[B, H, NT, J]``; jidx, off:
            ``[B, H, T, R1]`` int; dlam: ``[B, H, T, R1]``. Float tensors are read in float32 (or 16 bits, above).
        dot: the ``tl.dot`` mode; block_v, num_warps: value columns and warps per program.
    Returns:
        ``[B, H, T, V]`` float32 boundary terms (unscaled).
    """
    B, H, Tp, V = u.shape
    K, HG = k.shape[-1], heads_per_group(q, k, u)
    NT, T, R1, J = P.shape[2], jidx.shape[2], jidx.shape[-1], cand.shape[-1]
    f32 = lambda x: x.float().contiguous()  # noqa: E731
    lo = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dot)  # the operands each pair reads again
    op = (lambda x: x.to(lo).contiguous()) if lo is not None else f32  # noqa: E731
    o = torch.empty(B, H, Tp, V, dtype=torch.float32, device=k.device)
    BK = max(min_tile(dot), triton.next_power_of_2(K))
    BV = max(min_tile(dot), min(block_v, triton.next_power_of_2(V)))
    grid = (triton.cdiv(V, BV), triton.cdiv(T, BT), B * H)
    readout_fwd_kernel[grid](
        op(q) if HG > 1 else f32(q), op(k), op(u), f32(gl), op(P), f32(seg), cand.to(torch.int32).contiguous(),
        int_index(jidx), int_index(off), f32(dlam), o,
        T, Tp, NT, K=K, V=V, R1=R1, J=J, BT=BT, BK=BK, BV=BV, BR=max(2, triton.next_power_of_2(R1)),
        DOT=dot, HG=HG, num_warps=num_warps,
    )
    return o[:, :, :T]


def readout_fwd(qh, kh, u, gl, P, dlam, x, real, BT: int, *, cfg: StageConfig, q=None, k=None):
    """The boundary terms; arguments and returns as :func:`dla.ops.chunked.readout.readout_fwd` (float32).

    With fewer query/key groups than heads, the kernel reads the caller's ``q, k`` once per group
    (:func:`~dla.ops.chunked.layout.grouped_copy`, in their dtype) instead of the per-head copies ``qh, kh``.
    Returns the terms, ``(cand, jidx, off)`` for the backward (compact integer types) and ``None``.
    """
    B, H, Tp = u.shape[:3]
    cand, jidx, off = boundary_plan(x, real, BT)
    if q is not None and q.shape[2] < H:
        qh, kh = grouped_copy(q, Tp), grouped_copy(k, Tp)
    tuning = cfg.tuning
    out = boundary_terms_fwd(qh, kh, u, gl.reshape(B, H, -1), P, chunk_segsum(gl), cand, jidx, off, dlam, BT,
                             dot=cfg.dot, block_v=tuning.readout_block_v, num_warps=tuning.readout_warps)
    return out, (cand, jidx, off), None
