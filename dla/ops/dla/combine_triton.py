"""The readout's last step as one Triton kernel each way: ``o = scale * (lam0 * o_base + terms)``, written straight
into the caller's ``[B, T, H, V]`` layout and dtype.

In PyTorch that is a pad, a product, a second pad, a sum, a scaling, a transpose and a cast over ``[B, H, T, V]``
float32 tensors (0.8 GB each at 65,536 tokens x 48 heads, V = 64), and about as many passes back; here the forward
reads ``o_base`` and the boundary terms once and writes the output once, and the backward reads the output's
gradient and ``o_base`` once and writes the three gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable


@triton.jit
def _rows(lam0, T, H: tl.constexpr, BTT: tl.constexpr):
    """This program's (batch x head, batch, head), token rows, their mask and ``lam0``."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BTT + tl.arange(0, BTT)
    m_t = o_t < T
    return i_bh, i_bh // H, i_bh % H, o_t, m_t, tl.load(lam0 + i_bh * T + o_t, mask=m_t, other=0.)


@triton.jit(do_not_specialize=["T", "Tp"])
def combine_fwd_kernel(lam0, ob, terms, out, scale, T, Tp, st_b, st_h, st_t, so_b, so_t, so_h,
                       H: tl.constexpr, V: tl.constexpr, BTT: tl.constexpr, BV: tl.constexpr):
    i_bh, i_b, i_h, o_t, m_t, b_l = _rows(lam0, T, H, BTT)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        b_ob = tl.load(ob + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m, other=0.)
        b_x = tl.load(terms + i_b * st_b + i_h * st_h + o_t[:, None].to(tl.int64) * st_t + o_v[None, :], mask=m,
                      other=0.)
        b_o = (b_l[:, None] * b_ob + b_x) * scale
        tl.store(out + i_b * so_b + i_h * so_h + o_t[:, None].to(tl.int64) * so_t + o_v[None, :],
                 b_o.to(out.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["T", "Tp"])
def combine_bwd_kernel(do, lam0, ob, d_lam0, d_ob, d_terms, scale, T, Tp, sd_b, sd_t, sd_h,
                       H: tl.constexpr, V: tl.constexpr, BTT: tl.constexpr, BV: tl.constexpr):
    i_bh, i_b, i_h, o_t, m_t, b_l = _rows(lam0, T, H, BTT)
    b_dl = tl.zeros([BTT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = (o_v < V)[None, :]
        b_g = tl.load(do + i_b * sd_b + i_h * sd_h + o_t[:, None].to(tl.int64) * sd_t + o_v[None, :],
                      mask=m_t[:, None] & m_v, other=0.).to(tl.float32) * scale
        p_ob = (i_bh * Tp + o_t[:, None]) * V + o_v[None, :]
        b_ob = tl.load(ob + p_ob, mask=m_t[:, None] & m_v, other=0.)
        b_dl += tl.sum(b_g * b_ob, 1)
        tl.store(d_ob + p_ob, b_g * b_l[:, None], mask=(o_t < Tp)[:, None] & m_v)  # zero in the padding rows
        tl.store(d_terms + (i_bh * T + o_t[:, None]) * V + o_v[None, :], b_g, mask=m_t[:, None] & m_v)
    tl.store(d_lam0 + i_bh * T + o_t, b_dl, mask=m_t)


class ReadoutCombine(torch.autograd.Function):
    """``o [B, T, H, V]`` in ``dtype`` = ``scale * (lam0 * o_base + terms)`` over the first ``T`` rows.

    Inputs: ``lam0 [B, H, T]``, ``o_base [B, H, Tp, V]`` (``Tp >= T``), ``terms [B, H, T, V]`` (any strides with
    contiguous last dimension), all float32. Gradients for the three (``o_base``'s padding rows get zeros)."""

    @staticmethod
    def forward(ctx, lam0, o_base, terms, scale: float, dtype: torch.dtype):
        B, H, Tp, V = o_base.shape
        T = lam0.shape[-1]
        lam0, o_base = lam0.contiguous(), o_base.contiguous()
        if terms.stride(-1) != 1:
            terms = terms.contiguous()
        out = torch.empty(B, T, H, V, dtype=dtype, device=o_base.device)
        BTT, BV = 64, min(triton.next_power_of_2(V), 64)
        if out.numel():
            combine_fwd_kernel[(triton.cdiv(T, BTT), B * H)](
                lam0, o_base, terms, out, scale, T, Tp, terms.stride(0), terms.stride(1), terms.stride(2),
                out.stride(0), out.stride(1), out.stride(2), H=H, V=V, BTT=BTT, BV=BV)
        ctx.save_for_backward(lam0, o_base)
        ctx.scale, ctx.tiles = scale, (BTT, BV)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        lam0, o_base = ctx.saved_tensors
        B, H, Tp, V = o_base.shape
        T = lam0.shape[-1]
        BTT, BV = ctx.tiles
        if do.stride(-1) != 1:
            do = do.contiguous()
        d_lam0 = torch.empty_like(lam0)
        d_ob = torch.empty_like(o_base)
        d_terms = torch.empty(B, H, T, V, dtype=torch.float32, device=o_base.device)
        if d_ob.numel():
            combine_bwd_kernel[(triton.cdiv(Tp, BTT), B * H)](
                do, lam0, o_base, d_lam0, d_ob, d_terms, ctx.scale, T, Tp, do.stride(0), do.stride(1), do.stride(2),
                H=H, V=V, BTT=BTT, BV=BV)
        return d_lam0, d_ob, d_terms, None, None
