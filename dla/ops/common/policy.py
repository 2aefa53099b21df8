"""The memory policy as one value: which segmentation the op runs (``docs/design.md`` section 3.1).

Every implementation (slot form, masked form, chunked form, kernels, decode step) takes a :class:`Policy`; the
public functions also accept its five fields as keyword arguments and build the value once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from dla.ops.common.score import SCORES

POLICIES = ("single", "fenwick", "fixed", "dla_unbounded", "dla")
"""Memory policies, one op for all (``docs/design.md`` section 3.1):

- ``single``: one slot, no boundaries: the backbone (Mamba-2, Gated DeltaNet).
- ``fenwick``: a slot per token, binary-carry merges: Log-Linear Attention, ``lam`` indexed by level.
- ``fixed``: a boundary every ``block_size`` tokens, DLA's merge rule: the capacity bound alone.
- ``dla_unbounded``: DLA's boundaries, no merges: information-aware boundaries alone.
- ``dla``: DLA.
"""

TAU = 0.6
"""The paper's boundary threshold (the default of every entry point)."""
CAPACITY = 30
"""The paper's slot capacity ``C`` (the default of every entry point)."""


def num_levels(num_tokens: int) -> int:
    """Levels Log-Linear attention needs for ``num_tokens`` positions: ``ceil(log2 T) + 1`` (1 for T <= 1)."""
    return max(int(num_tokens) - 1, 0).bit_length() + 1


def fenwick_level(counts: torch.Tensor) -> torch.Tensor:
    """Level of a closed Fenwick slot holding ``counts`` tokens: ``bit_length(n)`` (1 token -> level 1)."""
    return torch.frexp(counts.to(torch.float64))[1].to(torch.int64)


@dataclass(frozen=True)
class Policy:
    """Which slots the state machine keeps: the segmentation rule and its parameters, validated once.

    Attributes:
        kind: one of :data:`POLICIES`.
        tau: boundary threshold, ``I_t >= tau`` opens a slot (``dla``, ``dla_unbounded``); finite, ``>= 0``
            (0: every token opens one).
        capacity: ``C >= 1``, the most live slots (``dla``, ``fixed``) and the number of ``lam`` entries
            (``dla``, ``fixed``, ``dla_unbounded``); ``single`` and ``fenwick`` ignore it.
        block_size: the ``fixed`` policy opens a slot at every absolute position divisible by it.
        score: the information score, a name in :data:`dla.ops.common.score.SCORES` (``drift``: the paper's).

    Example:
        >>> Policy("dla", tau=0.6, capacity=30).lam_entries(4096)
        30
        >>> Policy("fenwick").lam_entries(4096)
        13
    """

    kind: str = "dla"
    tau: float = TAU
    capacity: int = CAPACITY
    block_size: int = 64
    score: str = "drift"

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ValueError(f"policy: unknown {self.kind!r}; allowed: {', '.join(POLICIES)}")
        if self.score not in SCORES:
            raise ValueError(f"score: unknown {self.score!r}; allowed: {', '.join(SCORES)}")
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 1:
            raise ValueError(f"capacity: expected an int >= 1, got {self.capacity!r}")
        tau = self.tau
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau: expected a finite number >= 0 (0 opens a slot at every token), got {tau!r}")
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"block_size: expected an int >= 1, got {bs!r}")

    @classmethod
    def of(cls, policy="dla", *, tau: Optional[float] = None, capacity: Optional[int] = None,
           block_size: Optional[int] = None, score: Optional[str] = None) -> "Policy":
        """The policy of a public call: ``policy`` is a :class:`Policy` (then the other arguments must be
        ``None``) or a kind name completed by the keyword arguments (``None``: the defaults)."""
        loose = dict(tau=tau, capacity=capacity, block_size=block_size, score=score)
        if isinstance(policy, Policy):
            given = [name for name, value in loose.items() if value is not None]
            if given:
                raise ValueError(f"{given[0]}: given both as an argument and in policy={policy}; pass one")
            return policy
        if not isinstance(policy, str):
            raise ValueError(f"policy: expected a Policy or one of {', '.join(POLICIES)}, got {policy!r}")
        return cls(policy, **{name: value for name, value in loose.items() if value is not None})

    @property
    def merges(self) -> bool:
        """Whether a full cache merges a pair before a new slot opens (``dla``, ``fixed``; ``fenwick`` carries)."""
        return self.kind in ("dla", "fixed")

    @property
    def data_dependent(self) -> bool:
        """Whether the boundaries depend on the inputs (``single`` and ``fenwick`` follow the positions alone)."""
        return self.kind not in ("single", "fenwick")

    def lam_entries(self, num_tokens: int) -> int:
        """``R``, the entries of ``lam`` per token after ``num_tokens`` tokens: 1 (``single``), the Fenwick levels
        (``fenwick``), ``capacity`` (the others)."""
        return {"single": 1, "fenwick": num_levels(num_tokens)}.get(self.kind, self.capacity)

    def state_width(self, levels: int, max_live: int) -> int:
        """Slot dimension of a final :class:`~dla.ops.DLAState`: ``capacity`` (``dla``, ``fixed``), the ``lam``
        levels (``fenwick``), 1 (``single``), the most live slots of any sequence (``dla_unbounded``)."""
        if self.kind == "dla_unbounded":
            return max(max_live, 1)
        return max(max_live, self.capacity if self.merges else levels)

    def slot_bound(self, levels: int, initial_slots: int, num_tokens: int) -> int:
        """Most slots a cache can hold while ``num_tokens`` tokens run after ``initial_slots`` (the scans' table
        width): 1, ``levels + 1``, ``capacity``, or every slot for ``dla_unbounded``."""
        return {"single": 1, "fenwick": levels + 1,
                "dla_unbounded": initial_slots + num_tokens + 1}.get(self.kind, self.capacity)

    def wants_boundary(self, info: torch.Tensor, position) -> torch.Tensor:
        """Whether a token asks for a new slot (the cache being non-empty): ``docs/design.md`` section 3, step 5.

        ``dla``/``dla_unbounded``: ``I_t >= tau`` (compared in the computation dtype, as every implementation
        does); ``fixed``: the absolute ``position`` is a multiple of ``block_size``; ``fenwick``: always;
        ``single``: never. With ``capacity == 1``, ``dla`` and ``fixed`` never open a slot (the slot absorbs the
        token).
        """
        if self.merges and self.capacity == 1:
            return torch.zeros_like(info, dtype=torch.bool)
        if self.kind in ("dla", "dla_unbounded"):
            return info >= self.tau
        if self.kind == "fixed":
            return torch.as_tensor(position, device=info.device) % self.block_size == 0
        return torch.full_like(info, self.kind == "fenwick", dtype=torch.bool)

    def lam_index(self, rank: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Which ``lam`` entry weighs a live slot of recency ``rank`` (0 = open slot) holding ``counts`` tokens.

        ``dla``/``fixed``: the rank. ``dla_unbounded``: ``min(rank, capacity - 1)``. ``fenwick``: the level (0 for
        the open slot, ``bit_length(n)`` for a closed slot of ``n`` tokens). ``single``: 0.
        """
        if self.kind == "fenwick":
            return torch.where(rank == 0, torch.zeros_like(rank), fenwick_level(counts))
        if self.kind == "dla_unbounded":
            return rank.clamp_max(self.capacity - 1)
        if self.kind == "single":
            return torch.zeros_like(rank)
        return rank

    def lam_indices(self, counts_newest_first: torch.Tensor) -> torch.Tensor:
        """:meth:`lam_index` of slots listed newest first (ranks ``0, 1, ...`` along the last dimension)."""
        rank = torch.arange(counts_newest_first.shape[-1], device=counts_newest_first.device)
        return self.lam_index(rank.expand(counts_newest_first.shape), counts_newest_first)
