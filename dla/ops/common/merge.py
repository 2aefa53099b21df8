"""The merge choice: the one discrete rule of the state machine that is not a property of the policy."""

from __future__ import annotations

import torch


def pick_merge(info: torch.Tensor, counts: torch.Tensor, num_slots: torch.Tensor) -> torch.Tensor:
    """Index ``i`` of the adjacent pair ``(i, i+1)`` of lowest information density (``docs/design.md`` section 3,
    step 5).

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
