"""The layout stages as Triton kernels, bandwidth-bound passes that read the caller's tensors in their own layout
and dtype: the head-major copies (:func:`heads_copy`), the ``lam`` weights (:func:`lam_fwd`, :func:`lam_bwd`) and
the output (:func:`combine_fwd`, :func:`combine_bwd`). Each computes what its PyTorch counterpart in
:mod:`dla.ops.chunked` computes, bitwise (``lam_bwd`` up to the order of a sum where several ranks read one
entry), in one pass where PyTorch takes a cast, a transpose, a pad and a copy, each a pass of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dla.ops.utils.index import compact_index


@triton.jit(do_not_specialize=["T", "Tp"])
def heads_copy_kernel(x, out, T, Tp, sxb, sxt, sxg, H: tl.constexpr, HG: tl.constexpr, D: tl.constexpr,
                      BTT: tl.constexpr, BD: tl.constexpr):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BTT + tl.arange(0, BTT)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_x = tl.load(x + i_b * sxb + (i_h // HG) * sxg + o_t[:, None].to(tl.int64) * sxt + o_d[None, :],
                  mask=(o_t < T)[:, None] & m_d[None, :], other=0)
    tl.store(out + (i_bh * Tp + o_t[:, None]) * D + o_d[None, :], b_x.to(out.dtype.element_ty),
             mask=(o_t < Tp)[:, None] & m_d[None, :])


def heads_copy(x: torch.Tensor, H: int, pad: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, G, D] -> [B, H, T + pad, D]`` contiguous in ``dtype``: group ``h // (H / G)`` for head ``h``, zeros
    in the ``pad`` rows. ``x``'s last dimension must be contiguous."""
    B, T, G, D = x.shape
    if H % G:
        raise ValueError(f"x: {G} groups do not divide {H} heads")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(B, H, T + pad, D, dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    BD = triton.next_power_of_2(D)
    BTT = max(1, min(64, 8192 // BD))
    heads_copy_kernel[(triton.cdiv(T + pad, BTT), B * H)](
        x, out, T, T + pad, x.stride(0), x.stride(1), x.stride(2), H=H, HG=H // G, D=D, BTT=BTT, BD=BD, num_warps=4)
    return out


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


@triton.jit
def rows(lam0, T, H: tl.constexpr, BTT: tl.constexpr):
    """This program's (batch x head, batch, head), token rows, their mask and ``lam0``."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BTT + tl.arange(0, BTT)
    m_t = o_t < T
    return i_bh, i_bh // H, i_bh % H, o_t, m_t, tl.load(lam0 + i_bh * T + o_t, mask=m_t, other=0.)


@triton.jit(do_not_specialize=["T", "Tp"])
def combine_fwd_kernel(lam0, ob, terms, out, scale, T, Tp, st_b, st_h, st_t, so_b, so_t, so_h,
                       H: tl.constexpr, V: tl.constexpr, BTT: tl.constexpr, BV: tl.constexpr,
                       HAS_TERMS: tl.constexpr):
    i_bh, i_b, i_h, o_t, m_t, b_l = rows(lam0, T, H, BTT)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        b_ob = tl.load(ob + (i_bh * Tp + o_t[:, None]) * V + o_v[None, :], mask=m, other=0.)
        if HAS_TERMS:
            b_x = tl.load(terms + i_b * st_b + i_h * st_h + o_t[:, None].to(tl.int64) * st_t + o_v[None, :],
                          mask=m, other=0.)
            b_o = (b_l[:, None] * b_ob + b_x) * scale
        else:
            b_o = (b_l[:, None] * b_ob) * scale
        tl.store(out + i_b * so_b + i_h * so_h + o_t[:, None].to(tl.int64) * so_t + o_v[None, :],
                 b_o.to(out.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["T", "Tp"])
def combine_bwd_kernel(do, lam0, ob, d_lam0, d_ob, d_terms, scale, T, Tp, sd_b, sd_t, sd_h,
                       H: tl.constexpr, V: tl.constexpr, BTT: tl.constexpr, BV: tl.constexpr):
    i_bh, i_b, i_h, o_t, m_t, b_l = rows(lam0, T, H, BTT)
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


def lam_fwd(lam: torch.Tensor, lam_index: torch.Tensor, dtype: torch.dtype):
    """``lam0 [B, H, T]``, ``dlam [B, H, T, R - 1]`` (float32) and the compact record, as
    :func:`dla.ops.chunked.readout.lam_fwd` (``dtype`` must be float32)."""
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
    return lam0, dlam, idx


def lam_bwd(index, g0, gd, lam_shape, lam_dtype: torch.dtype) -> torch.Tensor:
    """Gradient of :func:`lam_fwd` for ``lam``, as :func:`dla.ops.chunked.readout.lam_bwd`."""
    B, T, H, RL = lam_shape
    R = index.shape[-1]
    out = torch.empty(B, T, H, RL, dtype=lam_dtype, device=index.device)
    g0 = torch.zeros(B, H, T, dtype=torch.float32, device=index.device) if g0 is None else g0.float().contiguous()
    gd = torch.zeros(B, H, T, max(R - 1, 0), dtype=torch.float32, device=index.device) if gd is None else \
        gd.float().contiguous()
    BT, BR = 64, triton.next_power_of_2(max(R, RL, 2))
    if out.numel():
        lam_bwd_kernel[(triton.cdiv(T, BT), B * H)](index, g0, gd, out, T, out.stride(0), out.stride(1),
                                                    out.stride(2), H=H, R=R, RL=RL, BT=BT, BR=BR)
    return out


def combine_fwd(lam0, o_base, terms, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``o [B, T, H, V]`` in ``dtype`` = ``scale * (lam0 * o_base + terms)``, as
    :func:`dla.ops.chunked.readout.combine_fwd` (float32 inputs; ``terms`` any strides with a contiguous last
    dimension, or ``None``)."""
    B, H, Tp, V = o_base.shape
    T = lam0.shape[-1]
    lam0, o_base = lam0.contiguous(), o_base.contiguous()
    if terms is not None and terms.stride(-1) != 1:
        terms = terms.contiguous()
    out = torch.empty(B, T, H, V, dtype=dtype, device=o_base.device)
    x = terms if terms is not None else o_base  # not read without terms
    if out.numel():
        combine_fwd_kernel[(triton.cdiv(T, COMBINE_ROWS), B * H)](
            lam0, o_base, x, out, scale, T, Tp, x.stride(0), x.stride(1), x.stride(2),
            out.stride(0), out.stride(1), out.stride(2), H=H, V=V, BTT=COMBINE_ROWS,
            BV=min(triton.next_power_of_2(V), 64), HAS_TERMS=terms is not None)
    return out


def combine_bwd(do, lam0, o_base, scale: float, has_terms: bool):
    """Gradients of :func:`combine_fwd` for ``lam0, o_base, terms`` (``o_base``'s padding rows get zeros)."""
    B, H, Tp, V = o_base.shape
    T = lam0.shape[-1]
    if do.stride(-1) != 1:
        do = do.contiguous()
    d_lam0 = torch.empty_like(lam0)
    d_ob = torch.empty_like(o_base)
    d_terms = torch.empty(B, H, T, V, dtype=torch.float32, device=o_base.device)
    if d_ob.numel():
        combine_bwd_kernel[(triton.cdiv(Tp, COMBINE_ROWS), B * H)](
            do, lam0, o_base, d_lam0, d_ob, d_terms, scale, T, Tp, do.stride(0), do.stride(1), do.stride(2),
            H=H, V=V, BTT=COMBINE_ROWS, BV=min(triton.next_power_of_2(V), 64))
    return d_lam0, d_ob, d_terms if has_terms else None


COMBINE_ROWS = 64
"""Token rows per program of the combine kernels."""
