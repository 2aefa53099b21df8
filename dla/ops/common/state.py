"""The slot cache and the segmentation record shared by every implementation (``docs/design.md`` sections 3, 6)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from dla.ops.common.policy import Policy

UNUSED_START = -(2 ** 62)
"""The start position recorded for an unused rank of the live-slot record."""


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
        policy: the :class:`~dla.ops.Policy` that built the state (set by the ops; ``None`` for a state built by
            hand). A continuation with another policy kind or capacity is refused.

    The backbone state is ``slots.sum(2)`` for every policy and slot transition. The number of tokens seen
    is ``counts.sum(-1)``; the ``fenwick`` policy reads its levels from the counts.
    """

    slots: torch.Tensor
    counts: torch.Tensor
    info: torch.Tensor
    num_slots: torch.Tensor
    open_norm: Optional[torch.Tensor] = None
    policy: Optional[Policy] = None

    @property
    def backbone_state(self) -> torch.Tensor:
        """``[B, H, K, V]``: the sum of the live slots, i.e. the plain linear-attention state."""
        return self.slots.sum(2)

    def to(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> "DLAState":
        """Move to ``device``; cast the float fields (slots, info, open_norm) to ``dtype``."""
        norm = None if self.open_norm is None else self.open_norm.to(device=device, dtype=dtype)
        return DLAState(self.slots.to(device=device, dtype=dtype), self.counts.to(device=device),
                        self.info.to(device=device, dtype=dtype), self.num_slots.to(device=device), norm,
                        self.policy)

    def clone(self) -> "DLAState":
        return dataclasses.replace(self, **{name: getattr(self, name).clone() for name in TENSOR_FIELDS
                                            if getattr(self, name) is not None})

    def check_continues(self, policy: Policy, B: int, H: int, K: int, V: int, name: str = "initial_state") -> None:
        """Raise ``ValueError`` (naming ``name``) unless this state can continue under ``policy`` for inputs of
        ``B`` rows, ``H`` heads and ``K x V`` states. Shapes and the recorded policy only: no host sync."""
        s = self.slots
        if not isinstance(s, torch.Tensor) or s.dim() != 5 or tuple(s.shape[:2]) != (B, H) or \
                tuple(s.shape[3:]) != (K, V):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"{name}.slots: expected [B={B}, H={H}, C, K={K}, V={V}], got {shape}")
        if tuple(self.counts.shape) != tuple(s.shape[:3]) or tuple(self.info.shape) != tuple(s.shape[:3]):
            raise ValueError(f"{name}: counts and info must be [B, H, C] like slots[..., 0, 0]")
        if tuple(self.num_slots.shape) != (B, H):
            raise ValueError(f"{name}.num_slots: expected [{B}, {H}], got {tuple(self.num_slots.shape)}")
        if self.open_norm is not None and tuple(self.open_norm.shape) != (B, H):
            raise ValueError(f"{name}.open_norm: expected [{B}, {H}], got {tuple(self.open_norm.shape)}")
        rec = self.policy
        if rec is not None and (rec.kind != policy.kind or (policy.merges and rec.capacity != policy.capacity)):
            raise ValueError(f"{name}: built by policy {rec.kind!r} with capacity={rec.capacity}, continued with "
                             f"{policy.kind!r} and capacity={policy.capacity}; pass the same policy and capacity")
        if policy.merges and s.shape[2] > policy.capacity:
            raise ValueError(f"{name}: holds {s.shape[2]} slots, more than capacity={policy.capacity} (a state "
                             f"from a call with a larger capacity?)")
        if policy.kind == "single" and s.shape[2] > 1:
            raise ValueError(f"{name}: policy 'single' continues from one slot, got {s.shape[2]}")


TENSOR_FIELDS = ("slots", "counts", "info", "num_slots", "open_norm")


def empty_state(B: int, H: int, K: int, V: int, width: int, dtype=torch.float32, device=None,
                policy: Optional[Policy] = None) -> DLAState:
    """An empty slot cache of ``width`` slots (what a sequence starts from; continuing from it equals starting
    afresh)."""
    return DLAState(torch.zeros(B, H, width, K, V, dtype=dtype, device=device),
                    torch.zeros(B, H, width, dtype=torch.int64, device=device),
                    torch.zeros(B, H, width, dtype=dtype, device=device),
                    torch.zeros(B, H, dtype=torch.int64, device=device),
                    torch.zeros(B, H, dtype=dtype, device=device), policy)


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
            index, ``m0`` their number). :data:`UNUSED_START` where unused.
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


def empty_segmentation(B: int, T: int, H: int, R: int, dtype: torch.dtype, device=None) -> Segmentation:
    """A :class:`Segmentation` of ``T`` tokens with nothing decided (score 0, no boundary, unused records)."""
    return Segmentation(
        score=torch.zeros(B, T, H, dtype=dtype, device=device),
        boundary=torch.zeros(B, T, H, dtype=torch.bool, device=device),
        num_slots=torch.zeros(B, T, H, dtype=torch.int64, device=device),
        merged=torch.full((B, T, H), -1, dtype=torch.int64, device=device),
        starts=torch.full((B, T, H, R), UNUSED_START, dtype=torch.int64, device=device),
        lam_index=torch.full((B, T, H, R), -1, dtype=torch.int64, device=device),
    )
