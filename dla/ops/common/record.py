"""What a segmentation scan returns (:class:`ScanResult`) and the slot table it keeps (:class:`SlotTable`), shared
by the PyTorch scan (:mod:`dla.ops.chunked.segmentation`) and the Triton scan (:mod:`dla.ops.triton.segmentation`); and the
records of the data-independent policies, which need no scan (:func:`fixed_schedule`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from dla.ops.common.policy import Policy
from dla.ops.common.state import UNUSED_START, DLAState


@dataclass
class ScanResult:
    """Per-token decisions ``[N, T, ...]`` (``N = B * H``) and the slot bookkeeping after the last token."""

    score: torch.Tensor  # [N, T]
    boundary: torch.Tensor  # [N, T] bool
    num_slots: torch.Tensor  # [N, T]
    merged: torch.Tensor  # [N, T]
    starts: torch.Tensor  # [N, T, R] newest first
    lam_index: torch.Tensor  # [N, T, R]
    pos: torch.Tensor  # [N, M] chronological slot starts after the last token
    counts: torch.Tensor  # [N, M]
    info: torch.Tensor  # [N, M]
    m: torch.Tensor  # [N]
    open_norm: torch.Tensor  # [N] ||S_open||^2 after the last token (the recursion's value)


class SlotTable:
    """Chronological slot bookkeeping (start, count, information sum) of ``N`` independent caches, ``M`` entries
    each; slots of an initial state start at negative positions ``j - m0``."""

    def __init__(self, N: int, M: int, dt: torch.dtype, device, init: Optional[DLAState]):
        self.pos = torch.full((N, M), UNUSED_START, dtype=torch.int64, device=device)
        self.n = torch.zeros(N, M, dtype=torch.int64, device=device)
        self.info = torch.zeros(N, M, dtype=dt, device=device)
        self.m = torch.zeros(N, dtype=torch.int64, device=device)
        if init is not None:
            m0 = init.num_slots.reshape(N).to(device)
            C0 = init.counts.shape[-1]
            j = torch.arange(C0, device=device)
            live = j < m0[:, None]
            self.pos[:, :C0] = torch.where(live, j - m0[:, None], self.pos[:, :C0])
            self.n[:, :C0] = init.counts.reshape(N, C0).to(device) * live
            self.info[:, :C0] = init.info.reshape(N, C0).to(device=device, dtype=dt) * live
            self.m = m0.clone()
        self.rows = torch.arange(N, device=device)

    def last(self, x: torch.Tensor, back: int = 1) -> torch.Tensor:
        return x[self.rows, (self.m - back).clamp_min(0)]

    def merge(self, i: torch.Tensor, mask: torch.Tensor) -> None:
        """Where ``mask``: merge the pair ``(i, i+1)`` (sum counts and information, keep the older start)."""
        M = self.pos.shape[1]
        j = torch.arange(M, device=self.pos.device)
        src = (j + (j > i[:, None]).long()).clamp_max(M - 1)
        top = j[None] >= (self.m[:, None] - 1)  # the slot freed at the end
        nxt = lambda x: torch.gather(x, 1, (i + 1).clamp_max(M - 1)[:, None])  # noqa: E731
        at_i = j[None] == i[:, None]
        new_n = torch.gather(self.n, 1, src) + torch.where(at_i, nxt(self.n), 0)
        new_info = torch.gather(self.info, 1, src) + torch.where(at_i, nxt(self.info), torch.zeros_like(self.info))
        new_pos = torch.gather(self.pos, 1, src)
        new_n, new_info = new_n.masked_fill(top, 0), new_info.masked_fill(top, 0)
        new_pos = new_pos.masked_fill(top, UNUSED_START)
        mk = mask[:, None]
        self.n, self.info = torch.where(mk, new_n, self.n), torch.where(mk, new_info, self.info)
        self.pos = torch.where(mk, new_pos, self.pos)
        self.m = self.m - mask.long()

    def append_or_absorb(self, opened: torch.Tensor, position: int, info: torch.Tensor,
                         active: Optional[torch.Tensor] = None) -> None:
        """Open a slot where ``opened``; elsewhere the open slot absorbs the token (only where ``active``)."""
        at = torch.where(opened, self.m, (self.m - 1).clamp_min(0))
        cur_n, cur_info = self.n[self.rows, at], self.info[self.rows, at]
        add_n, add_info = (1, info) if active is None else (active.long(), torch.where(active, info, 0))
        self.n[self.rows, at] = torch.where(opened, torch.ones_like(cur_n), cur_n + add_n)
        self.info[self.rows, at] = torch.where(opened, info, cur_info + add_info)
        self.pos[self.rows, at] = torch.where(opened, torch.full_like(at, position), self.pos[self.rows, at])
        self.m = self.m + opened.long()

    def newest(self, R: int):
        """Starts and counts of the ``R`` newest slots, newest first (unused entries: UNUSED_START / 0)."""
        r = torch.arange(R, device=self.pos.device)
        idx = (self.m[:, None] - 1 - r).clamp_min(0)
        live = r[None] < self.m[:, None]
        starts = torch.where(live, torch.gather(self.pos, 1, idx), torch.full_like(idx, UNUSED_START))
        counts = torch.where(live, torch.gather(self.n, 1, idx), torch.zeros_like(idx))
        return starts, counts, live


def open_slot_start(init: Optional[DLAState], N: int, K: int, V: int, dt: torch.dtype, device, table: SlotTable):
    """The scans' carry at the first token: how many tokens each cache has seen, the open slot's state ``O [N, K, V]``
    and its norm^2 ``x [N]`` (``open_norm`` where the state records it: the recursion's value, as one pass has it)."""
    if init is None:
        return (torch.zeros(N, dtype=torch.int64, device=device), torch.zeros(N, K, V, dtype=dt, device=device),
                torch.zeros(N, dtype=dt, device=device))
    seen = init.counts.reshape(N, -1).sum(-1).to(device)
    O = init.slots.reshape(N, -1, K, V).to(device, dt)[table.rows, (table.m - 1).clamp_min(0)]
    O = O * (table.m > 0)[:, None, None]
    x = (O * O).sum((-1, -2))
    if init.open_norm is not None:
        x = init.open_norm.reshape(N).to(device, dt)
    return seen, O, x


def fixed_schedule(policy: Policy, T: int, R: int, device=None):
    """Live-slot records of the data-independent policies from a fresh cache, without a scan.

    ``single`` keeps one slot from token 0. ``fenwick`` opens a slot at every token after merging the two newest
    slots while their counts are equal (a binary counter): after token ``t`` the open slot starts at ``t`` and the
    closed ones hold the set bits of ``t``, lowest (newest) first, the slot of bit ``b`` starting at ``t`` with bits
    ``0..b`` cleared, holding ``2^b`` tokens (its ``lam`` entry follows from the count, as in the scan). Equal to the
    scans' ``starts`` and ``lam_index`` for every ``k, u, g, tau``, with no initial state.

    Returns:
        ``starts, lam_index``: ``[T, R]`` int64, newest first, unused entries ``UNUSED_START`` / ``-1``.
    """
    if policy.data_dependent:
        raise ValueError(f"policy: fixed_schedule covers 'single' and 'fenwick', got {policy.kind!r}")
    t = torch.arange(T, device=device)
    starts = torch.full((T, R), UNUSED_START, dtype=torch.int64, device=device)
    counts = torch.zeros(T, R, dtype=torch.int64, device=device)
    starts[:, 0], counts[:, 0] = (0, t + 1) if policy.kind == "single" else (t, 1)  # the open slot
    if policy.kind == "fenwick":
        b = torch.arange(max(int(T - 1).bit_length(), 1), device=device)
        has = (t[:, None] >> b) & 1 == 1  # [T, bits]
        rank = has.long().cumsum(-1)  # 1 for the lowest set bit (the newest closed slot)
        rows, cols = (has & (rank < R)).nonzero(as_tuple=True)
        starts[rows, rank[rows, cols]] = t[rows] & ~((1 << (cols + 1)) - 1)
        counts[rows, rank[rows, cols]] = 1 << cols
    return starts, torch.where(counts > 0, policy.lam_indices(counts), -1)
