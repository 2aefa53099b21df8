"""Dynamic Linear Attention in about a hundred lines: the method as the paper states it, for reading.

A head keeps a short list of chronological slot states instead of one state. Each token

1. decays every slot by ``a_t = exp(g_t)``;
2. forms its write ``s_t = k_t u_t^T`` (Mamba-2: ``u_t = v_t``; Gated DeltaNet in additive form:
   ``u_t = beta_t (v_t - S^T k_t)`` with ``S`` the decayed sum of the slots, i.e. the backbone's state);
3. scores how much the write changes the open (newest) slot, ``I_t = ||N(S_open + s_t) - N(S_open)|| /
   (||N(S_open)|| + eps)`` with the weight-free RMS norm ``N``;
4. opens a new slot when ``I_t >= tau`` (first merging, if ``capacity`` slots are live, the adjacent pair of
   lowest information density ``(I_i + I_{i+1}) / (n_i + n_{i+1})``), else adds its write to the open slot;
5. reads every live slot with its own weight, by recency: ``o_t = scale * sum_r lam[t, r] q_t^T S_(r)``.

This file is the ``dla`` policy with the paper's (``drift``) score only, written for clarity: Python loops, the
score from the matrices themselves. :func:`dla.ops.naive_dla` is the full specification (every policy, both
scores from three scalars, states and segmentations), and :func:`dla.ops.chunk_dla` the fast form; tests check that
all three agree. The derivations are in ``docs/design.md`` and ``docs/math.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

EPS = 1e-6


@dataclass
class Slot:
    S: torch.Tensor  # [K, V] the slot's state: the decayed sum of its tokens' writes
    n: int  # tokens in the slot
    info: float  # sum of their information scores (the slot's opening token contributes its own score)


def rms_norm(X: torch.Tensor) -> torch.Tensor:
    """``N(X) = X / sqrt(mean(X^2) + eps)`` over the whole matrix."""
    return X / torch.sqrt((X * X).mean() + EPS)


def information(S_open: torch.Tensor, write: torch.Tensor) -> float:
    """How much ``write`` moves the open slot, relative to its size (the paper's score)."""
    before, after = rms_norm(S_open), rms_norm(S_open + write)
    return float((after - before).norm() / (before.norm() + EPS))


def merge_lowest_density(slots: List[Slot]) -> None:
    """Merge the adjacent pair ``(i, i + 1)`` of lowest ``(I_i + I_{i+1}) / (n_i + n_{i+1})`` (ties: smallest i)."""
    density = [((a.info + b.info) / (a.n + b.n), i) for i, (a, b) in enumerate(zip(slots, slots[1:]))]
    _, i = min(density)
    a, b = slots[i], slots.pop(i + 1)
    slots[i] = Slot(a.S + b.S, a.n + b.n, a.info + b.info)


def minimal_dla(q, k, v, g, lam, beta: Optional[torch.Tensor] = None, *, tau: float = 0.6, capacity: int = 30,
                scale: Optional[float] = None) -> torch.Tensor:
    """DLA (policy ``dla``, score ``drift``) token by token.

    Args:
        q, k: ``[B, T, G, K]``; v: ``[B, T, H, V]``; g: ``[B, T, H]`` log-decays ``<= 0``;
        lam: ``[B, T, H, capacity]`` readout weights by recency; beta: ``[B, T, H]`` (Gated DeltaNet) or ``None``
        (Mamba-2); tau: boundary threshold; capacity: most live slots; scale: default ``K ** -0.5``.
    Returns:
        ``o [B, T, H, V]``.
    """
    B, T, G, K = q.shape
    H = v.shape[2]
    scale = K ** -0.5 if scale is None else scale
    o = torch.zeros(v.shape, dtype=v.dtype)
    for b in range(B):
        for h in range(H):
            slots: List[Slot] = []
            for t in range(T):
                q_t, k_t, v_t = q[b, t, h * G // H], k[b, t, h * G // H], v[b, t, h]
                a = torch.exp(g[b, t, h])
                for slot in slots:  # 1. decay
                    slot.S = a * slot.S
                if beta is None:  # 2. the write
                    u = v_t
                else:
                    S = sum(slot.S for slot in slots) if slots else torch.zeros(K, v.shape[-1], dtype=v.dtype)
                    u = beta[b, t, h] * (v_t - S.T @ k_t)
                write = torch.outer(k_t, u)
                if not slots:  # the first token opens the first slot
                    slots.append(Slot(write, 1, 0.0))
                else:
                    info = information(slots[-1].S, write)  # 3. the score
                    if info >= tau and capacity > 1:  # 4. a boundary: make room, open a slot
                        if len(slots) == capacity:
                            merge_lowest_density(slots)
                        slots.append(Slot(write, 1, info))
                    else:  # or absorb the token into the open slot
                        open_slot = slots[-1]
                        open_slot.S, open_slot.n, open_slot.info = open_slot.S + write, open_slot.n + 1, \
                            open_slot.info + info
                for r, slot in enumerate(reversed(slots)):  # 5. the readout, newest slot first
                    o[b, t, h] += lam[b, t, h, r] * (q_t @ slot.S)
    return scale * o
