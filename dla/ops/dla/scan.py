"""The segmentation scan of the chunked form (DESIGN.md section 4, step 2), vectorised over batch and heads.

Sequential over chunks; inside a chunk the open slot's three scalars come from one mat-vec against the open
slot's state at the chunk start plus Gram terms of the chunk, and a scalar loop decides boundaries and merges.
Runs without gradient: boundary decisions are discrete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from dla.ops.common.merge import lam_indices, pick_merge, wants_boundary
from dla.ops.common.score import SCORES
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


class _Slots:
    """Chronological slot bookkeeping (start, count, information sum) of ``N`` independent caches."""

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


def dla_scan(k: torch.Tensor, u: torch.Tensor, g: torch.Tensor, T: int, *, chunk_size: int, policy: str, tau: float,
             capacity: int, block_size: int, score: str, R: int, initial_state: Optional[DLAState],
             lengths: Optional[torch.Tensor] = None) -> ScanResult:
    """Decide boundaries and merges for ``N`` sequences.

    Args:
        k: ``[N, Tp, K]`` keys (heads expanded), ``Tp`` a multiple of ``chunk_size`` (zero padding past ``T``).
        u: ``[N, Tp, V]`` values or pseudo-values (the backbone's write is ``k u^T``).
        g: ``[N, Tp]`` log-decays (zero padding).
        T: real length; R: entries per token in the live-slot record.
        lengths: ``[N]`` per-sequence lengths ``<= T`` (right padding: tokens past them change nothing; their
            records are meaningless), or ``None``.
    """
    N, Tp, K = k.shape
    V = u.shape[-1]
    dt, dev, BT = u.dtype, u.device, chunk_size
    score_fn = SCORES[score]
    m0 = int(initial_state.num_slots.max()) if initial_state is not None else 0
    M = {"single": 1, "fenwick": R + 1, "dla_unbounded": m0 + T + 1}.get(policy, capacity)
    M = max(M, initial_state.counts.shape[-1] if initial_state is not None else 0)
    slots = _Slots(N, M, dt, dev, initial_state)
    seen = initial_state.counts.reshape(N, -1).sum(-1).to(dev) if initial_state is not None else \
        torch.zeros(N, dtype=torch.int64, device=dev)
    # the open slot's state at the chunk start (after the last write, before the next decay) and its norm^2
    if initial_state is not None:
        O = initial_state.slots.reshape(N, -1, K, V).to(dev, dt)[slots.rows, (slots.m - 1).clamp_min(0)]
        O = O * (slots.m > 0)[:, None, None]
    else:
        O = torch.zeros(N, K, V, dtype=dt, device=dev)
    x_carry = (O * O).sum((-1, -2))
    if initial_state is not None and initial_state.open_norm is not None:
        x_carry = initial_state.open_norm.reshape(N).to(dev, dt)
    open_start = slots.last(slots.pos)

    out = ScanResult(
        score=torch.zeros(N, T, dtype=dt, device=dev), boundary=torch.zeros(N, T, dtype=torch.bool, device=dev),
        num_slots=torch.zeros(N, T, dtype=torch.int64, device=dev),
        merged=torch.full((N, T), -1, dtype=torch.int64, device=dev),
        starts=torch.full((N, T, R), UNUSED_START, dtype=torch.int64, device=dev),
        lam_index=torch.full((N, T, R), -1, dtype=torch.int64, device=dev),
        pos=slots.pos, counts=slots.n, info=slots.info, m=slots.m, open_norm=x_carry)
    tril = torch.ones(BT, BT, dtype=torch.bool, device=dev).tril(-1)
    for c in range(0, Tp, BT):
        kc, uc, gl = k[:, c:c + BT], u[:, c:c + BT], g[:, c:c + BT].cumsum(-1)  # [N, BT, K] [N, BT, V] [N, BT]
        z = (kc * kc).sum(-1) * (uc * uc).sum(-1)
        y_open = torch.exp(gl) * torch.einsum("ntk,nkv,ntv->nt", kc, O, uc)
        decay = torch.exp((gl[:, :, None] - gl[:, None, :]).masked_fill(~tril, float("-inf")))
        gram = decay * (kc @ kc.transpose(-1, -2)) * (uc @ uc.transpose(-1, -2))  # [N, t, s], s < t
        # tail[t, p] = sum_{p <= s < t} gram[t, s]; p = BT gives 0
        tail = torch.cat([gram.flip(-1).cumsum(-1).flip(-1), gram.new_zeros(N, BT, 1)], -1)
        for tt in range(min(BT, T - c)):
            t = c + tt
            x = x_carry * torch.exp(2 * g[:, t])
            loc = open_start - c
            y = torch.where(loc < 0, y_open[:, tt], torch.zeros_like(z[:, tt]))
            y = y + tail[slots.rows, tt, loc.clamp(0, BT)]
            empty = slots.m == 0
            info = torch.where(empty, torch.zeros_like(x), score_fn(x, y, z[:, tt], K * V))
            opened = empty | wants_boundary(policy, info, tau, seen + t, block_size, capacity)
            active = None if lengths is None else t < lengths
            if active is not None:
                opened = opened & active
            merged = torch.full_like(slots.m, -1)
            if policy in ("dla", "fixed") and capacity >= 2:
                full = opened & (slots.m == capacity)
                if bool(full.any()):
                    i = pick_merge(slots.info, slots.n, slots.m)
                    slots.merge(i, full)
                    merged = torch.where(full, i, merged)
            elif policy == "fenwick":
                while True:
                    carry = opened & (slots.m >= 2) & (slots.last(slots.n) == slots.last(slots.n, 2))
                    if not bool(carry.any()):
                        break
                    i = slots.m - 2
                    slots.merge(i, carry)
                    merged = torch.where(carry, i, merged)
            slots.append_or_absorb(opened, t, info, active)
            x_new = torch.where(opened, z[:, tt], x + 2 * y + z[:, tt])
            x_carry = x_new if active is None else torch.where(active, x_new, x_carry)
            open_start = torch.where(opened, torch.full_like(open_start, t), open_start)
            starts, counts, live = slots.newest(R)
            out.score[:, t], out.boundary[:, t], out.num_slots[:, t], out.merged[:, t] = info, opened, slots.m, merged
            out.starts[:, t] = starts
            out.lam_index[:, t] = torch.where(live, lam_indices(policy, counts, capacity), -1)
        # carry the open slot's state to the next chunk start
        loc = (open_start - c)[:, None]
        s_idx = torch.arange(kc.shape[1], device=dev)[None]
        w = torch.exp(gl[:, -1:] - gl) * (s_idx >= loc.clamp_min(0))
        O = torch.where(loc[..., None] < 0, torch.exp(gl[:, -1])[:, None, None] * O, torch.zeros_like(O)) \
            + torch.einsum("nt,ntk,ntv->nkv", w, kc, uc)
    out.pos, out.counts, out.info, out.m, out.open_norm = slots.pos, slots.n, slots.info, slots.m, x_carry
    return out


def fixed_schedule(policy: str, T: int, R: int, device=None):
    """Live-slot records of the data-independent policies from a fresh cache, without a scan.

    ``single`` keeps one slot from token 0. ``fenwick`` opens a slot at every token after merging the two newest
    slots while their counts are equal (a binary counter): after token ``t`` the open slot starts at ``t`` and the
    closed ones hold the set bits of ``t``, lowest (newest) first, the slot of bit ``b`` starting at ``t`` with bits
    ``0..b`` cleared, holding ``2^b`` tokens (its ``lam`` entry follows from the count, as in the scan). Equal to
    :func:`dla_scan`'s ``starts`` and ``lam_index`` (tests/ops/dla/test_fixed_schedule.py) for every ``k, u, g,
    tau``, with no initial state.

    Returns:
        ``starts, lam_index``: ``[T, R]`` int64, newest first, unused entries ``UNUSED_START`` / ``-1``.
    """
    if policy not in ("single", "fenwick"):
        raise ValueError(f"policy: fixed_schedule covers 'single' and 'fenwick', got {policy!r}")
    t = torch.arange(T, device=device)
    starts = torch.full((T, R), UNUSED_START, dtype=torch.int64, device=device)
    counts = torch.zeros(T, R, dtype=torch.int64, device=device)
    starts[:, 0], counts[:, 0] = (0, t + 1) if policy == "single" else (t, 1)  # the open slot
    if policy == "fenwick":
        b = torch.arange(max(int(T - 1).bit_length(), 1), device=device)
        has = (t[:, None] >> b) & 1 == 1  # [T, bits]
        rank = has.long().cumsum(-1)  # 1 for the lowest set bit (the newest closed slot)
        rows, cols = (has & (rank < R)).nonzero(as_tuple=True)
        starts[rows, rank[rows, cols]] = t[rows] & ~((1 << (cols + 1)) - 1)
        counts[rows, rank[rows, cols]] = 1 << cols
    return starts, torch.where(counts > 0, lam_indices(policy, counts, R), -1)
