"""Triton backward of DLA's boundary readout (the forward is :mod:`dla.ops.dla.readout_fwd`).

For query chunk ``i``, each distinct candidate key chunk ``c`` adds to ``o[t]`` (``docs/math.md`` section 7.4)

    cA[t] q_t^T P_c + sum_s M[t, s] (q_t . k_s) u_s,    cA[t] = cs[t] exp(seg[i, c] + gl_i[t]),
    M[t, s] = W[t, s] exp(e[t, s]),   e[t, s] = gl_i[t] - gl_c[s]  (c = i, s <= t; -inf for s > t)
                                      e[t, s] = gl_c[BT-1] - gl_c[s] + seg[i, c+1] + gl_i[t]   (c < i)

with ``cs[t]`` the sum of ``dlam[t, r]`` over the ranks whose boundary lies in ``c`` and ``W[t, s]`` that sum over
the boundaries at offsets ``> s``. With ``dA = do u_c^T``, ``qk = q k_c^T`` and ``dE = dA * qk * M``:

    dq_i  += cA * (do P_c^T) + (dA * M) k_c         dP_c += (cA q_i)^T do
    dk_c  += (dA * M)^T q_i                         du_c += (qk * M)^T do
    dcA[t] = q_t . (P_c do_t);  ddlam[t, r] = dcA[t] exp(seg[i, c] + gl_i[t]) + sum_{s < off[t, r]} dA qk exp(e)
    dgl_i[t] += dcA[t] cA[t] + sum_s dE[t, s];  dgl_c[s] -= sum_t dE[t, s];  dgl_c[BT-1] += sum dE  (c < i)
    dseg[i, c] += sum_t dcA cA;  dseg[i, c+1] += sum dE  (c < i)

Three kernels, each gradient written once by one program (deterministic, no atomics):

- :func:`readout_bwd_dq_kernel`, grid ``(NT, B*H)``, per query chunk: ``dq``, ``ddlam``, the query side of
  ``dgl`` and the query chunk's row of ``dseg`` (two planes: the ``c`` and the ``c+1`` entries, which can meet).
- :func:`readout_bwd_key_kernel`, grid ``(B*H*NT, V / BV)``, per key chunk and value tile: ``du``; the first
  tile's program also ``dk`` and the key side of ``dgl`` (``dA = do u^T`` over the whole value width). The pair
  weights and ``q k^T`` are computed once for both.
- :func:`readout_bwd_dP_kernel`, same grid: ``dP``, which needs only the per-token sums ``cA`` of the pair, not the
  ``[BT, BT]`` weights.

The key-side kernels walk the query chunks that list ``c`` among their distinct candidates: a CSR map built on the
device by :func:`key_pairs`.

Every product is :func:`dla.ops.utils.triton_dot.prec_dot` with the ``DOT`` constexpr (modes in
:mod:`dla.ops.utils.precision`); accumulators and gradients are float32 in every mode.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dla.ops.dla.readout_fwd import _coef, _decay, _idx, _tables
from dla.ops.utils.precision import interpreting, min_tile, resolve_precision
from dla.ops.utils.triton_dot import prec_dot, prec_dot_tc, prec_operand


@triton.jit
def readout_bwd_dq_kernel(
    q, k, u, gl, P, seg, cand, jidx, off, dl, do, dq, ddl, dgl, dseg_c, dseg_c1,
    T, Tp, NT,
    K: tl.constexpr, V: tl.constexpr, R1: tl.constexpr, J: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, DOT: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K

    b_q = prec_operand(tl.load(q + (i_bh * Tp + o_t[:, None]) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                               other=0.), DOT)  # kept across the candidates: 16 bits in the 16-bit modes
    b_gi = tl.load(gl + i_bh * Tp + o_t)  # [BT]; padding has g = 0, so D(s, t) <= 1 there too
    b_jt, b_off, b_dl = _tables(jidx, off, dl, i_bh, o_t, m_t, T, R1, BR)  # [BT, BR] each
    o_r = tl.arange(0, BR)
    b_ddl = tl.zeros([BT, BR], dtype=tl.float32)  # each (t, r) gets its value from its one candidate
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgi = tl.zeros([BT], dtype=tl.float32)
    p_row = (i_bh * (NT + 1) + i_t) * (NT + 1)  # the query chunk's row of seg and of the two dseg planes
    p_cand = cand + (i_bh * NT + i_t) * J
    for j in range(J):
        c = tl.load(p_cand + j)
        fresh = j == 0
        if j > 0:
            fresh = c != tl.load(p_cand + j - 1)  # sorted; a repeat holds no boundary
        if fresh:
            b_cs, b_W = _coef(b_jt, b_off, b_dl, j, BT, BR)
            b_a = tl.exp(tl.load(seg + p_row + c) + b_gi)  # D(c BT - 1, t)
            b_cA = b_cs * b_a
            b_x = _decay(gl, seg + p_row, i_bh, i_t, c, b_gi, Tp, BT)  # [BT, BT]
            b_k = prec_operand(tl.load(k + (i_bh * Tp + c * BT + o_i[:, None]) * K + o_k[None, :], mask=m_k[None, :],
                                       other=0.), DOT)
            b_qk = prec_dot(b_q, tl.trans(b_k), DOT)  # [BT, BT]
            b_dqP = tl.zeros([BT, BK], dtype=tl.float32)  # do P_c^T
            b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # do u_c^T
            for v0 in range(0, V, BV):
                o_v = v0 + tl.arange(0, BV)
                m_v = o_v < V
                b_do = tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                               other=0.)
                b_u = tl.load(u + (i_bh * Tp + c * BT + o_i[:, None]) * V + o_v[None, :], mask=m_v[None, :],
                              other=0.)
                b_P = tl.load(P + ((i_bh * NT + c) * K + o_k[:, None]) * V + o_v[None, :],
                              mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV]
                b_dqP += prec_dot(b_do, tl.trans(b_P), DOT)
                b_dA += prec_dot(b_do, tl.trans(b_u), DOT)
            b_dcA = tl.sum(b_q.to(tl.float32) * b_dqP, 1)  # [BT]
            b_dAx = b_dA * b_x
            b_dq += b_cA[:, None] * b_dqP + prec_dot(b_dAx * b_W, b_k, DOT)
            b_dW = b_dAx * b_qk  # gradient of W
            b_dE = b_dW * b_W  # gradient of e
            b_ga = b_dcA * b_cA
            b_dgi += b_ga + tl.sum(b_dE, 1)
            # seg[i, c] and seg[i, c+1] in separate planes: c+1 may be the next candidate's c
            tl.store(dseg_c + p_row + c, tl.sum(b_ga, 0))
            tl.store(dseg_c1 + p_row + c + 1, tl.where(c == i_t, 0., tl.sum(tl.sum(b_dE, 1), 0)))
            # ddlam[t, r] = dcs[t] + sum_{s < off[t, r]} dW[t, s]: an exclusive prefix sum of dW read at every
            # rank's offset (one gather for all ranks), kept where the rank's boundary lies in this candidate
            b_pre = tl.cumsum(b_dW, 1) - b_dW
            b_ddl += tl.where(b_jt == j, b_dcA[:, None] * b_a[:, None] + tl.gather(b_pre, b_off, 1), 0.)
    tl.store(dq + (i_bh * Tp + o_t[:, None]) * K + o_k[None, :], b_dq, mask=m_k[None, :])
    tl.store(dgl + i_bh * Tp + o_t, b_dgi)
    tl.store(ddl + (i_bh * T + o_t[:, None]) * R1 + o_r[None, :], b_ddl, mask=m_t[:, None] & (o_r[None, :] < R1))


@triton.jit
def _pair_query(q, gl, jidx, off, dl, pairs, n, i_bh, T, Tp,
                K: tl.constexpr, R1: tl.constexpr, J: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BR: tl.constexpr):
    """Pair ``n`` of a key chunk: its query chunk ``i_t`` and candidate ``j``, the query positions, mask and queries
    ``[BT, BK]``, their log-decays ``[BT]`` and the per-rank tiles of :func:`dla.ops.dla.readout_fwd._tables`."""
    e = tl.load(pairs + n)
    i_t, j = e // J, e % J
    o_t = i_t * BT + tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_t = o_t < T
    b_q = tl.load(q + (i_bh * Tp + o_t[:, None]) * K + o_k[None, :], mask=m_t[:, None] & (o_k < K)[None, :],
                  other=0.)
    b_gi = tl.load(gl + i_bh * Tp + o_t)
    b_jt, b_off, b_dl = _tables(jidx, off, dl, i_bh, o_t, m_t, T, R1, BR)
    return i_t, j, o_t, m_t, b_q, b_gi, b_jt, b_off, b_dl


@triton.jit
def _pair(q, gl, seg, jidx, off, dl, pairs, n, i_bh, i_c, T, Tp, NT,
          K: tl.constexpr, R1: tl.constexpr, J: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
          BR: tl.constexpr):
    """Query side of pair ``n`` for key chunk ``i_c``: the query chunk ``i_t``, its positions, mask and queries
    ``[BT, BK]``, ``cA [BT]``, ``W [BT, BT]`` and ``exp(e) [BT, BT]``."""
    i_t, j, o_t, m_t, b_q, b_gi, b_jt, b_off, b_dl = _pair_query(q, gl, jidx, off, dl, pairs, n, i_bh, T, Tp, K,
                                                                 R1, J, BT, BK, BR)
    b_cs, b_W = _coef(b_jt, b_off, b_dl, j, BT, BR)
    p_row = seg + (i_bh * (NT + 1) + i_t) * (NT + 1)
    b_x = _decay(gl, p_row, i_bh, i_t, i_c, b_gi, Tp, BT)
    return i_t, o_t, m_t, b_q, b_cs * tl.exp(tl.load(p_row + i_c) + b_gi), b_W, b_x


@triton.jit
def readout_bwd_key_kernel(
    q, k, u, gl, seg, jidx, off, dl, do, ptr, pairs, order, dk, du, dgl,
    T, Tp, NT,
    K: tl.constexpr, V: tl.constexpr, R1: tl.constexpr, J: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, DOT: tl.constexpr,
):
    i_n, i_v = tl.load(order + tl.program_id(0)).to(tl.int64), tl.program_id(1)
    i_bh, i_c = i_n // NT, i_n % NT
    o_s = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    key_side = i_v == 0  # dk and the key side of dgl: the first value tile's program
    b_k = prec_operand(tl.load(k + (i_bh * Tp + i_c * BT + o_s[:, None]) * K + o_k[None, :], mask=m_k[None, :],
                               other=0.), DOT)  # kept across the pairs
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgc = tl.zeros([BT], dtype=tl.float32)
    b_du = tl.zeros([BT, BV], dtype=tl.float32)
    n, n_end = tl.load(ptr + i_n), tl.load(ptr + i_n + 1)
    while n < n_end:  # a while loop: the interpreter cannot range over loaded bounds
        i_t, o_t, m_t, b_q, b_cA, b_W, b_x = _pair(q, gl, seg, jidx, off, dl, pairs, n, i_bh, i_c, T, Tp, NT,
                                                    K, R1, J, BT, BK, BR)
        b_qk = prec_dot(b_q, tl.trans(b_k), DOT)  # [BT, BT]
        b_M = b_W * b_x
        b_do = tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                       other=0.)
        b_du += prec_dot_tc(tl.trans(b_qk * b_M), b_do, DOT)
        if key_side:
            b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # do u_c^T over the whole value width
            for v0 in range(0, V, BV):
                o_w = v0 + tl.arange(0, BV)
                m_w = o_w < V
                b_dw = tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_w[None, :],
                               mask=m_t[:, None] & m_w[None, :], other=0.)
                b_u = tl.load(u + (i_bh * Tp + i_c * BT + o_s[:, None]) * V + o_w[None, :], mask=m_w[None, :],
                              other=0.)
                b_dA += prec_dot(b_dw, tl.trans(b_u), DOT)
            b_dAM = b_dA * b_M
            b_dk += prec_dot_tc(tl.trans(b_dAM), b_q, DOT)
            b_dE = b_dAM * b_qk
            # e = gl_c[BT-1] - gl_c[s] + ... for an older query chunk, gl_i[t] - gl_c[s] for the chunk itself
            b_dgc += tl.where((o_s == BT - 1) & (i_t != i_c), tl.sum(tl.sum(b_dE, 1), 0), 0.) - tl.sum(b_dE, 0)
        n += 1
    tl.store(du + (i_bh * Tp + i_c * BT + o_s[:, None]) * V + o_v[None, :], b_du, mask=m_v[None, :])
    if key_side:
        tl.store(dk + (i_bh * Tp + i_c * BT + o_s[:, None]) * K + o_k[None, :], b_dk, mask=m_k[None, :])
        tl.store(dgl + i_bh * Tp + i_c * BT + o_s, b_dgc)


@triton.jit
def readout_bwd_dP_kernel(
    q, gl, seg, jidx, off, dl, do, ptr, pairs, order, dP,
    T, Tp, NT,
    K: tl.constexpr, V: tl.constexpr, R1: tl.constexpr, J: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, DOT: tl.constexpr,
):
    i_n, i_v = tl.load(order + tl.program_id(0)).to(tl.int64), tl.program_id(1)
    i_bh, i_c = i_n // NT, i_n % NT
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    b_dP = tl.zeros([BK, BV], dtype=tl.float32)
    n, n_end = tl.load(ptr + i_n), tl.load(ptr + i_n + 1)
    while n < n_end:
        i_t, j, o_t, m_t, b_q, b_gi, b_jt, _, b_dl = _pair_query(q, gl, jidx, off, dl, pairs, n, i_bh, T, Tp, K,
                                                                 R1, J, BT, BK, BR)
        b_cs = tl.sum(tl.where(b_jt == j, b_dl, 0.), 1)  # cs of readout_fwd._coef alone (no W)
        b_cA = b_cs * tl.exp(tl.load(seg + (i_bh * (NT + 1) + i_t) * (NT + 1) + i_c) + b_gi)
        b_do = tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                       other=0.)
        b_dP += prec_dot(tl.trans(b_q * b_cA[:, None]), b_do, DOT)
        n += 1
    tl.store(dP + ((i_bh * NT + i_c) * K + o_k[:, None]) * V + o_v[None, :], b_dP, mask=m_k[:, None] & m_v[None, :])


def key_pairs(cand: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse of the candidate lists: for each key chunk, the query chunks that read it. On the device, no sync.

    Args:
        cand: ``[B, H, NT, J]`` candidate key chunks per query chunk, sorted per row (repeats adjacent).
    Returns:
        ``ptr [B*H*NT + 1]`` and ``pairs [B*H*NT*J]`` int32 (CSR): ``pairs[ptr[n]:ptr[n+1]]`` are the entries
        ``i * J + j`` (first occurrences only, ``i`` ascending) with ``cand[b, h, i, j] = c`` for row
        ``n = (b H + h) NT + c``; ``order [B*H*NT]`` int32: the rows by descending number of pairs (the key
        kernels' program order, so that a chunk read by every query chunk does not start last).
    """
    B, H, NT, J = cand.shape
    fresh = F.pad(cand[..., 1:] != cand[..., :-1], (1, 0), value=True)
    row = cand + NT * torch.arange(B * H, device=cand.device).view(B, H, 1, 1)
    key = torch.where(fresh, row, B * H * NT).flatten()  # repeats sort past the last row
    skey, order = torch.sort(key, stable=True)
    ptr = torch.searchsorted(skey, torch.arange(B * H * NT + 1, device=cand.device, dtype=skey.dtype))
    busy = torch.argsort(ptr[1:] - ptr[:-1], descending=True, stable=True)
    return ptr.to(torch.int32), (order % (NT * J)).to(torch.int32), busy.to(torch.int32)


def use_triton_bwd(q: torch.Tensor) -> bool:
    """Whether :class:`dla.ops.dla.readout_fwd.BoundaryTerms` runs :func:`boundary_terms_bwd` (float32 on a GPU or
    under ``TRITON_INTERPRET=1``) rather than :func:`boundary_terms_bwd_torch`."""
    return q.dtype == torch.float32 and (q.is_cuda or interpreting())


def boundary_terms_bwd(grad, q, k, u, gl, P, dlam, x, real, cand, jidx, off, BT: int, needs, *,
                       dot_precision: Optional[str] = None, block_v: int = 32, block_v_du: int = 128,
                       num_warps: Optional[int] = None, num_warps_key: Optional[int] = None):
    """Gradients of :class:`dla.ops.dla.readout_fwd.BoundaryTerms` by the three Triton kernels of this module.

    Args:
        grad: ``[B, H, T, V]`` gradient of the boundary terms; q, k: ``[B, H, Tp, K]``; u: ``[B, H, Tp, V]``;
            gl: ``[B, H, NT, BT]``; P: ``[B, H, NT, K, V]``; dlam, x, real: ``[B, H, T, R1]``;
            cand, jidx, off: :func:`dla.ops.dla.chunk_torch.boundary_candidates` of ``x, real``. Float32.
            ``x`` and ``real`` are not read (``jidx`` is -1 where there is no real boundary); they keep the
            signature of :func:`boundary_terms_bwd_torch`.
        needs: six bools, which of ``q, k, u, gl, P, dlam`` need a gradient.
        dot_precision: the ``tl.dot`` mode, as :func:`dla.ops.dla.readout_fwd.boundary_terms_fwd` (``ieee``,
            ``tf32``, ``tf32x3``, ``bf16``, ``fp16``); ``None``: ``tf32x3`` on a GPU, ``ieee`` under the interpreter.
        block_v, num_warps: value columns per tile of the ``dq`` kernel's loop over ``V`` and its warps per program
            (``num_warps=None``: 8 for ``BT * K >= 4096``, else 4).
        num_warps_key: warps per program of the key-side kernels; ``None``: 8 for ``BT * BVk >= 8192`` (``BVk``
            the value columns of a program), else 4. H200, bf16: at the ``ll_mamba2`` shape (V = 64), T = 16384,
            the ``dk, du`` kernel 35.7 ms at 4 warps, 37.6 at 8, ``dP`` 5.3 and 7.3; at ``h16`` (V = 128), T = 4096,
            ``dk, du`` 24.2 at 4 warps, 18.1 at 8.
        block_v_du: value columns per program of the key-side kernels (``du`` and ``dk``, ``dP``), which
            recompute ``q k^T`` and the weights once per tile (H200, bf16, T = 4096, K = V = 128: the ``dk, du``
            kernel 41.3 ms at 64 columns, 28.7 ms at 128).
    Returns:
        ``(dq, dk, du, dgl, dP, ddlam)``, float32, ``None`` where not needed. ``gl``'s gradient includes the path
        through ``seg`` (autograd of :func:`dla.ops.dla.chunk_torch._block_segsum`).
    """
    from dla.ops.dla.chunk_torch import _block_segsum

    nq, nk, nu, ngl, nP, ndl = needs
    B, H, Tp, K = k.shape
    V, NT, T, R1, J = u.shape[-1], P.shape[2], jidx.shape[2], jidx.shape[-1], cand.shape[-1]
    dev = k.device
    dot_precision = resolve_precision(dot_precision, k.is_cuda, "dot_precision")
    f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
    gl_leaf = gl.detach().float().requires_grad_(bool(ngl))
    with torch.enable_grad():
        seg = F.pad(_block_segsum(gl_leaf[..., -1]), (0, 1))  # [B, H, NT + 1, NT + 1]
    q, k, u, glf, P, dl, segf = map(f32, (q, k, u, gl, P, dlam, seg))
    do = F.pad(grad.float(), (0, 0, 0, Tp - T)).contiguous()
    cand, jidx, off = cand.to(torch.int32).contiguous(), _idx(jidx), _idx(off)
    lo = min_tile(dot_precision)
    BK = max(lo, triton.next_power_of_2(K))
    if num_warps is None:
        num_warps = 8 if BT * BK >= 4096 else 4
    meta = dict(K=K, R1=R1, J=J, BT=BT, BK=BK,
                BV=max(lo, min(block_v, triton.next_power_of_2(V))), BR=max(2, triton.next_power_of_2(R1)),
                DOT=dot_precision, num_warps=num_warps)
    dq = dk = du = dP = ddl = dgl = None
    if nq or ngl or ndl:
        dq = torch.empty(B, H, Tp, K, dtype=torch.float32, device=dev)
        ddl = torch.empty(B, H, T, R1, dtype=torch.float32, device=dev)
        dgl = torch.empty(B, H, NT, BT, dtype=torch.float32, device=dev)
        dseg = torch.zeros(2, B, H, NT + 1, NT + 1, dtype=torch.float32, device=dev)
        readout_bwd_dq_kernel[(NT, B * H)](q, k, u, glf, P, segf, cand, jidx, off, dl, do, dq, ddl, dgl, dseg[0],
                                           dseg[1], T, Tp, NT, V=V, **meta)
    if nk or nu or ngl or nP:
        ptr, pairs, order = key_pairs(cand)
        BVk = max(lo, min(block_v_du, triton.next_power_of_2(V)))  # value columns of a key-side program
        if num_warps_key is None:
            num_warps_key = 8 if BT * BVk >= 8192 else 4
    if nk or nu or ngl:
        # dk (and the key side of dgl) with du's first value tile in one program per key chunk, the other value
        # tiles of du in programs of their own; all three whichever are needed: one compiled kernel, so that a
        # gradient does not depend on which others were asked for (bitwise)
        dk = torch.empty(B, H, Tp, K, dtype=torch.float32, device=dev)
        du = torch.empty(B, H, Tp, V, dtype=torch.float32, device=dev)
        dgl_k = torch.empty(B, H, NT, BT, dtype=torch.float32, device=dev)
        readout_bwd_key_kernel[(B * H * NT, triton.cdiv(V, BVk))](  # the long axis first: grid y <= 65535
            q, k, u, glf, segf, jidx, off, dl, do, ptr, pairs, order, dk, du, dgl_k, T, Tp, NT, V=V,
            **{**meta, "BV": BVk, "num_warps": num_warps_key})
    if nP:
        dP = torch.empty(B, H, NT, K, V, dtype=torch.float32, device=dev)
        readout_bwd_dP_kernel[(B * H * NT, triton.cdiv(V, BVk))](
            q, glf, segf, jidx, off, dl, do, ptr, pairs, order, dP, T, Tp, NT, V=V,
            **{**meta, "BV": BVk, "num_warps": num_warps_key})
    if ngl:
        dgl = dgl + dgl_k + torch.autograd.grad(seg, gl_leaf, dseg.sum(0))[0]
    return (dq if nq else None, dk if nk else None, du if nu else None, dgl if ngl else None, dP if nP else None,
            ddl if ndl else None)


def boundary_terms_bwd_torch(grad, q, k, u, gl, P, dlam, x, real, cand, jidx, off, BT: int, needs):
    """:func:`boundary_terms_bwd` by the PyTorch form (:func:`dla.ops.dla.chunk_torch.boundary_terms_backward`:
    recompute per group of query chunks, differentiate, accumulate into one buffer per input). Any dtype."""
    from dla.ops.dla.chunk_torch import _block_segsum, boundary_terms_backward, readout_plan

    T, Tp = dlam.shape[2], k.shape[2]
    cand, pos, widths = readout_plan(x, real, BT, Tp, candidates=(cand, jidx, off))
    nq, nk, nu, ngl, nP, ndl = needs
    gl_leaf = gl.detach().requires_grad_(bool(ngl))
    with torch.enable_grad():
        seg = F.pad(_block_segsum(gl_leaf[..., -1]), (0, 1))  # gl reaches the output through seg too
    dl = F.pad(torch.where(real, dlam, torch.zeros_like(dlam)), (0, 0, 0, Tp - T)).detach()
    dq, dk, du, dgl, dP, dseg, ddl = boundary_terms_backward(
        F.pad(grad, (0, 0, 0, Tp - T)), q.detach(), k.detach(), u.detach(), gl.detach(), P.detach(),
        seg.detach(), dl, cand, pos, widths, BT, (nq, nk, nu, ngl, nP, ngl, ndl))
    if ngl:
        dgl = dgl + torch.autograd.grad(seg, gl_leaf, dseg)[0]
    if ndl:
        ddl = torch.where(real, ddl[:, :, :T], torch.zeros_like(dlam))
    return dq, dk, du, dgl, dP, ddl
