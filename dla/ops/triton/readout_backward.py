"""The readout's backward as Triton kernels: the stage of :func:`dla.ops.chunked.readout.readout_bwd` (the
forward is :mod:`dla.ops.triton.readout`).

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

Two kernels, each gradient written once by one program (deterministic, no atomics):

- :func:`readout_bwd_dq_kernel`, grid ``(NT, B*H)``, per query chunk: ``dq``, ``ddlam``, the query side of
  ``dgl`` and the query chunk's row of ``dseg`` (two planes: the ``c`` and the ``c+1`` entries, which can meet);
  with ``STORE``, each pair's ``dA * M``, ``qk * M`` (``[BT, BT]``, 16 bits in the 16-bit modes) and ``cA``.
- :func:`readout_bwd_key_kernel`, grid ``(B*H*NT, V / BV)``, per key chunk and value tile, from those tiles: ``du``,
  ``dP``; the first tile's program also ``dk`` and the key side of ``dgl`` (``-k . dk``; the end-of-chunk term is
  plane 1 of ``dseg`` summed over the query chunks), and ``dP``. No weights or ``q k^T`` are recomputed there.

With ``tuning.dq_kernel = "pair"``, :func:`readout_bwd_pair_kernel` (one program per (query chunk, distinct
candidate) pair, nothing carried between pairs) does the first kernel's work except ``dq`` and stores the pair's
``dA * M`` tile and query-side ``dgl`` share; :func:`readout_bwd_dq_sum_kernel` (per query chunk) sums ``dq`` and
``dgl`` from them (:func:`query_pairs` lists each query chunk's pairs).

The tiles are held for a window of heads at a time (``tuning.pair_tile_bytes``).
The key-side kernels walk the query chunks that list ``c`` among their distinct candidates: a CSR map built on the
device by :func:`key_pairs`.

Every product is :func:`dla.ops.triton.dot.prec_dot` with the ``DOT`` constexpr (modes in
:mod:`dla.ops.utils.precision`); accumulators and gradients are float32 in every mode.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dla.ops.chunked.layout import block_segsum, grouped_copy
from dla.ops.triton.dot import prec_dot, prec_operand
from dla.ops.triton.readout_common import coef, decay, heads_per_group, int_index, run, tables
from dla.ops.utils.precision import min_tile
from dla.ops.utils.tuning import StageConfig


@triton.jit
def readout_bwd_dq_kernel(
    q, k, u, gl, P, seg, cand, jidx, off, dl, do, dq, ddl, dgl, dseg_c, dseg_c1, slot, tA, tB, tcA,
    T, Tp, NT, BH0, base,
    K: tl.constexpr, V: tl.constexpr, R1: tl.constexpr, J: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, DOT: tl.constexpr,
    STORE: tl.constexpr, HG: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64) + BH0
    i_g = i_bh // HG  # the row of q and k: b G + h // HG, one per group of HG heads
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K

    b_q = prec_operand(tl.load(q + (i_g * Tp + o_t[:, None]) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                               other=0.), DOT)  # kept across the candidates: 16 bits in the 16-bit modes
    b_gi = tl.load(gl + i_bh * Tp + o_t)  # [BT]; padding has g = 0, so D(s, t) <= 1 there too
    b_jt, b_off, b_dl = tables(jidx, off, dl, i_bh, o_t, m_t, T, R1, BR)  # [BT, BR] each
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
            # in the order that keeps the fewest [BT, *] tiles live at once (255 registers at 8 warps, one
            # program per SM): the P side inside the value loop, straight into dq (no [BT, BK] do P^T), then W and
            # the key chunk's products
            b_a = tl.exp(tl.load(seg + p_row + c) + b_gi)  # D(c BT - 1, t)
            b_cA = tl.sum(tl.where(b_jt == j, b_dl, 0.), 1) * b_a  # cs of _coef, times D
            b_dcA = tl.zeros([BT], dtype=tl.float32)  # q_t . (P_c do_t)
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
                b_dq += prec_dot(b_do * b_cA[:, None], tl.trans(b_P), DOT)
                b_dcA += tl.sum(b_do * prec_dot(b_q, b_P, DOT), 1)
                b_dA += prec_dot(b_do, tl.trans(b_u), DOT)
            _, b_W = coef(b_jt, b_off, b_dl, j, BT, BR)
            b_ga = b_dcA * b_cA
            b_x = decay(gl, seg + p_row, i_bh, i_t, c, b_gi, Tp, BT)  # [BT, BT]
            b_k = prec_operand(tl.load(k + (i_g * Tp + c * BT + o_i[:, None]) * K + o_k[None, :], mask=m_k[None, :],
                                       other=0.), DOT)
            b_qk = prec_dot(b_q, tl.trans(b_k), DOT)  # [BT, BT]
            b_dAx = b_dA * b_x
            b_dAM = b_dAx * b_W  # dA * M
            b_dq += prec_dot(b_dAM, b_k, DOT)
            if STORE:  # the pair's tiles for the key side: dA * M, qk * M (row-major [t, s]: coalesced) and cA
                p_n = (tl.load(slot + (i_bh * NT + i_t) * J + j) - base).to(tl.int64)
                p_tile = p_n * BT * BT + o_i[:, None] * BT + o_i[None, :]
                tl.store(tA + p_tile, b_dAM.to(tA.dtype.element_ty))
                tl.store(tB + p_tile, (b_qk * b_W * b_x).to(tB.dtype.element_ty))
                tl.store(tcA + p_n * BT + o_i, b_cA)
            b_dW = b_dAx * b_qk  # gradient of W
            b_dE = b_dW * b_W  # gradient of e
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
def readout_bwd_key_kernel(
    q, k, do, ptr, pairs, order, tA, tB, tcA, dk, du, dgl, dP,
    T, Tp, NT, ROW0, base,
    K: tl.constexpr, V: tl.constexpr, J: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT: tl.constexpr, HG: tl.constexpr,
):
    """Per key chunk and value tile, over the pairs reading it, from the tiles :func:`readout_bwd_dq_kernel` stored:
    ``du += (qk M)^T do``, ``dP += (cA q)^T do``, and in the first value tile's program ``dk += (dA M)^T q`` and the
    key side of ``dgl``."""
    i_n, i_v = tl.load(order + ROW0 + tl.program_id(0)).to(tl.int64), tl.program_id(1)
    i_bh, i_c = i_n // NT, i_n % NT
    i_g = i_bh // HG  # the row of q and k: b G + h // HG, one per group of HG heads
    o_s = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    key_side = i_v == 0  # dk and the key side of dgl: the first value tile's program
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_du = tl.zeros([BT, BV], dtype=tl.float32)
    b_dP = tl.zeros([BK, BV], dtype=tl.float32)
    n, n_end = tl.load(ptr + i_n), tl.load(ptr + i_n + 1)
    while n < n_end:  # a while loop: the interpreter cannot range over loaded bounds
        i_t = tl.load(pairs + n) // J
        p_n = (n - base).to(tl.int64)
        o_t = i_t * BT + o_s
        m_t = o_t < T
        b_q = prec_operand(tl.load(q + (i_g * Tp + o_t[:, None]) * K + o_k[None, :],
                                   mask=m_t[:, None] & m_k[None, :], other=0.), DOT)
        b_do = prec_operand(tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :],
                                    mask=m_t[:, None] & m_v[None, :], other=0.), DOT)
        p_tile = p_n * BT * BT + o_s[:, None] * BT + o_s[None, :]  # [t, s], transposed once loaded
        b_du += prec_dot(tl.trans(tl.load(tB + p_tile)), b_do, DOT)
        if key_side:
            b_dk += prec_dot(tl.trans(tl.load(tA + p_tile)), b_q, DOT)
        b_cA = tl.load(tcA + p_n * BT + o_s)
        b_dP += prec_dot(tl.trans(b_q.to(tl.float32) * b_cA[:, None]), b_do, DOT)
        n += 1
    tl.store(du + (i_bh * Tp + i_c * BT + o_s[:, None]) * V + o_v[None, :], b_du, mask=m_v[None, :])
    if key_side:
        tl.store(dk + (i_bh * Tp + i_c * BT + o_s[:, None]) * K + o_k[None, :], b_dk, mask=m_k[None, :])
        # -sum_t dE[t, s] = -k_s . dk_s (dE = dA M qk, qk = q k^T); the end-of-chunk term is added by the caller
        b_k = prec_operand(tl.load(k + (i_g * Tp + i_c * BT + o_s[:, None]) * K + o_k[None, :],
                                   mask=m_k[None, :], other=0.), DOT)
        tl.store(dgl + i_bh * Tp + i_c * BT + o_s, -tl.sum(b_k.to(tl.float32) * b_dk, 1))
    tl.store(dP + ((i_bh * NT + i_c) * K + o_k[:, None]) * V + o_v[None, :], b_dP, mask=m_k[:, None] & m_v[None, :])


@triton.jit
def readout_bwd_pair_kernel(
    q, k, u, gl, P, seg, cand, qpairs, qend, slot, jidx, off, dl, do, ddl, dseg_c, dseg_c1, tA, tB, tcA, tdg,
    T, Tp, NT, base,
    K: tl.constexpr, V: tl.constexpr, R1: tl.constexpr, J: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, DOT: tl.constexpr,
    STORE: tl.constexpr, HG: tl.constexpr,
):
    """One (query chunk, distinct candidate) pair per program, no loop over candidates: the pair's ``[BT, BT]``
    tiles ``dA * M`` (for :func:`readout_bwd_dq_sum_kernel` and the key side) and, with ``STORE``, ``qk * M``;
    ``cA`` and the pair's share of the query side of ``dgl`` (``[BT]`` each, summed by the ``dq`` sum kernel);
    the pair's ``ddlam`` entries (each ``(t, r)`` belongs to one candidate) and ``dseg`` entries. Nothing is
    carried from pair to pair, so the GPU hides one pair's latency behind other programs."""
    p = base + tl.program_id(0)
    if p < tl.load(qend):  # the grid may hold more programs than the window has pairs
        f = tl.load(qpairs + p).to(tl.int64)  # flat index (b H + h) NT J + i J + j of the pair's candidate entry
        j, i_t, i_bh = f % J, (f // J) % NT, f // (J * NT)
        c = tl.load(cand + f)
        p_n = (tl.load(slot + f) - base).to(tl.int64)  # where the pair's tiles go (the key side's order)
        i_g = i_bh // HG  # the row of q and k: b G + h // HG, one per group of HG heads
        o_i = tl.arange(0, BT)
        o_t = i_t * BT + o_i
        o_k = tl.arange(0, BK)
        m_t, m_k = o_t < T, o_k < K
        b_gi = tl.load(gl + i_bh * Tp + o_t)
        p_row = (i_bh * (NT + 1) + i_t) * (NT + 1)  # the query chunk's row of seg and of the two dseg planes
        b_q = prec_operand(tl.load(q + (i_g * Tp + o_t[:, None]) * K + o_k[None, :],
                                   mask=m_t[:, None] & m_k[None, :], other=0.), DOT)
        b_dcA = tl.zeros([BT], dtype=tl.float32)  # q_t . (P_c do_t)
        b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # do u_c^T
        for v0 in range(0, V, BV):
            o_v = v0 + tl.arange(0, BV)
            m_v = o_v < V
            b_do = tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                           other=0.)
            b_u = tl.load(u + (i_bh * Tp + c * BT + o_i[:, None]) * V + o_v[None, :], mask=m_v[None, :], other=0.)
            b_P = tl.load(P + ((i_bh * NT + c) * K + o_k[:, None]) * V + o_v[None, :],
                          mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV]
            b_dcA += tl.sum(b_do * prec_dot(b_q, b_P, DOT), 1)
            b_dA += prec_dot(b_do, tl.trans(b_u), DOT)
        b_k = prec_operand(tl.load(k + (i_g * Tp + c * BT + o_i[:, None]) * K + o_k[None, :], mask=m_k[None, :],
                                   other=0.), DOT)
        b_qk = prec_dot(b_q, tl.trans(b_k), DOT)  # [BT, BT]
        # the weights: W from the query chunk's [BT, BR] tables, which then die (the ddlam loop below reads one
        # rank's column at a time)
        b_jt, b_off, b_dl = tables(jidx, off, dl, i_bh, o_t, m_t, T, R1, BR)  # [BT, BR] each
        r_lo, r_hi = run(b_jt, j, BR)  # the ranks whose boundary lies in this candidate (for some token)
        b_cs, b_W = coef(b_jt, b_off, b_dl, j, BT, BR)
        b_a = tl.exp(tl.load(seg + p_row + c) + b_gi)  # D(c BT - 1, t)
        b_cA = b_cs * b_a
        b_x = decay(gl, seg + p_row, i_bh, i_t, c, b_gi, Tp, BT)  # [BT, BT] exp(e)
        p_tile = p_n * BT * BT + o_i[:, None] * BT + o_i[None, :]  # row-major [t, s]: coalesced
        if STORE:
            tl.store(tB + p_tile, (b_qk * b_W * b_x).to(tB.dtype.element_ty))  # qk * M
        b_dAx = b_dA * b_x
        tl.store(tA + p_tile, (b_dAx * b_W).to(tA.dtype.element_ty))  # dA * M
        tl.store(tcA + p_n * BT + o_i, b_cA)
        b_dW = b_dAx * b_qk  # gradient of W
        b_dEt = tl.sum(b_dW * b_W, 1)  # row sums of the gradient of e
        b_ga = b_dcA * b_cA
        tl.store(tdg + p_n * BT + o_i, b_ga + b_dEt)
        # seg[i, c] and seg[i, c+1] in separate planes: c+1 may be another pair's c
        tl.store(dseg_c + p_row + c, tl.sum(b_ga, 0))
        tl.store(dseg_c1 + p_row + c + 1, tl.where(c == i_t, 0., tl.sum(b_dEt, 0)))
        # ddlam[t, r] = dcs[t] + sum_{s < off[t, r]} dW[t, s] for the ranks whose boundary lies in this candidate,
        # a rank (column) at a time
        b_dcs = b_dcA * b_a
        p_rk = (i_bh * T + o_t) * R1  # [BT]: where each token's ranks start
        r = r_lo
        while r <= r_hi:
            b_in = (tl.load(jidx + p_rk + r, mask=m_t, other=-1) == j) & m_t
            b_or = tl.load(off + p_rk + r, mask=m_t, other=0).to(tl.int32)
            tl.store(ddl + p_rk + r, b_dcs + tl.sum(tl.where(o_i[None, :] < b_or[:, None], b_dW, 0.), 1), mask=b_in)
            r += 1

@triton.jit
def readout_bwd_dq_sum_kernel(
    k, P, cand, qptr, qpairs, slot, do, dq, dgl, tA, tcA, tdg,
    T, Tp, NT, BH0, base,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
    HG: tl.constexpr,
):
    """Per query chunk, over its pairs (:func:`readout_bwd_pair_kernel`'s tiles): ``dq = sum_c cA * (do P_c^T) +
    (dA M)_c k_c`` and the query side of ``dgl`` (the pairs' shares, summed in candidate order)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64) + BH0
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    n, n_end = tl.load(qptr + i_bh * NT + i_t), tl.load(qptr + i_bh * NT + i_t + 1)
    while n < n_end:  # a while loop: the interpreter cannot range over loaded bounds
        f = tl.load(qpairs + n).to(tl.int64)
        c = tl.load(cand + f)
        p_n = (tl.load(slot + f) - base).to(tl.int64)
        b_cA = tl.load(tcA + p_n * BT + o_i)
        b_dg += tl.load(tdg + p_n * BT + o_i)
        b_k = tl.load(k + ((i_bh // HG) * Tp + c * BT + o_i[:, None]) * K + o_k[None, :], mask=m_k[None, :],
                      other=0.)
        b_dq += prec_dot(tl.load(tA + p_n * BT * BT + o_i[:, None] * BT + o_i[None, :]), b_k, DOT)
        for v0 in range(0, V, BV):
            o_v = v0 + tl.arange(0, BV)
            m_v = o_v < V
            b_do = tl.load(do + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                           other=0.)
            b_P = tl.load(P + ((i_bh * NT + c) * K + o_k[:, None]) * V + o_v[None, :],
                          mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV]
            b_dq += prec_dot(b_do * b_cA[:, None], tl.trans(b_P), DOT)
        n += 1
    tl.store(dq + (i_bh * Tp + o_t[:, None]) * K + o_k[None, :], b_dq, mask=m_k[None, :])
    tl.store(dgl + i_bh * Tp + o_t, b_dg)


def key_pairs(cand: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse of the candidate lists: for each key chunk, the query chunks that read it. On the device, no sync.

    Args:
        cand: ``[B, H, NT, J]`` candidate key chunks per query chunk, sorted per row (repeats adjacent).
    Returns:
        ``ptr [B*H*NT + 1]`` and ``pairs [B*H*NT*J]`` int32 (CSR): ``pairs[ptr[n]:ptr[n+1]]`` are the entries
        ``i * J + j`` (first occurrences only, ``i`` ascending) with ``cand[b, h, i, j] = c`` for row
        ``n = (b H + h) NT + c``; ``order [B*H*NT]`` int32: the rows by descending number of pairs (the key
        kernels' program order, so that a chunk read by every query chunk does not start last); ``slot
        [B, H, NT, J]`` int32: each first occurrence's place in ``pairs`` (where its tiles are stored).
    """
    B, H, NT, J = cand.shape
    fresh = F.pad(cand[..., 1:] != cand[..., :-1], (1, 0), value=True)
    row = cand + NT * torch.arange(B * H, device=cand.device).view(B, H, 1, 1)
    key = torch.where(fresh, row, B * H * NT).flatten()  # repeats sort past the last row
    skey, order = torch.sort(key, stable=True)
    ptr = torch.searchsorted(skey, torch.arange(B * H * NT + 1, device=cand.device, dtype=skey.dtype))
    busy = torch.argsort(ptr[1:] - ptr[:-1], descending=True, stable=True)
    slot = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=cand.device))
    return (ptr.to(torch.int32), (order % (NT * J)).to(torch.int32), busy.to(torch.int32),
            slot.view(B, H, NT, J).to(torch.int32))


def query_pairs(cand: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The distinct candidates of each query chunk, query chunk by query chunk. On the device, no sync.

    Args:
        cand: ``[B, H, NT, J]`` candidate key chunks per query chunk, sorted per row (repeats adjacent).
    Returns:
        ``qptr [B*H*NT + 1]`` and ``qpairs [B*H*NT*J]`` int32 (CSR): ``qpairs[qptr[n]:qptr[n+1]]`` are the flat
        indices ``n J + j`` of row ``n = (b H + h) NT + i``'s first occurrences, ``j`` ascending (the repeats
        follow all of them). Rows ``[0, n)`` hold ``qptr[n]`` pairs, as :func:`key_pairs`' rows ``[0, n)`` for
        ``n`` a multiple of ``NT``: a window of whole heads covers the same pair numbers in either order.
    """
    J = cand.shape[-1]
    fresh = F.pad(cand[..., 1:] != cand[..., :-1], (1, 0), value=True).flatten()
    qpairs = torch.sort((~fresh).to(torch.uint8), stable=True).indices
    qptr = F.pad(fresh.view(-1, J).sum(-1).cumsum(0), (1, 0))
    return qptr.to(torch.int32), qpairs.to(torch.int32)


def windows(ptr: torch.Tensor, BH: int, NT: int, J: int, pair_bytes: int, cap: int):
    """Windows ``(b0, b1, base)`` of whole ``batch x head`` rows ``[b0, b1)`` whose pairs (from index ``base`` on)
    take at most ``cap`` bytes (at least one row each), and the pair count of the largest. One host sync, skipped
    when every possible pair fits."""
    if BH * NT * J * pair_bytes <= cap:
        return [(0, BH, 0)], BH * NT * J
    cum = ptr[::NT].tolist()  # pairs before each row: the one sync
    wins, b0 = [], 0
    while b0 < BH:
        b1 = b0 + 1
        while b1 < BH and (cum[b1 + 1] - cum[b0]) * pair_bytes <= cap:
            b1 += 1
        wins.append((b0, b1, cum[b0]))
        b0 = b1
    return wins, max(max(cum[b1] - cum[b0] for b0, b1, _ in wins), 1)


def boundary_terms_bwd(grad, q, k, u, gl, P, dlam, cand, jidx, off, BT: int, needs, cfg: StageConfig):
    """Gradients of the boundary terms by the kernels of this module (``tuning.dq_kernel`` picks the ``dq`` form).

    Args:
        grad: ``[B, H, T, V]``; q, k: ``[B, H, Tp, K]``, or ``[B, G, Tp, K]`` read by groups of ``H / G`` heads;
            u: ``[B, H, Tp, V]``; gl: ``[B, H, NT, BT]``; P: ``[B, H, NT, K, V]``; dlam: ``[B, H, T, R1]``;
            cand, jidx, off: :func:`~dla.ops.triton.readout.boundary_plan`'s. Read in float32 (or 16 bits).
        needs: six bools, which of ``q, k, u, gl, P, dlam`` need a gradient.
        cfg: the ``tl.dot`` mode, and the tuning's ``dq_kernel``, ``dq_block_v``, ``dq_warps``, ``key_block_v``,
            ``key_warps``, ``pair_tile_bytes``.
    Returns:
        ``(dq, dk, du, dgl, dP, ddlam)``, float32, ``None`` where not needed; ``dq, dk`` per head (``[B, H, Tp,
        K]``) for grouped ``q, k`` too. ``gl``'s gradient includes the path through the chunks' decay sums.
    """
    nq, nk, nu, ngl, nP, ndl = needs
    dot, tuning = cfg.dot, cfg.tuning
    B, H, Tp, V = u.shape
    K, HG = k.shape[-1], heads_per_group(q, k, u)
    NT, T, R1, J = P.shape[2], jidx.shape[2], jidx.shape[-1], cand.shape[-1]
    dev = k.device
    f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
    gl_leaf = gl.detach().float().requires_grad_(bool(ngl))
    with torch.enable_grad():
        seg = F.pad(block_segsum(gl_leaf[..., -1]), (0, 1))  # [B, H, NT + 1, NT + 1]
    q, k, u, glf, P, dl, segf = map(f32, (q, k, u, gl, P, dlam, seg))
    do = F.pad(grad.float(), (0, 0, 0, Tp - T)).contiguous()
    cand, jidx, off = cand.to(torch.int32).contiguous(), int_index(jidx), int_index(off)
    lo = min_tile(dot)
    BK = max(lo, triton.next_power_of_2(K))
    num_warps = tuning.dq_warps or (8 if BT * BK >= 4096 else 4)
    meta = dict(K=K, J=J, BT=BT, BK=BK, DOT=dot)
    BV = max(lo, min(tuning.dq_block_v, triton.next_power_of_2(V)))
    BVk = max(lo, min(tuning.key_block_v, triton.next_power_of_2(V)))  # value columns of a key-side program
    key_side = nk or nu or ngl or nP
    dq = torch.empty(B, H, Tp, K, dtype=torch.float32, device=dev)
    ddl = torch.empty(B, H, T, R1, dtype=torch.float32, device=dev)
    dgl = torch.empty(B, H, NT, BT, dtype=torch.float32, device=dev)
    dseg = torch.zeros(2, B, H, NT + 1, NT + 1, dtype=torch.float32, device=dev)
    ptr, pairs, order, slot = key_pairs(cand)
    tile_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dot, torch.float32)
    pair_bytes = 2 * BT * BT * tile_dtype.itemsize + BT * 4
    tiles = key_side or tuning.dq_kernel == "pair"  # the pair kernel's dq goes through the tiles too
    wins, npairs = windows(ptr, B * H, NT, J, pair_bytes, tuning.pair_tile_bytes) if tiles else \
        ([(0, B * H, 0)], 1)
    if len(wins) > 1:  # each window's rows together in the program order, busiest first
        wid = torch.repeat_interleave(torch.arange(len(wins)), torch.tensor([b1 - b0 for b0, b1, _ in wins]))
        busy = ptr[1:] - ptr[:-1]
        order = torch.argsort(wid.to(dev).repeat_interleave(NT) * (busy.max() + 1) - busy, stable=True)
        order = order.to(torch.int32)
    tA = torch.empty(npairs if tiles else 1, BT, BT, dtype=tile_dtype, device=dev)
    tB, tcA = torch.empty_like(tA), torch.empty(tA.shape[0], BT, dtype=torch.float32, device=dev)
    empty = lambda *shape: torch.empty(*shape, dtype=torch.float32, device=dev)  # noqa: E731
    dk, du, dgl_k, dP = (empty(B, H, Tp, K), empty(B, H, Tp, V), empty(B, H, NT, BT), empty(B, H, NT, K, V)) \
        if key_side else (empty(1),) * 4
    # operands each pair reads again, as 16-bit copies in the 16-bit modes (the products round them so anyway)
    lo16 = tile_dtype != torch.float32
    k16, u16, P16 = (t.to(tile_dtype) for t in (k, u, P)) if lo16 else (k, u, P)
    q16 = q.to(tile_dtype) if lo16 and (key_side or HG > 1) else q
    do16 = do.to(tile_dtype) if lo16 else do
    pair_side = tuning.dq_kernel == "pair"
    if pair_side:
        qptr, qpairs = query_pairs(cand)
        ddl.zero_()  # entries of no live boundary (-1 in jidx) belong to no pair
        tdg = torch.empty(tA.shape[0], BT, dtype=torch.float32, device=dev)
    for b0, b1, base in wins:
        if pair_side:
            # per (query chunk, candidate) pair: its tiles, ddlam, dseg; then per query chunk: dq and dgl
            readout_bwd_pair_kernel[(npairs,)](
                q16 if HG > 1 else q, k16, u16, glf, P16, segf, cand, qpairs, qptr[b1 * NT:], slot, jidx, off, dl,
                do16, ddl, dseg[0], dseg[1], tA, tB, tcA, tdg, T, Tp, NT, base, V=V, R1=R1, BV=BV,
                BR=max(2, triton.next_power_of_2(R1)), STORE=key_side, HG=HG, num_warps=num_warps, **meta)
            readout_bwd_dq_sum_kernel[(NT, b1 - b0)](
                k16, P16, cand, qptr, qpairs, slot, do16, dq, dgl, tA, tcA, tdg, T, Tp, NT, b0, base, K=K, V=V,
                BT=BT, BK=BK, BV=BV, DOT=dot, HG=HG, num_warps=4)
        else:
            # per query chunk: dq, ddlam, the query side of dgl and dseg, and (key_side) the pair tiles
            readout_bwd_dq_kernel[(NT, b1 - b0)](
                q16 if HG > 1 else q, k16, u16, glf, P16, segf, cand, jidx, off, dl, do16, dq, ddl, dgl, dseg[0],
                dseg[1], slot, tA, tB, tcA, T, Tp, NT, b0, base, V=V, R1=R1, BV=BV,
                BR=max(2, triton.next_power_of_2(R1)), STORE=key_side, HG=HG, num_warps=num_warps, **meta)
        # per key chunk, from the tiles: every key-side gradient in one launch
        if key_side:
            grid = ((b1 - b0) * NT, triton.cdiv(V, BVk))  # the long axis first: grid y <= 65535
            readout_bwd_key_kernel[grid](q16, k16, do16, ptr, pairs, order, tA, tB, tcA, dk, du, dgl_k, dP, T, Tp,
                                         NT, b0 * NT, base, V=V, BV=BVk, HG=HG, num_warps=tuning.key_warps, **meta)
    if ngl:
        # e holds gl_c[BT - 1] for every older query chunk i: its sum of dE is dseg[i, c + 1] (plane 1, 0 for i = c)
        dgl_k[..., BT - 1] += dseg[1].sum(2)[..., 1:]
        dgl = dgl + dgl_k + torch.autograd.grad(seg, gl_leaf, dseg.sum(0))[0]
    return (dq if nq else None, dk if nk else None, du if nu else None, dgl if ngl else None, dP if nP else None,
            ddl if ndl else None)


def readout_bwd(grad, q, k, u, gl, P, dlam, plan, meta, BT: int, needs, *, cfg: StageConfig, heads):
    """Gradients ``(dqh, dkh, du, dgl, dP, ddlam)`` of :func:`~dla.ops.triton.readout.readout_fwd`; arguments
    as :func:`dla.ops.chunked.readout.readout_bwd` (``q, k`` the caller's tensors, ``heads(x)`` their per-head
    copies, built only when there are as many groups as heads)."""
    cand, jidx, off = plan
    H, Tp = u.shape[1], u.shape[2]
    if q.shape[2] < H:
        q, k = grouped_copy(q, Tp), grouped_copy(k, Tp)
    else:
        q, k = heads(q), heads(k)
    return boundary_terms_bwd(grad, q, k, u, gl, P, dlam, cand, jidx, off, BT, needs, cfg)
