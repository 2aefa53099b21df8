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


def wants_boundary(policy: str, info: torch.Tensor, tau: float, position: torch.Tensor, block_size: int,
                   capacity: int) -> torch.Tensor:
    """Whether a token asks for a new slot (the cache being non-empty): DESIGN.md section 3, step 5, per policy.

    ``dla``/``dla_unbounded``: ``I_t >= tau`` (compared in the computation dtype, as every implementation does);
    ``fixed``: the absolute ``position`` is a multiple of ``block_size``; ``fenwick``: always; ``single``: never.
    With ``capacity == 1``, ``dla`` and ``fixed`` never open a slot (the slot absorbs the token).
    """
    if policy in ("dla", "fixed") and capacity == 1:
        return torch.zeros_like(info, dtype=torch.bool)
    if policy in ("dla", "dla_unbounded"):
        return info >= tau
    if policy == "fixed":
        return torch.as_tensor(position, device=info.device) % block_size == 0
    return torch.full_like(info, policy == "fenwick", dtype=torch.bool)


def lam_index(policy: str, rank: torch.Tensor, counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Which ``lam`` entry weighs a live slot of recency ``rank`` (0 = open slot) holding ``counts`` tokens.

    ``dla``/``fixed``: the rank. ``dla_unbounded``: ``min(rank, capacity - 1)``. ``fenwick``: the level
    (0 for the open slot, ``bit_length(n)`` for a closed slot of ``n`` tokens). ``single``: 0.
    """
    if policy == "fenwick":
        return torch.where(rank == 0, torch.zeros_like(rank), fenwick_level(counts))
    if policy == "dla_unbounded":
        return rank.clamp_max(capacity - 1)
    if policy == "single":
        return torch.zeros_like(rank)
    return rank


def lam_indices(policy: str, counts_newest_first: torch.Tensor, capacity: int) -> torch.Tensor:
    """:func:`lam_index` of slots listed newest first (ranks ``0, 1, ...`` along the last dimension)."""
    rank = torch.arange(counts_newest_first.shape[-1], device=counts_newest_first.device)
    return lam_index(policy, rank.expand(counts_newest_first.shape), counts_newest_first, capacity)
