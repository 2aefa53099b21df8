"""The slot cache and the segmentation record shared by every implementation (DESIGN.md sections 3 and 6)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

POLICIES = ("single", "fenwick", "fixed", "dla_unbounded", "dla")
"""Memory policies (DESIGN.md section 3.1): one op, several segmentations."""

SLOT_TRANSITIONS = ("additive", "per_slot")


@dataclass
class DLAState:
    """The slot cache of every (batch, head) after the last token; what a decode step continues from.

    Slots are chronological: slot 0 is the oldest, slot ``num_slots - 1`` the open one. Entries past
    ``num_slots`` are zero.

    Attributes:
        slots: ``[B, H, C, K, V]`` float32/float64 slot states ``S_j`` (decayed up to the last token).
        counts: ``[B, H, C]`` int64 number of tokens ``n_j`` summarised by each slot.
        info: ``[B, H, C]`` information sums ``I_j`` (slot 0 of a sequence starts with 0).
        num_slots: ``[B, H]`` int64 live slots ``m``. For ``dla_unbounded``, ``C`` is the largest ``m``.
        open_norm: ``[B, H]`` ``||S_open||_F^2`` as the chunked scan carries it (a running recursion), or
            ``None``. A continuation uses it instead of recomputing the norm from ``slots``, so that a chunked
            prefill followed by decode steps takes exactly the decisions of one pass.

    The backbone state is ``slots.sum(2)`` for every policy and slot transition. The number of tokens seen
    is ``counts.sum(-1)``; the ``fenwick`` policy reads its levels from the counts.
    """

    slots: torch.Tensor
    counts: torch.Tensor
    info: torch.Tensor
    num_slots: torch.Tensor
    open_norm: Optional[torch.Tensor] = None

    @property
    def backbone_state(self) -> torch.Tensor:
        """``[B, H, K, V]``: the sum of the live slots, i.e. the plain linear-attention state."""
        return self.slots.sum(2)

    def to(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> "DLAState":
        """Move to ``device``; cast the float fields (slots, info) to ``dtype``."""
        norm = None if self.open_norm is None else self.open_norm.to(device=device, dtype=dtype)
        return DLAState(self.slots.to(device=device, dtype=dtype), self.counts.to(device=device),
                        self.info.to(device=device, dtype=dtype), self.num_slots.to(device=device), norm)

    def clone(self) -> "DLAState":
        return DLAState(*(None if getattr(self, f.name) is None else getattr(self, f.name).clone()
                          for f in fields(self)))


@dataclass
class Segmentation:
    """What the state machine decided, per token and head, seq-first like the inputs.

    Attributes:
        score: ``[B, T, H]`` information score ``I_t`` of each token against the open slot (0 where the cache
            was empty).
        boundary: ``[B, T, H]`` bool, the token opened a new slot.
        num_slots: ``[B, T, H]`` int64 live slots after the token.
        merged: ``[B, T, H]`` int64 index ``i`` of the merged pair ``(i, i+1)`` before the token's slot was
            appended, ``-1`` when nothing merged (for ``fenwick``, the lowest index of the carry chain).
        starts: ``[B, T, H, R]`` int64 start position of the live slot of recency rank ``r`` (0 = open slot)
            after the token. Slots from an initial state start at negative positions ``j - m0`` (``j`` their
            index, ``m0`` their number). ``-(2**62)`` where unused.
        lam_index: ``[B, T, H, R]`` int64 which entry of ``lam`` weighs the slot of rank ``r``, ``-1`` where
            unused. ``R`` is ``capacity`` (levels for ``fenwick``, 1 for ``single``); for ``dla_unbounded`` only
            the ``capacity`` newest slots are listed: every older one is weighed by ``lam[..., capacity-1]`` too.
    """

    score: torch.Tensor
    boundary: torch.Tensor
    num_slots: torch.Tensor
    merged: torch.Tensor
    starts: torch.Tensor
    lam_index: torch.Tensor


UNUSED_START = -(2 ** 62)


def num_levels(num_tokens: int) -> int:
    """Levels Log-Linear attention needs for ``num_tokens`` positions: ``ceil(log2 T) + 1`` (1 for T <= 1)."""
    return max(int(num_tokens - 1).bit_length(), 0) + 1


def fenwick_level(counts: torch.Tensor) -> torch.Tensor:
    """Level of a closed Fenwick slot holding ``counts`` tokens: ``bit_length(n)`` (1 token -> level 1)."""
    return torch.frexp(counts.to(torch.float64))[1].to(torch.int64)


def state_width(policy: str, capacity: int, levels: int, max_live: int) -> int:
    """Slot dimension of a final :class:`DLAState`: ``capacity`` (``dla``, ``fixed``), the ``lam`` levels
    (``fenwick``), 1 (``single``), the most live slots of any sequence (``dla_unbounded``)."""
    if policy == "dla_unbounded":
        return max(max_live, 1)
    return max(max_live, capacity if policy in ("dla", "fixed") else levels)
