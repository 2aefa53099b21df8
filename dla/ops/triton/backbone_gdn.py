"""The Gated DeltaNet backbone's chunk pass as Triton kernels: the stage of
:mod:`dla.ops.chunked.backbone_gdn`, forward and backward.

Per batch x head, chunk ``c`` of ``BT`` tokens with chunk-local log-decay cumsums ``gl`` (``L = BT - 1``),
``D(t, s) = exp(gl_t - gl_s)`` for ``s <= t``:

    A[t, s] = beta_t D(t, s) k_t . k_s  (s < t),   Ai = (I + A)^{-1}
    U0 = Ai (beta v),  W = Ai (beta exp(gl) k),  u = U0 - W P_c                   (UT transform)
    P_0 = S0,  P_{c+1} = exp(gl_L) P_c + sum_s exp(gl_L - gl_s) k_s u_s^T         (P_NT = S, the final state)
    o_t = exp(gl_t) q_t^T P_c + sum_{s <= t} D(t, s) (q_t . k_s) u_s

``u`` and ``P`` are outputs too, so the backward takes ``du, dP, do, dS``. With ``G_c`` the gradient of the state
after chunk ``c`` (``G_{NT-1} = dS``) and ``dU`` the whole gradient of ``u``:

    dU = du + (D o (q k^T))^T do + diag(exp(gl_L - gl)) k G_c
    G_{c-1} = dP_c + exp(gl_L) G_c + sum_t exp(gl_t) q_t do_t^T - W^T dU,   dS0 = G_{-1}
    dq, dk, dgl (output and state terms): as the scalar-decay backbone (backbone_mamba2.py) with v -> u;
    dW = -dU P_c^T;  dRv = Ai^T dU, dRk = Ai^T dW  (the solve's backward);
    dA = -(dRv U0^T + dRk W^T) on the strict lower triangle;  dv = beta dRv;
    dbeta_t = dRv_t . v_t + exp(gl_t) dRk_t . k_t + sum_s dA[t, s] D(t, s) k_t . k_s;
    dk += beta exp(gl) dRk + dAk k + dAk^T k,  dAk = dA o (beta_t D(t, s));
    dgl += beta exp(gl) dRk . k + rowsum(E) - colsum(E),  E = dA o A.

The inverse ``Ai`` of the unit lower-triangular ``I + A`` is forward substitution by blocks of 16 (stable for any
``beta``; Neumann products of the nilpotent ``A`` are not: entries of ``A^j`` grow like binomials and cancel in
float32 once ``beta_t k_t . k_s`` is not small). The ``BT / 16`` diagonal blocks are inverted together by 16 steps
of row-by-row substitution on a ``[BT/16, 16, 16]`` tensor; then block row ``i`` of ``Ai`` is
``Ai_ii (E_i - A[i, :16i] Ai[:16i, :])`` (``E_i`` the identity's block row), two ``tl.dot`` from the rows already
solved. ``A`` and the solved rows live in the ``Ai`` output buffer, written and read back by the same program
between barriers (a register tensor cannot be sliced by rows).

Kernels: the UT transform (``Ai``, ``W``, ``U0``) and its backward run one program per (chunk, batch x head);
the state recurrences (forward and reverse) one per (V tile, batch x head) with the whole K dimension in one
tile; the output (:func:`dla.ops.triton.backbone_mamba2.chunk_fwd_o_kernel` with ``v -> u``), the local ``du`` and
the ``dq, dk, dW, dgl`` kernel one per (tile, chunk, batch x head).

Every product is :func:`dla.ops.triton.dot.prec_dot` with the ``DOT`` constexpr (modes in
:mod:`dla.ops.utils.precision`); accumulators, states, outputs and gradients are float32 in every mode. The
forward's UT transform and state recurrence, which make ``u`` and ``P``, run float32-accurate products whatever
the mode asked (``tf32x3`` for ``tf32`` and the 16-bit modes): ``u`` feeds the segmentation scan, whose decisions
must not depend on the mode. The UT transform's backward does too (16-bit operands miscompile there on Hopper
with Triton 3.6: ``docs/benchmarks.md``, tuning decisions). The output kernel and the rest of the backward take
the mode asked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dla.ops.triton.backbone_mamba2 import chunk_fwd_o_kernel, tiles
from dla.ops.triton.dot import prec_dot, prec_dot_tc
from dla.ops.utils.precision import min_tile
from dla.ops.utils.tuning import StageConfig


@triton.jit
def gdn_fwd_prepare_kernel(
    k, v, beta, gl, Ai, W, U, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    NB: tl.constexpr = BT // 16
    o_t = tl.arange(0, BT)
    o_i = tl.arange(0, 16)
    o_b = tl.arange(0, NB)
    p_t = (i_bh * NT + i_t) * BT + o_t
    p_A = Ai + (i_bh * NT + i_t) * BT * BT
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=(o_k < K)[None, :], other=0.)  # [BT, BK]
        b_kk += prec_dot(b_k, tl.trans(b_k), DOT)
    b_b = tl.load(beta + p_t)
    b_g = tl.load(gl + p_t)
    m_A = o_t[:, None] > o_t[None, :]
    b_A = tl.where(m_A, b_b[:, None] * tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], 0.)) * b_kk, 0.)
    tl.store(p_A + o_t[:, None] * BT + o_t[None, :], b_A)  # scratch: A, overwritten by Ai block row by block row
    tl.debug_barrier()
    # the NB diagonal 16 x 16 blocks at once: row r of X_bb = e_r - sum_{j < r} A_bb[r, j] X_bb[j, :]
    b_X = tl.zeros([NB, 16, 16], dtype=tl.float32) + tl.where(o_i[:, None] == o_i[None, :], 1., 0.)[None, :, :]
    for r in range(1, 16):
        p_a = p_A + (o_b[:, None] * 16 + r) * BT + o_b[:, None] * 16 + o_i[None, :]
        b_a = tl.load(p_a, mask=(o_i < r)[None, :], other=0.)  # [NB, 16]
        b_row = tl.where(o_i == r, 1., 0.)[None, :] - tl.sum(b_a[:, :, None] * b_X, 1)  # [NB, 16]
        b_X = tl.where((o_i == r)[None, :, None], b_row[:, None, :], b_X)
    for i in range(NB):
        o_r = i * 16 + o_i
        b_Xii = tl.sum(tl.where((o_b == i)[:, None, None], b_X, 0.), 0)  # [16, 16]
        b_As = tl.load(p_A + o_r[:, None] * BT + o_t[None, :], mask=(o_t < i * 16)[None, :], other=0.)  # [16, BT]
        b_Ap = tl.load(p_A + o_t[:, None] * BT + o_t[None, :], mask=(o_t < i * 16)[:, None], other=0.)  # Ai rows
        b_R = tl.where(o_r[:, None] == o_t[None, :], 1., 0.) - prec_dot(b_As, b_Ap, DOT)
        b_S = prec_dot(b_Xii, b_R, DOT)  # [16, BT]
        tl.debug_barrier()  # every thread has read block row i of A before it is overwritten
        tl.store(p_A + o_r[:, None] * BT + o_t[None, :], b_S)
        tl.debug_barrier()
    b_Ai = tl.load(p_A + o_t[:, None] * BT + o_t[None, :])  # [BT, BT]
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k, other=0.)  # [BT, BK]
        b_w = prec_dot(b_Ai, b_k * (b_b * tl.exp(b_g))[:, None], DOT)
        tl.store(W + p_t[:, None] * K + o_k[None, :], b_w, mask=m_k)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = (o_v < V)[None, :]
        b_v = tl.load(v + p_t[:, None] * V + o_v[None, :], mask=m_v, other=0.)  # [BT, BV]
        b_u = prec_dot(b_Ai, b_v * b_b[:, None], DOT)
        tl.store(U + p_t[:, None] * V + o_v[None, :], b_u, mask=m_v)


@triton.jit
def gdn_fwd_h_kernel(
    k, w, u, gl, S0, P, S, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    # BK >= K: u = U0 - W P_c needs the whole key dimension of the state
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.load(S0 + i_bh * K * V + o_kv, mask=m_kv, other=0.)  # [BK, BV]
    i_t = 0
    while i_t < NT:  # while, not for: the interpreter cannot take a runtime int as a range bound
        tl.store(P + (i_bh * NT + i_t) * K * V + o_kv, b_h, mask=m_kv)
        p_t = (i_bh * NT + i_t) * BT + o_t
        p_u = u + p_t[:, None] * V + o_v[None, :]
        b_w = tl.load(w + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
        b_u = tl.load(p_u, mask=m_v[None, :], other=0.) - prec_dot(b_w, b_h, DOT)  # [BT, BV]
        tl.store(p_u, b_u, mask=m_v[None, :])  # U0 -> u in place
        b_k = tl.load(k + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        b_g = tl.load(gl + p_t)
        b_gL = tl.load(gl + (i_bh * NT + i_t) * BT + BT - 1)
        b_h = b_h * tl.exp(b_gL) + prec_dot(b_k * tl.exp(b_gL - b_g)[None, :], b_u, DOT)
        i_t += 1
    tl.store(S + i_bh * K * V + o_kv, b_h, mask=m_kv)


@triton.jit
def gdn_bwd_du_kernel(
    q, k, gl, do, du, dU, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DU: tl.constexpr, DOT: tl.constexpr,
):
    # dU = du + (D o q k^T)^T do: the chunk-local part of u's gradient (the state part comes in gdn_bwd_dh_kernel)
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = (o_v < V)[None, :]
    p_t = (i_bh * NT + i_t) * BT + o_t
    b_A = tl.zeros([BT, BT], dtype=tl.float32)  # [s, t]: k_s . q_t
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
        b_q = tl.load(q + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        b_A += prec_dot(b_k, b_q, DOT)
    b_g = tl.load(gl + p_t)
    b_A = b_A * tl.exp(tl.where(o_t[None, :] >= o_t[:, None], b_g[None, :] - b_g[:, None], float("-inf")))
    b_do = tl.load(do + p_t[:, None] * V + o_v[None, :], mask=m_v, other=0.)  # [BT, BV]
    b_du = prec_dot(b_A, b_do, DOT)
    if USE_DU:
        b_du += tl.load(du + p_t[:, None] * V + o_v[None, :], mask=m_v, other=0.)
    tl.store(dU + p_t[:, None] * V + o_v[None, :], b_du, mask=m_v)


@triton.jit
def gdn_bwd_dh_kernel(
    q, k, w, gl, do, dP, dS, dU, G, dS0, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DP: tl.constexpr, USE_DS: tl.constexpr, DOT: tl.constexpr,
):
    # BK >= K; dU holds the local part of u's gradient on entry and the whole gradient on exit
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    if USE_DS:
        b_dh = tl.load(dS + i_bh * K * V + o_kv, mask=m_kv, other=0.)  # [BK, BV]
    else:
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    i_t = NT - 1
    while i_t >= 0:
        tl.store(G + (i_bh * NT + i_t) * K * V + o_kv, b_dh, mask=m_kv)  # gradient of the state after i_t
        p_t = (i_bh * NT + i_t) * BT + o_t
        p_du = dU + p_t[:, None] * V + o_v[None, :]
        b_g = tl.load(gl + p_t)
        b_gL = tl.load(gl + (i_bh * NT + i_t) * BT + BT - 1)
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
        b_du = tl.load(p_du, mask=m_v[None, :], other=0.)  # [BT, BV]
        b_du += prec_dot(b_k, b_dh, DOT) * tl.exp(b_gL - b_g)[:, None]
        tl.store(p_du, b_du, mask=m_v[None, :])
        b_q = tl.load(q + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        b_w = tl.load(w + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        b_do = tl.load(do + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_dh = b_dh * tl.exp(b_gL) + prec_dot(b_q * tl.exp(b_g)[None, :], b_do, DOT) \
            - prec_dot(b_w, b_du, DOT)
        if USE_DP:
            b_dh += tl.load(dP + (i_bh * NT + i_t) * K * V + o_kv, mask=m_kv, other=0.)
        i_t -= 1
    tl.store(dS0 + i_bh * K * V + o_kv, b_dh, mask=m_kv)


@triton.jit
def gdn_bwd_dqkw_kernel(
    q, k, u, gl, P, do, dU, G, dq, dk, dw, dg, NT, BH,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    p_t = (i_bh * NT + i_t) * BT + o_t
    p_c = (i_bh * NT + i_t) * K * V
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # do_t . u_s
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_hG = tl.zeros([BK], dtype=tl.float32)  # <P_c, G_c> over this K tile, by key channel
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_vk = m_v[:, None] & m_k[None, :]
        b_u = tl.load(u + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_do = tl.load(do + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_du = tl.load(dU + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_h = tl.load(P + p_c + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.)  # [BV, BK]
        b_G = tl.load(G + p_c + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.)  # [BV, BK]
        b_dA += prec_dot(b_do, tl.trans(b_u), DOT)
        b_dq += prec_dot(b_do, b_h, DOT)
        b_dk += prec_dot(b_u, b_G, DOT)
        b_dw -= prec_dot(b_du, b_h, DOT)
        b_hG += tl.sum(b_h * b_G, 0)
    b_q = tl.load(q + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
    b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
    b_g = tl.load(gl + p_t)
    b_gL = tl.load(gl + (i_bh * NT + i_t) * BT + BT - 1)
    b_dA = b_dA * tl.exp(tl.where(o_t[:, None] >= o_t[None, :], b_g[:, None] - b_g[None, :], float("-inf")))
    b_dq = b_dq * tl.exp(b_g)[:, None] + prec_dot(b_dA, b_k, DOT)
    b_dk = b_dk * tl.exp(b_gL - b_g)[:, None]  # the state part
    b_last = tl.exp(b_gL) * tl.sum(b_hG, 0) + tl.sum(tl.sum(b_k * b_dk, 1), 0)  # <G_c, P_{c+1}> on this tile
    b_dk += prec_dot_tc(tl.trans(b_dA), b_q, DOT)
    b_dg = tl.sum(b_q * b_dq - b_k * b_dk, 1) + tl.where(o_t == BT - 1, b_last, 0.)
    tl.store(dq + p_t[:, None] * K + o_k[None, :], b_dq, mask=m_k[None, :])
    tl.store(dk + p_t[:, None] * K + o_k[None, :], b_dk, mask=m_k[None, :])
    tl.store(dw + p_t[:, None] * K + o_k[None, :], b_dw, mask=m_k[None, :])
    tl.store(dg + i_k * BH * NT * BT + p_t, b_dg)  # one partial sum per K tile


@triton.jit
def gdn_bwd_ut_kernel(
    k, v, beta, gl, Ai, w, dU, dw, dk, dv, db, dg, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    # backward of the UT transform; dk holds the output and state parts on entry and the whole gradient on exit
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    p_t = (i_bh * NT + i_t) * BT + o_t
    b_Ai = tl.load(Ai + (i_bh * NT + i_t) * BT * BT + o_t[:, None] * BT + o_t[None, :])  # [BT, BT]
    b_b = tl.load(beta + p_t)
    b_g = tl.load(gl + p_t)
    b_bg = b_b * tl.exp(b_g)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # dRv U0^T + dRk W^T
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = (o_v < V)[None, :]
        b_v = tl.load(v + p_t[:, None] * V + o_v[None, :], mask=m_v, other=0.)  # [BT, BV]
        b_du = tl.load(dU + p_t[:, None] * V + o_v[None, :], mask=m_v, other=0.)  # [BT, BV]
        b_u0 = prec_dot(b_Ai, b_v * b_b[:, None], DOT)  # U0, recomputed
        b_dr = prec_dot(tl.trans(b_Ai), b_du, DOT)  # dRv
        tl.store(dv + p_t[:, None] * V + o_v[None, :], b_dr * b_b[:, None], mask=m_v)
        b_db += tl.sum(b_dr * b_v, 1)
        b_dA += prec_dot_tc(b_dr, tl.trans(b_u0), DOT)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k, other=0.)  # [BT, BK]
        b_w = tl.load(w + p_t[:, None] * K + o_k[None, :], mask=m_k, other=0.)  # [BT, BK]
        b_dw = tl.load(dw + p_t[:, None] * K + o_k[None, :], mask=m_k, other=0.)  # [BT, BK]
        b_dr = prec_dot(tl.trans(b_Ai), b_dw, DOT)  # dRk
        b_x = tl.sum(b_dr * b_k, 1)
        b_db += tl.exp(b_g) * b_x
        b_dg += b_bg * b_x
        b_dA += prec_dot(b_dr, tl.trans(b_w), DOT)
        b_kk += prec_dot(b_k, tl.trans(b_k), DOT)
    m_A = o_t[:, None] > o_t[None, :]
    b_D = tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], float("-inf")))  # 0 on and above the diagonal
    b_dA = -b_dA * b_D  # dA o D (strict lower)
    b_db += tl.sum(b_dA * b_kk, 1)
    b_E = b_dA * b_kk * b_b[:, None]  # dA o A
    b_dg += tl.sum(b_E, 1) - tl.sum(b_E, 0)
    b_dAk = b_dA * b_b[:, None]
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        p_dk = dk + p_t[:, None] * K + o_k[None, :]
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k, other=0.)  # [BT, BK]
        b_dw = tl.load(dw + p_t[:, None] * K + o_k[None, :], mask=m_k, other=0.)  # [BT, BK]
        b_dr = prec_dot(tl.trans(b_Ai), b_dw, DOT)  # dRk again: cheaper than a round trip
        b_dk = tl.load(p_dk, mask=m_k, other=0.) + b_dr * b_bg[:, None] \
            + prec_dot(b_dAk, b_k, DOT) + prec_dot_tc(tl.trans(b_dAk), b_k, DOT)
        tl.store(p_dk, b_dk, mask=m_k)
    tl.store(db + p_t, b_db)
    tl.store(dg + p_t, b_dg)


def _exact(dot: str) -> str:
    """The mode of the kernels that take float32-accurate products whatever the mode asked (module docstring):
    ``dot`` itself if it is ``ieee`` or ``tf32x3``, else ``tf32x3``."""
    return dot if dot in ("ieee", "tf32x3") else "tf32x3"


def _full(K: int, dot: str) -> int:
    """One tile over the whole key dimension (the state recurrences): a power of two ``>= K``, at least
    :func:`dla.ops.utils.precision.min_tile`."""
    return max(min_tile(dot), triton.next_power_of_2(K))


def backbone_gdn_fwd(q, k, v, beta, gl, S0, cfg: StageConfig):
    """Pseudo-values, chunk states, plain output and final state; arguments as
    :func:`dla.ops.chunked.backbone_gdn.backbone_gdn_fwd` (float32, contiguous). Returns ``u, P, o, S`` and
    ``(Ai, W)`` (the UT transform's inverse and key side, for the backward)."""
    for name, x in dict(q=q, k=k, v=v, beta=beta, gl=gl, S0=S0).items():
        if x.dtype != torch.float32:
            raise ValueError(f"{name}: the Triton backbone computes in float32, got {x.dtype}")
    B, H, NT, BT = gl.shape
    K, V = k.shape[-1], v.shape[-1]
    dot, tuning = cfg.dot, cfg.tuning
    BK, BV = tiles(K, dot, tuning.max_tile), tiles(V, dot, tuning.max_tile)
    BVh = min(BV, 32)  # the recurrence holds [K, BVh] in registers; narrower tiles, more programs
    Ai = q.new_empty(B, H, NT, BT, BT)
    W = torch.empty_like(k)
    u = torch.empty_like(v)
    P = q.new_empty(B, H, NT, K, V)
    S = q.new_empty(B, H, K, V)
    o = torch.empty_like(v)
    meta = dict(K=K, V=V, BT=BT, DOT=dot, num_warps=tuning.num_warps)
    exact = dict(meta, DOT=_exact(dot))  # u feeds the scan
    gdn_fwd_prepare_kernel[(NT, B * H)](k, v, beta, gl, Ai, W, u, NT, BK=BK, BV=BV, **exact)
    gdn_fwd_h_kernel[(triton.cdiv(V, BVh), B * H)](k, W, u, gl, S0, P, S, NT, BK=_full(K, _exact(dot)), BV=BVh,
                                                   **exact)
    chunk_fwd_o_kernel[(triton.cdiv(V, BV), NT, B * H)](q, k, u, gl, P, o, NT, BK=BK, BV=BV, **meta)
    return u, P, o, S, (Ai, W)


def backbone_gdn_bwd(q, k, v, beta, gl, S0, u, P, extra, du, dP, do, dS, needs, cfg: StageConfig):
    """Gradients ``(dq, dk, dv, dbeta, dgl, dS0)`` from those of ``u, P, o, S`` (``None``: zero); ``extra``: the
    forward's ``(Ai, W)``. All six are computed (``needs`` is not read)."""
    Ai, W = extra
    B, H, NT, BT = gl.shape
    K, V = k.shape[-1], v.shape[-1]
    dot, tuning = cfg.dot, cfg.tuning
    BK, BV = tiles(K, dot, tuning.max_tile), tiles(V, dot, tuning.max_tile)
    BVh = min(BV, 32)
    NK = triton.cdiv(K, BK)
    do = do if do is not None else torch.zeros_like(v)
    dU = torch.empty_like(v)
    G = q.new_empty(B, H, NT, K, V)
    dS0 = q.new_empty(B, H, K, V)
    dq, dk, dW, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(k), torch.empty_like(v)
    dg = q.new_empty(NK + 1, B, H, NT, BT)
    db = torch.empty_like(beta)
    meta = dict(K=K, V=V, BT=BT, DOT=dot, num_warps=tuning.num_warps)
    gdn_bwd_du_kernel[(triton.cdiv(V, BV), NT, B * H)](q, k, gl, do, du if du is not None else q, dU, NT, BK=BK,
                                                        BV=BV, USE_DU=du is not None, **meta)
    gdn_bwd_dh_kernel[(triton.cdiv(V, BVh), B * H)](q, k, W, gl, do, dP if dP is not None else q,
                                                    dS if dS is not None else q, dU, G, dS0, NT, BK=_full(K, dot),
                                                    BV=BVh, USE_DP=dP is not None, USE_DS=dS is not None, **meta)
    gdn_bwd_dqkw_kernel[(NK, NT, B * H)](q, k, u, gl, P, do, dU, G, dq, dk, dW, dg, NT, B * H, BK=BK, BV=BV,
                                         **meta)
    # float32-accurate products in the UT backward whatever the mode: with 16-bit operands Triton 3.6 on Hopper
    # gave a wrong dk and illegal memory accesses here (the fault fla met in its WY backward)
    gdn_bwd_ut_kernel[(NT, B * H)](k, v, beta, gl, Ai, W, dU, dW, dk, dv, db, dg[NK], NT,
                                   BK=tiles(K, _exact(dot), tuning.ut_tile), BV=BV, **dict(meta, DOT=_exact(dot)))
    return dq, dk, dv, db, dg.sum(0), dS0
