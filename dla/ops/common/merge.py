"""Merge choice and readout weights: the two discrete rules every implementation shares."""

from __future__ import annotations

import torch

from dla.ops.common.state import fenwick_level


def pick_merge(info: torch.Tensor, counts: torch.Tensor, num_slots: torch.Tensor) -> torch.Tensor:
    """Index ``i`` of the adjacent pair ``(i, i+1)`` of lowest information density (DESIGN.md section 3, step 5).

    Args:
        info: ``[..., M]`` information sums ``I_j`` of chronological slots (entries past ``num_slots`` ignored).
        counts: ``[..., M]`` token counts ``n_j``.
        num_slots: ``[...]`` live slots ``m >= 2``.
    Returns:
        ``[...]`` int64, the smallest ``i`` among the pairs of minimal ``(I_i + I_{i+1}) / (n_i + n_{i+1})``
        (lexicographic (density, index): an arg-min that does not rely on the backend's tie order).
    """
    dens = (info[..., :-1] + info[..., 1:]) / (counts[..., :-1] + counts[..., 1:]).to(info.dtype)
    pair = torch.arange(dens.shape[-1], device=info.device)
    valid = pair < (num_slots[..., None] - 1)
    dens = torch.where(valid, dens, torch.full_like(dens, float("inf")))
    lowest = dens.min(-1, keepdim=True).values
    first = torch.where(valid & (dens == lowest), pair, torch.full_like(pair, dens.shape[-1]))
    return first.min(-1).values


def lam_indices(policy: str, counts_newest_first: torch.Tensor, capacity: int) -> torch.Tensor:
    """Which ``lam`` entry weighs each live slot, listed by recency rank (0 = open slot).

    ``dla``/``fixed``: the rank. ``dla_unbounded``: ``min(rank, capacity - 1)``. ``fenwick``: the level
    (0 for the open slot, ``bit_length(n)`` for a closed slot of ``n`` tokens). ``single``: 0.
    """
    rank = torch.arange(counts_newest_first.shape[-1], device=counts_newest_first.device)
    rank = rank.expand(counts_newest_first.shape)
    if policy == "fenwick":
        return torch.where(rank == 0, torch.zeros_like(rank), fenwick_level(counts_newest_first))
    if policy == "dla_unbounded":
        return rank.clamp_max(capacity - 1)
    if policy == "single":
        return torch.zeros_like(rank)
    return rank
