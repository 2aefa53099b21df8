"""What the readout's Triton kernels share (:mod:`dla.ops.triton.readout`, :mod:`dla.ops.triton.readout_backward`):
the query chunk's per-rank tables, the coefficients of one candidate key chunk, the decay between two chunks.

For query chunk ``i`` and a candidate key chunk ``c`` (``docs/math.md`` section 7), token ``t`` reads

    coefA[t] * q_t^T P_c  +  sum_s W[t, s] D(s, t) (q_t . k_s) u_s

where ``coefA[t] = sum_{x in c} dlam_t(x) D(c*BT - 1, t)`` and ``W[t, s] = sum_{x in c, x > s} dlam_t(x)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def int_index(t: torch.Tensor) -> torch.Tensor:
    """``jidx`` or ``off`` as the kernels read them: int16 or int32 kept (the kernels compare these per-rank
    indices, never address with them; ``cand``, which they do address with, is always int32), else int32."""
    return (t if t.dtype in (torch.int16, torch.int32) else t.to(torch.int32)).contiguous()


def heads_per_group(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor) -> int:
    """Heads per group of ``q, k`` (``[B, G, Tp, K]``) for ``u`` (``[B, H, Tp, V]``): ``H / G``."""
    B, H, Tp = u.shape[:3]
    if q.shape != k.shape or q.dim() != 4 or q.shape[0] != B or q.shape[2] != Tp or H % q.shape[1]:
        raise ValueError(f"q, k: expected [B, G, Tp, K] with G dividing the {H} heads of u {tuple(u.shape)}, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    return H // q.shape[1]


@triton.jit
def run(b_jt, j, BR: tl.constexpr):
    """First and last rank whose boundary lies in candidate ``j`` for some token (empty: ``BR, -1``)."""
    o_r = tl.arange(0, BR)
    hit = b_jt == j
    return tl.min(tl.where(hit, o_r[None, :], BR)), tl.max(tl.where(hit, o_r[None, :], -1))


@triton.jit
def coef(b_jt, b_off, b_dl, j, BT: tl.constexpr, BR: tl.constexpr):
    """``cs [BT]``: sum of ``dlam`` of the boundaries in candidate ``j``; ``W [BT, BT]``: those at offsets ``> s``.
    From the query chunk's ``[BT, BR]`` tiles of :func:`tables`: the rank loop reads registers, not memory, and
    takes a rank's column of a tile with ``tl.gather``."""
    o_s = tl.arange(0, BT)
    b_a = tl.where(b_jt == j, b_dl, 0.)  # dlam of the ranks whose boundary lies in candidate j
    b_W = tl.zeros([BT, BT], dtype=tl.float32)
    r, r_hi = run(b_jt, j, BR)
    while r <= r_hi:  # a candidate's boundaries are a run of ranks; the loop visits only those
        i_r = tl.zeros([BT, 1], dtype=tl.int32) + r  # [BT, 1]: column r of every row
        b_W += tl.where(o_s[None, :] < tl.gather(b_off, i_r, 1), tl.gather(b_a, i_r, 1), 0.)
        r += 1
    return tl.sum(b_a, 1), b_W


@triton.jit
def tables(jidx, off, dl, i_bh, o_t, m_t, T, R1: tl.constexpr, BR: tl.constexpr):
    """The query chunk's per-rank tables as ``[BT, BR]`` tiles, one coalesced load each: every token's candidate
    index per rank (-1: none), its boundary's offset inside that candidate (int32) and ``dlam`` (0 past ``R1``)."""
    o_r = tl.arange(0, BR)
    p_tr = (i_bh * T + o_t[:, None]) * R1 + o_r[None, :]
    m_tr = m_t[:, None] & (o_r[None, :] < R1)
    return (tl.load(jidx + p_tr, mask=m_tr, other=-1), tl.load(off + p_tr, mask=m_tr, other=0).to(tl.int32),
            tl.load(dl + p_tr, mask=m_tr, other=0.))


@triton.jit
def decay(gl, p_seg, i_bh, i_t, c, b_gi, Tp, BT: tl.constexpr):
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
