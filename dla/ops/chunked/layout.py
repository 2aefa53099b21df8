"""Layouts the chunked form computes in: head-major copies of the caller's tensors, chunk-local log-decay sums.

Every stage works on ``[B, H, Tp, D]`` tensors (``Tp`` the length padded to whole chunks; padded tokens write
nothing, ``k = 0``, and do not decay, ``g = 0``). The caller's tensors are seq-first ``[B, T, G, D]`` with ``G``
query/key groups shared by ``H / G`` heads each, often in bfloat16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def heads_copy(x: torch.Tensor, H: int, pad: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, G, D] -> [B, H, T + pad, D]`` contiguous in ``dtype``: group ``h // (H / G)`` for head ``h``, zero
    padding; one pass over the output (a repeat, a transpose, a pad and a contiguous copy would each make one)."""
    B, T, G, D = x.shape
    out = torch.empty(B, H, T + pad, D, dtype=dtype, device=x.device)
    if pad:
        out[:, :, T:].zero_()
    out[:, :, :T].view(B, G, H // G, T, D).copy_(x.transpose(1, 2)[:, :, None])
    return out


def heads_grad(grad: torch.Tensor, G: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """The gradient of :func:`heads_copy` for a caller's tensor of ``G`` groups, ``T`` tokens and ``dtype``: a sum
    over each group's heads in ``grad``'s dtype (float32), then one cast. ``grad [B, H, Tp, D]``."""
    g = grad[:, :, :T].unflatten(1, (G, -1))  # [B, G, H / G, T, D]
    g = g.sum(2) if g.shape[2] > 1 else g[:, :, 0]
    return g.transpose(1, 2).to(dtype)


def grouped_copy(x: torch.Tensor, Tp: int) -> torch.Tensor:
    """The caller's ``[B, T, G, K]`` keys or queries as ``[B, G, Tp, K]`` (zero rows past ``T``), in their dtype:
    what the kernels read once per group of heads instead of ``H / G`` per-head copies."""
    return F.pad(x.transpose(1, 2), (0, 0, 0, Tp - x.shape[1])).contiguous()


def block_segsum(tot: torch.Tensor) -> torch.Tensor:
    """``[..., NT] -> [..., NT + 1, NT]``: ``out[i, c] = sum_{c <= c' < i} tot[c']`` by a masked cumsum."""
    NT = tot.shape[-1]
    keep = torch.ones(NT + 1, NT, dtype=torch.bool, device=tot.device).tril(-1)  # c < i
    x = tot[..., None, :].expand(*tot.shape[:-1], NT + 1, NT).masked_fill(~keep, 0)
    return x.flip(-1).cumsum(-1).flip(-1)  # sum over c' >= c (and < i by the mask)


def chunk_segsum(gl: torch.Tensor) -> torch.Tensor:
    """``seg [B, H, NT + 1, NT + 1]``: ``seg[i, c]`` the log-decay of chunks ``c .. i - 1`` (0 for ``c >= i``),
    from ``gl [B, H, NT, BT]``. Differentiable."""
    return F.pad(block_segsum(gl[..., -1]), (0, 1))
