"""Packed sequences (``cu_seqlens``, the FlashAttention convention) as the rows of right-padded batches.

A batch of one holds ``N`` sequences back to back; ``cu_seqlens [N + 1]`` are their offsets. The chunked form
runs them as the rows of padded batches grouped by length (:func:`length_buckets`: a row costs its bucket's
longest length, not the longest sequence's) and scatters the rows back to the packed order.
"""

from __future__ import annotations

from typing import List

import torch


def check_cu_seqlens(cu_seqlens, T: int, batch: int) -> List[int]:
    """The offsets as a list (one host copy); ``ValueError`` naming ``cu_seqlens`` unless they rise strictly from
    0 to ``T`` in a batch of one."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or \
            cu_seqlens.is_floating_point():
        raise ValueError("cu_seqlens: expected a 1-D integer tensor [N + 1] of cumulative offsets")
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need a batch of 1, got batch {batch}")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != T or any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens: must rise strictly from 0 to T={T}, got {bounds}")
    return bounds


def length_buckets(lens: List[int], chunk_size: int) -> List[List[int]]:
    """Sequences grouped by their chunk count rounded up to a power of two (so padding at most doubles a row's
    work), shortest bucket first, packed order inside a bucket."""
    groups = {}
    for n, length in enumerate(lens):
        chunks = -(-length // chunk_size)
        groups.setdefault(1 << (chunks - 1).bit_length(), []).append(n)
    return [groups[key] for key in sorted(groups)]


class PaddedRows:
    """The packed sequences ``idx`` (of offsets ``bounds``) as the rows of one right-padded batch.

    Attributes:
        lengths: ``[N]`` the rows' lengths; valid: ``[N, Tmax]`` which entries are real tokens;
        positions: ``[tokens]`` the packed position of each real entry, row-major.
    """

    def __init__(self, bounds: List[int], idx: List[int], device):
        self.lengths = torch.tensor([bounds[n + 1] - bounds[n] for n in idx], device=device)
        first = torch.tensor([bounds[n] for n in idx], device=device)
        t = torch.arange(int(self.lengths.max()), device=device)
        self.valid = t[None] < self.lengths[:, None]  # [N, Tmax]
        self._pos = torch.where(self.valid, first[:, None] + t[None], 0)
        self.positions = self._pos[self.valid]

    def rows(self, x):
        """``[1, T, ...] -> [N, Tmax, ...]``, zeros in the padding (which writes nothing and does not decay)."""
        if x is None:
            return None
        y = x[0][self._pos]
        return y * self.valid.view(*self.valid.shape, *([1] * (y.dim() - 2))).to(y.dtype)
