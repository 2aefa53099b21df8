"""The readout's ``lam`` weights per token and rank, as one Triton kernel each way.

For token ``t`` with live-slot record ``lam_index[t, r]`` (the ``lam`` entry rank ``r`` is read with, -1 past the
live slots), the readout needs ``lam0[t] = lam[t, idx(0)]`` (the open slot's weight) and, across the boundary at the
start of the rank-``r`` slot, ``dlam[t, r] = lam[t, idx(r + 1)] - lam[t, idx(r)]`` (0 where rank ``r + 1`` is not
live), ``r < R - 1``. In PyTorch that is a float32 copy of ``lam``, a gather, a clamp, two comparisons, a
subtraction and a select over ``[B, H, T, R]`` tensors, and as many passes back; here one pass reads ``lam`` in its
own layout and dtype (``[B, T, H, R]``) and the record, and writes ``lam0``, ``dlam`` and a compact copy of the
record for the backward, which is one pass too. Bitwise the same values as the PyTorch form
(:func:`dla.ops.dla.chunk_torch._lam_terms_torch`); gradients equal up to the order of a sum where several ranks
read one entry (``fenwick``, ``dla_unbounded``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from dla.ops.utils.saved import compact_index


@triton.jit(do_not_specialize=["T"])
def lam_fwd_kernel(lam, idx, lam0, dlam, idx_out, T, slb, slt, slh, sib, sih, sit,
                   H: tl.constexpr, R: tl.constexpr, RL: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr):
    """``lam [B, T, H, RL]`` (strides ``slb, slt, slh``, entries contiguous), ``idx [B, H, T, R]`` (strides
    ``sib, sih, sit``) -> ``lam0 [B, H, T]``, ``dlam [B, H, T, R - 1]`` float32, ``idx_out`` the record compacted."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    m_t = o_t < T
    b_idx = tl.load(idx + i_b * sib + i_h * sih + o_t[:, None].to(tl.int64) * sit + o_r[None, :],
                    mask=m_t[:, None] & (o_r < R)[None, :], other=-1).to(tl.int32)
    b_lam = tl.load(lam + i_b * slb + i_h * slh + o_t[:, None].to(tl.int64) * slt + o_r[None, :],
                    mask=m_t[:, None] & (o_r < RL)[None, :], other=0).to(tl.float32)
    b_lr = tl.gather(b_lam, tl.maximum(b_idx, 0), 1)  # lam[t, idx(r)], entry 0 where not live
    nxt = tl.zeros([BT, BR], dtype=tl.int32) + tl.minimum(o_r + 1, BR - 1)[None, :]
    b_dl = tl.where((tl.gather(b_idx, nxt, 1) >= 0) & (o_r < R - 1)[None, :], tl.gather(b_lr, nxt, 1) - b_lr, 0.)
    p_row = i_bh * T + o_t
    tl.store(lam0 + p_row, tl.sum(tl.where(o_r[None, :] == 0, b_lr, 0.), 1), mask=m_t)
    tl.store(dlam + p_row[:, None] * (R - 1) + o_r[None, :], b_dl, mask=m_t[:, None] & (o_r < R - 1)[None, :])
    tl.store(idx_out + p_row[:, None] * R + o_r[None, :], b_idx.to(idx_out.dtype.element_ty),
             mask=m_t[:, None] & (o_r < R)[None, :])


@triton.jit(do_not_specialize=["T"])
def lam_bwd_kernel(idx, g0, gd, dlam_in, T, sgb, sgt, sgh,
                   H: tl.constexpr, R: tl.constexpr, RL: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr):
    """The gradient of :func:`lam_fwd_kernel`: ``g0 [B, H, T]``, ``gd [B, H, T, R - 1]`` -> ``dlam_in [B, T, H, RL]``
    (strides ``sgb, sgt, sgh``), each token's entries summed over the ranks that read them."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    m_t = o_t < T
    p_row = i_bh * T + o_t
    b_idx = tl.load(idx + p_row[:, None] * R + o_r[None, :], mask=m_t[:, None] & (o_r < R)[None, :],
                    other=-1).to(tl.int32)
    nxt = tl.zeros([BT, BR], dtype=tl.int32) + tl.minimum(o_r + 1, BR - 1)[None, :]
    prv = tl.zeros([BT, BR], dtype=tl.int32) + tl.maximum(o_r - 1, 0)[None, :]
    # d dlam[r] / d lam_r[r + 1] = +1 and / d lam_r[r] = -1 where rank r + 1 is live
    b_gd = tl.load(gd + p_row[:, None] * (R - 1) + o_r[None, :], mask=m_t[:, None] & (o_r < R - 1)[None, :],
                   other=0.)
    b_gd = tl.where(tl.gather(b_idx, nxt, 1) >= 0, b_gd, 0.)
    b_glr = tl.where(o_r[None, :] >= 1, tl.gather(b_gd, prv, 1), 0.) - b_gd
    b_glr += tl.where(o_r[None, :] == 0, tl.load(g0 + p_row, mask=m_t, other=0.)[:, None], 0.)
    # scatter over the entries each rank reads (several ranks may read one entry)
    b_g = tl.zeros([BT, BR], dtype=tl.float32)
    b_ic = tl.maximum(b_idx, 0)
    for r in range(R):
        col = tl.zeros([BT, 1], dtype=tl.int32) + r
        b_g += tl.where(o_r[None, :] == tl.gather(b_ic, col, 1), tl.gather(b_glr, col, 1), 0.)
    tl.store(dlam_in + i_b * sgb + i_h * sgh + o_t[:, None].to(tl.int64) * sgt + o_r[None, :],
             b_g.to(dlam_in.dtype.element_ty), mask=m_t[:, None] & (o_r < RL)[None, :])


class LamTerms(torch.autograd.Function):
    """``(lam0 [B, H, T], dlam [B, H, T, R - 1])`` float32 from ``lam [B, T, H, RL]`` and the record
    ``lam_index [B, H, T, R]`` (module docstring). Differentiable in ``lam``; not twice."""

    @staticmethod
    def forward(ctx, lam, lam_index):
        B, T, H, RL = lam.shape
        R = lam_index.shape[-1]
        if lam.stride(-1) != 1:
            lam = lam.contiguous()
        if lam_index.stride(-1) != 1:
            lam_index = lam_index.contiguous()
        lam0 = torch.empty(B, H, T, dtype=torch.float32, device=lam.device)
        dlam = torch.empty(B, H, T, max(R - 1, 0), dtype=torch.float32, device=lam.device)
        idx = torch.empty(B, H, T, R, dtype=compact_index(lam_index[:0], RL).dtype, device=lam.device)
        BT, BR = 64, triton.next_power_of_2(max(R, RL, 2))
        if lam0.numel():
            lam_fwd_kernel[(triton.cdiv(T, BT), B * H)](
                lam, lam_index, lam0, dlam, idx, T, lam.stride(0), lam.stride(1), lam.stride(2),
                lam_index.stride(0), lam_index.stride(1), lam_index.stride(2), H=H, R=R, RL=RL, BT=BT, BR=BR)
        ctx.save_for_backward(idx)
        ctx.lam_shape, ctx.lam_dtype, ctx.tiles = lam.shape, lam.dtype, (BT, BR)
        return lam0, dlam

    @staticmethod
    @once_differentiable
    def backward(ctx, g0, gd):
        (idx,) = ctx.saved_tensors
        B, T, H, RL = ctx.lam_shape
        R = idx.shape[-1]
        BT, BR = ctx.tiles
        out = torch.empty(B, T, H, RL, dtype=ctx.lam_dtype, device=idx.device)
        g0 = torch.zeros(B, H, T, dtype=torch.float32, device=idx.device) if g0 is None else g0.float().contiguous()
        gd = torch.zeros(B, H, T, max(R - 1, 0), dtype=torch.float32, device=idx.device) if gd is None else \
            gd.float().contiguous()
        if out.numel():
            lam_bwd_kernel[(triton.cdiv(T, BT), B * H)](idx, g0, gd, out, T, out.stride(0), out.stride(1),
                                                        out.stride(2), H=H, R=R, RL=RL, BT=BT, BR=BR)
        return out, None
