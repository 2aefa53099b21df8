"""The segmentation scan of the chunked form (``docs/design.md`` section 4, step 2) in PyTorch, vectorised over
batch and heads.

Sequential over chunks; inside a chunk the open slot's three scalars come from one mat-vec against the open
slot's state at the chunk start plus Gram terms of the chunk, and a scalar loop decides boundaries and merges.
Runs without gradient: boundary decisions are discrete.
"""

from __future__ import annotations

from typing import Optional

import torch

from dla.ops.common.merge import pick_merge
from dla.ops.common.policy import Policy
from dla.ops.common.record import ScanResult, SlotTable, open_slot_start
from dla.ops.common.score import SCORES
from dla.ops.common.state import UNUSED_START, DLAState


@torch.no_grad()
def scan(k: torch.Tensor, u: torch.Tensor, g: torch.Tensor, T: int, *, policy: Policy, chunk_size: int, R: int,
         initial_state: Optional[DLAState], lengths: Optional[torch.Tensor] = None, heads_per_group: int = 1,
         cfg=None) -> ScanResult:
    """Decide boundaries and merges for ``N`` sequences.

    Args:
        k: ``[N / heads_per_group, Tp, K]`` keys, one row per group of ``heads_per_group`` consecutive sequences
            (heads sharing their keys); ``Tp`` a multiple of ``chunk_size`` (zero padding past ``T``).
        u: ``[N, Tp, V]`` values or pseudo-values (the backbone's write is ``k u^T``).
        g: ``[N, Tp]`` log-decays (zero padding).
        T: real length; R: entries per token in the live-slot record.
        policy: the segmentation rule; initial_state: the caches to continue from (batch x heads = ``N``).
        lengths: ``[N]`` per-sequence lengths ``<= T`` (right padding: tokens past them change nothing; their
            records are meaningless), or ``None``.
        cfg: unused (the Triton stage's config).
    """
    N, Tp, V = u.shape
    K = k.shape[-1]
    dt, dev, BT = u.dtype, u.device, chunk_size
    k = k.to(dt)
    if heads_per_group > 1:
        k = k.repeat_interleave(heads_per_group, 0)
    score_fn = SCORES[policy.score]
    m0 = int(initial_state.num_slots.max()) if initial_state is not None else 0
    M = policy.slot_bound(R, m0, T)
    M = max(M, initial_state.counts.shape[-1] if initial_state is not None else 0)
    slots = SlotTable(N, M, dt, dev, initial_state)
    # the open slot's state at the chunk start (after the last write, before the next decay) and its norm^2
    seen, O, x_carry = open_slot_start(initial_state, N, K, V, dt, dev, slots)
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
            opened = empty | policy.wants_boundary(info, seen + t)
            active = None if lengths is None else t < lengths
            if active is not None:
                opened = opened & active
            merged = torch.full_like(slots.m, -1)
            if policy.merges and policy.capacity >= 2:
                full = opened & (slots.m == policy.capacity)
                if bool(full.any()):
                    i = pick_merge(slots.info, slots.n, slots.m)
                    slots.merge(i, full)
                    merged = torch.where(full, i, merged)
            elif policy.kind == "fenwick":
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
            out.lam_index[:, t] = torch.where(live, policy.lam_indices(counts), -1)
        # carry the open slot's state to the next chunk start
        loc = (open_start - c)[:, None]
        s_idx = torch.arange(kc.shape[1], device=dev)[None]
        w = torch.exp(gl[:, -1:] - gl) * (s_idx >= loc.clamp_min(0))
        O = torch.where(loc[..., None] < 0, torch.exp(gl[:, -1])[:, None, None] * O, torch.zeros_like(O)) \
            + torch.einsum("nt,ntk,ntv->nkv", w, kc, uc)
    out.pos, out.counts, out.info, out.m, out.open_norm = slots.pos, slots.n, slots.info, slots.m, x_carry
    return out
