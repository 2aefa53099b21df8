"""The scalar-decay (Mamba-2) backbone's chunk pass as Triton kernels: the stage of
:mod:`dla.ops.chunked.backbone_mamba2`, forward and backward.

Per batch x head, chunk ``c`` of ``BT`` tokens with chunk-local log-decay cumsums ``gl`` (``L = BT - 1``):

    P_0 = S0,  P_{c+1} = exp(gl_L) P_c + sum_s exp(gl_L - gl_s) k_s v_s^T      (P_NT = S, the final state)
    o_t = exp(gl_t) q_t^T P_c + sum_{s <= t} exp(gl_t - gl_s) (q_t . k_s) v_s

Backward, with ``G_c`` the gradient of the state after chunk ``c`` (``G_{NT-1} = dS``):

    G_{c-1} = dP_c + exp(gl_L) G_c + sum_t exp(gl_t) q_t do_t^T,  dS0 = G_{-1}
    dq_t = exp(gl_t) P_c do_t + sum_{s <= t} exp(gl_t - gl_s) (do_t . v_s) k_s
    dk_s = exp(gl_L - gl_s) G_c v_s + sum_{t >= s} exp(gl_t - gl_s) (do_t . v_s) q_t
    dv_s = exp(gl_L - gl_s) G_c^T k_s + sum_{t >= s} exp(gl_t - gl_s) (q_t . k_s) do_t
    dgl_t = q_t . dq_t - k_t . dk_t + [t = L] <G_c, P_{c+1}>

The last line: every term holding ``gl_t`` as the later (earlier) end of a decay gets ``+`` (``-``) its own
value, and ``P_{c+1}`` is linear in ``exp(gl_L)``; ``<G_c, P_{c+1}>`` is computed as
``exp(gl_L) <G_c, P_c> + sum_s k_s . dk_s(state part)``, from tiles already loaded.

Every product is :func:`dla.ops.triton.dot.prec_dot` with the ``DOT`` constexpr (modes in
:mod:`dla.ops.utils.precision`); accumulators, states, outputs and gradients are float32 in every mode.

Kernels: the state recurrence (forward and reverse) runs one program per (K tile, V tile, batch x head), looping
over chunks; the output, ``dq, dk, dgl`` and ``dv`` run one program per (tile, chunk, batch x head).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dla.ops.triton.dot import prec_dot, prec_dot_tc
from dla.ops.utils.precision import min_tile
from dla.ops.utils.tuning import StageConfig


@triton.jit
def chunk_fwd_h_kernel(
    k, v, gl, S0, P, S, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.load(S0 + i_bh * K * V + o_kv, mask=m_kv, other=0.)  # [BK, BV]
    i_t = 0
    while i_t < NT:  # while, not for: the interpreter cannot take a runtime int as a range bound
        tl.store(P + (i_bh * NT + i_t) * K * V + o_kv, b_h, mask=m_kv)
        p_t = (i_bh * NT + i_t) * BT + o_t  # token rows of the chunk
        b_k = tl.load(k + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        b_v = tl.load(v + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_g = tl.load(gl + p_t)  # [BT]
        b_gL = tl.load(gl + (i_bh * NT + i_t) * BT + BT - 1)
        b_h = b_h * tl.exp(b_gL) + prec_dot(b_k * tl.exp(b_gL - b_g)[None, :], b_v, DOT)
        i_t += 1
    tl.store(S + i_bh * K * V + o_kv, b_h, mask=m_kv)


@triton.jit
def chunk_fwd_o_kernel(
    q, k, v, gl, P, o, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_t = (i_bh * NT + i_t) * BT + o_t
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(q + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
        b_k = tl.load(k + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        p_h = P + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :]
        b_h = tl.load(p_h, mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV]
        b_o += prec_dot(b_q, b_h, DOT)
        b_A += prec_dot(b_q, b_k, DOT)
    b_g = tl.load(gl + p_t)
    # mask before exp: gl_t - gl_s > 0 for s > t can overflow
    b_A = b_A * tl.exp(tl.where(o_t[:, None] >= o_t[None, :], b_g[:, None] - b_g[None, :], float("-inf")))
    b_v = tl.load(v + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
    b_o = b_o * tl.exp(b_g)[:, None] + prec_dot(b_A, b_v, DOT)
    tl.store(o + p_t[:, None] * V + o_v[None, :], b_o, mask=m_v[None, :])


@triton.jit
def chunk_bwd_dh_kernel(
    q, do, gl, dP, dS, G, dS0, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DP: tl.constexpr, USE_DS: tl.constexpr, DOT: tl.constexpr,
):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
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
        b_q = tl.load(q + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        b_do = tl.load(do + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_g = tl.load(gl + p_t)
        b_gL = tl.load(gl + (i_bh * NT + i_t) * BT + BT - 1)
        b_dh = b_dh * tl.exp(b_gL) + prec_dot(b_q * tl.exp(b_g)[None, :], b_do, DOT)
        if USE_DP:
            b_dh += tl.load(dP + (i_bh * NT + i_t) * K * V + o_kv, mask=m_kv, other=0.)
        i_t -= 1
    tl.store(dS0 + i_bh * K * V + o_kv, b_dh, mask=m_kv)


@triton.jit
def chunk_bwd_dqkg_kernel(
    q, k, v, gl, P, do, G, dq, dk, dg, NT, BH,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    p_t = (i_bh * NT + i_t) * BT + o_t
    p_c = (i_bh * NT + i_t) * K * V
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # do_t . v_s
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_hG = tl.zeros([BK], dtype=tl.float32)  # <P_c, G_c> over this K tile, by key channel
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_vk = m_v[:, None] & m_k[None, :]
        b_v = tl.load(v + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_do = tl.load(do + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
        b_h = tl.load(P + p_c + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.)  # [BV, BK]
        b_G = tl.load(G + p_c + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.)  # [BV, BK]
        b_dA += prec_dot(b_do, tl.trans(b_v), DOT)
        b_dq += prec_dot(b_do, b_h, DOT)
        b_dk += prec_dot(b_v, b_G, DOT)
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
    tl.store(dg + i_k * BH * NT * BT + p_t, b_dg)  # one partial sum per K tile


@triton.jit
def chunk_bwd_dv_kernel(
    q, k, gl, do, G, dv, NT,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_t = (i_bh * NT + i_t) * BT + o_t
    b_A = tl.zeros([BT, BT], dtype=tl.float32)  # [s, t]: k_s . q_t
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + p_t[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)  # [BT, BK]
        b_q = tl.load(q + p_t[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0.)  # [BK, BT]
        p_G = G + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :]
        b_G = tl.load(p_G, mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV]
        b_A += prec_dot(b_k, b_q, DOT)
        b_dv += prec_dot(b_k, b_G, DOT)
    b_g = tl.load(gl + p_t)
    b_gL = tl.load(gl + (i_bh * NT + i_t) * BT + BT - 1)
    b_A = b_A * tl.exp(tl.where(o_t[None, :] >= o_t[:, None], b_g[None, :] - b_g[:, None], float("-inf")))
    b_do = tl.load(do + p_t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)  # [BT, BV]
    b_dv = b_dv * tl.exp(b_gL - b_g)[:, None] + prec_dot(b_A, b_do, DOT)
    tl.store(dv + p_t[:, None] * V + o_v[None, :], b_dv, mask=m_v[None, :])


def tiles(D: int, dot: str, cap: int) -> int:
    """Tile width for a key or value dimension: a power of two in [``min_tile(dot)``, ``cap``] (``tl.dot`` needs
    >= 16; 16-bit operands 32: :func:`dla.ops.utils.precision.min_tile`)."""
    return max(min_tile(dot), min(cap, triton.next_power_of_2(D)))


def _check(**tensors):
    for name, x in tensors.items():
        if x is not None and x.dtype != torch.float32:
            raise ValueError(f"{name}: the Triton backbone computes in float32, got {x.dtype}")


def backbone_mamba2_fwd(q, k, v, gl, S0, cfg: StageConfig):
    """Chunk states, plain output and final state; arguments and returns as
    :func:`dla.ops.chunked.backbone_mamba2.backbone_mamba2_fwd` (float32, contiguous). ``cfg``: the ``tl.dot`` mode
    and the tiles and warps of the kernels."""
    _check(q=q, k=k, v=v, gl=gl, S0=S0)
    B, H, NT, BT = gl.shape
    K, V = k.shape[-1], v.shape[-1]
    BK, BV = tiles(K, cfg.dot, cfg.tuning.max_tile), tiles(V, cfg.dot, cfg.tuning.max_tile)
    P = q.new_empty(B, H, NT, K, V)
    S = q.new_empty(B, H, K, V)
    o = q.new_empty(B, H, NT * BT, V)
    meta = dict(K=K, V=V, BT=BT, BK=BK, BV=BV, DOT=cfg.dot, num_warps=cfg.tuning.num_warps)
    chunk_fwd_h_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), B * H)](k, v, gl, S0, P, S, NT, **meta)
    chunk_fwd_o_kernel[(triton.cdiv(V, BV), NT, B * H)](q, k, v, gl, P, o, NT, **meta)
    return P, o, S, ()


def backbone_mamba2_bwd(q, k, v, gl, S0, P, extra, dP, do, dS, needs, cfg: StageConfig):
    """Gradients ``(dq, dk, dv, dgl, dS0)`` from those of ``P, o, S`` (``None``: zero); all five are computed
    (``needs`` is not read: the kernels produce them together)."""
    B, H, NT, BT = gl.shape
    K, V = k.shape[-1], v.shape[-1]
    BK, BV = tiles(K, cfg.dot, cfg.tuning.max_tile), tiles(V, cfg.dot, cfg.tuning.max_tile)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    do = do if do is not None else torch.zeros_like(v)
    G = q.new_empty(B, H, NT, K, V)
    dS0 = q.new_empty(B, H, K, V)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dg = q.new_empty(NK, B, H, NT, BT)
    meta = dict(K=K, V=V, BT=BT, BK=BK, BV=BV, DOT=cfg.dot, num_warps=cfg.tuning.num_warps)
    chunk_bwd_dh_kernel[(NK, NV, B * H)](q, do, gl, dP if dP is not None else q, dS if dS is not None else q, G,
                                         dS0, NT, USE_DP=dP is not None, USE_DS=dS is not None, **meta)
    chunk_bwd_dqkg_kernel[(NK, NT, B * H)](q, k, v, gl, P, do, G, dq, dk, dg, NT, B * H, **meta)
    chunk_bwd_dv_kernel[(NV, NT, B * H)](q, k, gl, do, G, dv, NT, **meta)
    return dq, dk, dv, dg.sum(0), dS0
