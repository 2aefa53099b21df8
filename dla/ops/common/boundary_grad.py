"""The trainable boundary (``docs/design.md`` section 3.2): a straight-through gradient from each slot's readout to
the information score that opened it, with the hard decisions and the outputs unchanged.

Each slot opened by a score decision at token ``a`` (a boundary whose cache was not empty; not the slot of a
fresh sequence's first token, nor one carried in from an initial state) has a gate

    s_a = 1 + sigmoid(z_a) - stopgrad(sigmoid(z_a)),   z_a = (I_a - tau) / temperature,

whose value is exactly 1, and its readout (``lam``-weighted ``q_t^T S_slot`` at every ``t`` where it is live; a
merged slot keeps the older start's gate) is multiplied by ``s_a``. The outputs are bitwise those without the
option; the backward adds ``d loss / d I_a = sigmoid'(z_a) / temperature * sum_t lam * do_t . (scale q_t^T S_a,t)``
and carries it through the score to ``k``, ``u`` and the decays (and, for Gated DeltaNet, through ``u`` to ``v``,
``k``, ``beta`` and ``g``).

Shared by every implementation: :func:`opening_scores` recomputes ``I_a`` differentiably from the fixed
segmentation (the open slot's Gram quantities, chunk by chunk), :func:`slot_gates` turns them into gates, and
:func:`old_rank_grad` gives the per-slot readout gradient of the ``dla_unbounded`` slots whose ranks share the last
``lam`` entry (the chunked op keeps them as one sum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dla.ops.common.policy import Policy
from dla.ops.common.score import SCORES
from dla.ops.common.state import DLAState

BOUNDARY_GRADS = ("ste",)
"""Values of ``boundary_grad`` besides ``None`` (off): ``ste``, the straight-through sigmoid gate."""

TEMPERATURE = 0.1
"""Default ``boundary_temperature``: the gate's slope at ``I = tau`` is ``1 / (4 * temperature) = 2.5``, and it
falls to a tenth of that ``0.36`` away from ``tau``, about the spread of the scores around a threshold of 0.3-0.9."""

SCORED_POLICIES = ("dla", "dla_unbounded")
"""The policies whose boundaries the information score decides."""


@dataclass(frozen=True)
class BoundaryGrad:
    """The boundary gradient of a call, validated once.

    Attributes:
        kind: one of :data:`BOUNDARY_GRADS`.
        temperature: ``> 0``, finite; divides ``I_a - tau`` inside the sigmoid.
    """

    kind: str = "ste"
    temperature: float = TEMPERATURE

    @classmethod
    def of(cls, boundary_grad: Optional[str], temperature, policy: Policy) -> Optional["BoundaryGrad"]:
        """The option of a public call (``None``: off); ``ValueError`` naming ``boundary_grad`` or
        ``boundary_temperature`` for an unknown kind, a temperature that is not a finite number ``> 0``, or a policy
        whose boundaries the score does not decide."""
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"boundary_temperature: expected a finite number > 0, got {temperature!r}")
        if boundary_grad is None:
            return None
        if boundary_grad not in BOUNDARY_GRADS:
            raise ValueError(f"boundary_grad: unknown {boundary_grad!r}; allowed: None, "
                             f"{', '.join(map(repr, BOUNDARY_GRADS))}")
        if policy.kind not in SCORED_POLICIES:
            raise ValueError(f"boundary_grad: policy {policy.kind!r} does not place its boundaries by the score; "
                             f"use it with {' or '.join(map(repr, SCORED_POLICIES))}")
        return cls(boundary_grad, float(temperature))

    def gate(self, info: torch.Tensor, tau: float) -> torch.Tensor:
        """``s = 1 + (p - stopgrad(p))``, ``p = sigmoid((info - tau) / temperature)``: exactly 1, gradient ``p'``."""
        p = torch.sigmoid((info - tau) / self.temperature)
        return 1 + (p - p.detach())


def scored_openings(opened: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` bool: the openings a score decided (``opened`` without the first token of the rows in ``fresh``
    ``[N]``, which start from an empty cache)."""
    first = torch.arange(opened.shape[1], device=opened.device) == 0
    return opened & ~(first[None, :] & fresh[:, None])


def initial_open_slot(init: Optional[DLAState], N: int, K: int, V: int, dtype: torch.dtype, device):
    """``(S_open [N, K, V], fresh [N])``: the open slot of an initial state (zeros where none) and which rows start
    from an empty cache."""
    if init is None:
        return (torch.zeros(N, K, V, dtype=dtype, device=device),
                torch.ones(N, dtype=torch.bool, device=device))
    m = init.num_slots.reshape(N).to(device)
    slots = init.slots.reshape(N, -1, K, V).to(device=device, dtype=dtype)
    S = slots[torch.arange(N, device=device), (m - 1).clamp_min(0)] * (m > 0).to(dtype)[:, None, None]
    return S, m == 0


def opening_scores(k: torch.Tensor, u: torch.Tensor, g: torch.Tensor, opened: torch.Tensor, scored: torch.Tensor,
                   carry: torch.Tensor, score: str, block: int = 64) -> torch.Tensor:
    """``I_a`` of every scored opening, differentiable in ``k``, ``u`` and ``g`` for the fixed segmentation.

    ``I_a = score(x, y, z)`` with ``x = ||S_open||^2``, ``y = k_a^T S_open u_a``, ``z = ||k_a||^2 ||u_a||^2``, where
    ``S_open = sum_{p <= s < a} D(s, a) k_s u_s^T`` (plus the initial open slot ``carry`` decayed by ``D(-1, a)``
    while the first slot is open) is the slot open before token ``a``. Per block of tokens, from the Gram matrix
    ``(k k^T) * (u u^T)`` of the block and the open slot carried into it; each block is recomputed in the backward, so
    that autograd keeps ``O(T + (T / block) K V)`` per row besides the inputs.

    Args:
        k: ``[N, >= T, K]`` keys of each row (per head); u: ``[N, >= T, V]`` (pseudo-)values; g: ``[N, >= T]``
            log-decays. opened: ``[N, T]`` bool, every slot opening (the segmentation's ``boundary``);
            scored: ``[N, T]`` bool, the openings a score decided (:func:`scored_openings`); carry: ``[N, K, V]``
            the initial open slot (zeros for a fresh row); score: a name in :data:`SCORES`.
    Returns:
        ``[N, T]`` in the dtype of ``u``: ``I_a`` where ``scored``, 0 elsewhere.
    """
    N, T = opened.shape
    dt = u.dtype
    cum = F.pad(g[:, :T].to(torch.float64).cumsum(-1), (1, 0))  # cum[:, i] = sum_{r < i} g_r (no long differences)
    C = carry.to(dt)
    out = []
    for t0 in range(0, T, block):
        t1 = min(t0 + block, T)
        args = (k[:, t0:t1].to(dt), u[:, t0:t1], cum[:, t0:t1 + 1], opened[:, t0:t1], scored[:, t0:t1], C, score)
        # recomputed in the backward: the saved tensors are the block's inputs, not its [N, L, L] products
        info, C = checkpoint(_block_scores, *args, use_reentrant=False) if torch.is_grad_enabled() else \
            _block_scores(*args)
        out.append(info)
    if not out:
        return u.new_zeros(N, 0)
    return torch.cat(out, -1)


def _block_scores(kb, ub, cum, ob, want, C, score: str):
    """One block of :func:`opening_scores`: ``(I [N, L], the open slot carried out [N, K, V])`` from the block's keys
    ``kb [N, L, K]``, values ``ub [N, L, V]``, ``cum [N, L + 1]`` (``log D(-1, t)`` of the token before the block
    and of its tokens), openings ``ob`` / ``want`` ``[N, L]`` and the open slot carried in ``C``."""
    dt = ub.dtype
    K, V = kb.shape[-1], ub.shape[-1]
    one, zero = torch.ones((), dtype=dt, device=ub.device), torch.zeros((), dtype=dt, device=ub.device)
    cb, cprev = cum[:, 1:], cum[:, :1]
    seg = ob.long().cumsum(-1)  # [N, L] the slot of each token inside the block (0: carried in)
    src = (seg[:, None, :] == seg[:, :, None] - 1) & want[:, :, None]  # [N, a, s]: s in the slot open at a
    W = torch.exp((cb[:, :, None] - cb[:, None, :]).masked_fill(~src, float("-inf")).to(dt))  # D(s, a)
    ca = torch.where(want & (seg == 1), torch.exp((cb - cprev).to(dt)), zero)  # the carried slot's decay to a
    gram = (kb @ kb.transpose(-1, -2)) * (ub @ ub.transpose(-1, -2))  # [N, L, L]
    kcu = torch.einsum("nsk,nkv,nsv->ns", kb, C, ub)  # k_s^T C u_s
    x = ((W @ gram) * W).sum(-1) + 2 * ca * (W @ kcu[..., None])[..., 0] + ca * ca * (C * C).sum((-1, -2))[:, None]
    y = (W * gram).sum(-1) + ca * kcu
    z = (kb * kb).sum(-1) * (ub * ub).sum(-1)
    info = SCORES[score](torch.where(want, x, one), torch.where(want, y, zero), torch.where(want, z, one), K * V)
    # the slot open at the block's end, decayed to its last token
    last = seg == seg[:, -1:]
    wc = torch.where(last, torch.exp((cb[:, -1:] - cb).to(dt)), zero)
    keep = (seg[:, -1] == 0).to(dt) * torch.exp((cb[:, -1] - cprev[:, 0]).to(dt))
    return torch.where(want, info, zero), keep[:, None, None] * C + torch.einsum("ns,nsk,nsv->nkv", wc, kb, ub)


def slot_gates(bg: BoundaryGrad, tau: float, info: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` gate of the slot that opens at each token: ``bg.gate(info)`` where ``scored``, 1 elsewhere."""
    return torch.where(scored, bg.gate(info, tau), torch.ones_like(info))


def rank_gates(gates: torch.Tensor, starts: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``[N, T, R]``: the gate of the slot at each rank of the live-slot record (``starts [N, T, R]``, ``live``
    ``[N, T, R]``: which ranks to gate), 1 for the others and for slots starting before the call."""
    N, T, R = starts.shape
    at = torch.gather(gates, 1, starts.clamp(0, max(T - 1, 0)).reshape(N, T * R)).view(N, T, R)
    return torch.where(live & (starts >= 0), at, torch.ones_like(at))


def old_rank_grad(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, g: torch.Tensor, w: torch.Tensor,
                  do: torch.Tensor, opened: torch.Tensor, scored: torch.Tensor, shared_rank: int,
                  block: int = 64) -> torch.Tensor:
    """``d loss / d s_a`` through the readout of the ``dla_unbounded`` slots at ranks ``>= shared_rank`` (they
    share ``lam[..., shared_rank]``), for every scored opening ``a``; no autograd.

    ``sum_{s in slot a} sum_{t >= max(s, tau_a)} w_t D(s, t) (k_s . q_t) (u_s . do_t)``, ``tau_a`` the token at
    which slot ``a`` reaches rank ``shared_rank`` (the ``shared_rank``-th opening after ``a``): the part inside the
    chunk of ``max(s, tau_a)`` directly, the rest from the chunk-start adjoints ``A_c = sum_{t >= c} D(c - 1, t)
    w_t q_t do_t^T`` of one reverse pass. ``O(T (block (K + V) + K V))`` per row.

    Args:
        q, k: ``[N, >= T, K]``; u: ``[N, >= T, V]``; g: ``[N, >= T]``; w: ``[N, T]`` the shared readout weight
            (``scale * lam[..., shared_rank]``); do: ``[N, T, V]`` the output's gradient; opened, scored:
            ``[N, T]`` bool as :func:`opening_scores`; shared_rank: ``capacity - 1``.
    Returns:
        ``[N, T]`` at each scored opening the gradient of its gate, 0 elsewhere.
    """
    N, T = opened.shape
    K, V = k.shape[-1], u.shape[-1]
    dt, dev = u.dtype, u.device
    NT = -(-T // block)
    Tp = NT * block
    pad = lambda x: F.pad(x[:, :T], (0, 0) * (x.dim() - 2) + (0, Tp - T))  # noqa: E731
    qp, kp, up, dop = pad(q).to(dt), pad(k).to(dt), pad(u), pad(do).to(dt)
    gp, wp = pad(g).to(dt), pad(w).to(dt)
    cum = F.pad(g[:, :T].to(torch.float64).cumsum(-1), (1, Tp - T), value=0.0)  # cum[:, i] = sum_{r < i} g_r
    cum[:, T + 1:] = cum[:, T:T + 1]
    # A_c for c = 0..NT (A_NT = 0), reverse over chunks
    gl = gp.view(N, NT, block).cumsum(-1)
    qc, dc, wc = qp.view(N, NT, block, K), dop.view(N, NT, block, V), wp.view(N, NT, block)
    A = torch.zeros(N, NT + 1, K, V, dtype=dt, device=dev)
    for c in reversed(range(NT)):
        A[:, c] = torch.einsum("nt,ntk,ntv->nkv", torch.exp(gl[:, c]) * wc[:, c], qc[:, c], dc[:, c]) \
            + torch.exp(gl[:, c, -1])[:, None, None] * A[:, c + 1]
    # every token's slot, its opening count, and the token at which the slot reaches the shared rank
    pos = torch.arange(T, device=dev)
    start = torch.where(opened, pos, -1).cummax(-1).values  # [N, T]
    count = opened.long().cumsum(-1)
    total = count[:, -1:]
    where_open = torch.full((N, T + 1), T, dtype=torch.long, device=dev)
    where_open.scatter_(1, torch.where(opened, count - 1, T), pos.expand(N, T))
    where_open[:, T] = T
    target = count - 1 + shared_rank
    reach = torch.gather(where_open, 1, target.clamp(0, T))
    valid = (start >= 0) & (target < total) & torch.gather(scored, 1, start.clamp_min(0))
    t0 = torch.maximum(pos.expand(N, T), reach)
    rows = torch.arange(N, device=dev)[:, None]
    grad = torch.zeros(N, T, dtype=dt, device=dev)
    offs = torch.arange(block, device=dev)
    for s0 in range(0, T, block):
        s1 = min(s0 + block, T)
        ok = valid[:, s0:s1]
        c0 = torch.div(t0[:, s0:s1], block, rounding_mode="floor").clamp_max(NT - 1)  # [N, L]
        tpos = c0[..., None] * block + offs  # [N, L, block]
        inside = (tpos >= t0[:, s0:s1, None]) & (tpos < T) & ok[..., None]
        cs = cum[:, s0 + 1:s1 + 1]  # log D(-1, s)
        expo = torch.gather(cum, 1, (tpos + 1).flatten(1)).view_as(tpos) - cs[..., None]
        D = torch.exp(expo.masked_fill(~inside, float("-inf")).to(dt))
        ks, us = kp[:, s0:s1], up[:, s0:s1]
        kq = torch.einsum("nlk,nltk->nlt", ks, qc[rows, c0])
        ud = torch.einsum("nlv,nltv->nlt", us, dc[rows, c0])
        near = (D * wc[rows, c0] * kq * ud).sum(-1)
        far_decay = torch.exp((torch.gather(cum, 1, ((c0 + 1) * block).clamp_max(Tp)) - cs).to(dt))
        far = far_decay * torch.einsum("nlk,nlkv,nlv->nl", ks, A[rows, c0 + 1], us)
        val = torch.where(ok, near + far, torch.zeros((), dtype=dt, device=dev))
        grad.scatter_add_(1, start[:, s0:s1].clamp_min(0), val)
    return torch.where(scored, grad, torch.zeros_like(grad))


class OldRankGate(torch.autograd.Function):
    """``o`` unchanged; the backward gives ``gates [N, T]`` (a row per batch x head) the :func:`old_rank_grad` of
    the output's gradient, so that the ``dla_unbounded`` slots past the last ``lam`` entry get their gate's path.

    ``heads(x)``: the head-major copy ``[B, H, Tp, D]`` of a caller tensor ``[B, T, G, D]``; ``q, k``: the caller's
    queries and keys; ``u``: the pseudo-values ``[B, H, Tp, V]``, or the caller's ``v`` when ``u_is_v``;
    ``g [B, H, Tp]``; ``w [B, H, T]``."""

    @staticmethod
    def forward(ctx, o, gates, heads: Callable, q, k, u, u_is_v: bool, g, w, opened, scored, shared_rank: int,
                block: int):
        ctx.save_for_backward(q, k, u, g, w, opened, scored)
        ctx.heads, ctx.u_is_v, ctx.shared_rank, ctx.block = heads, u_is_v, shared_rank, block
        return o.clone()  # a view would refuse in-place changes downstream

    @staticmethod
    def backward(ctx, do):
        q, k, u, g, w, opened, scored = ctx.saved_tensors
        B, H, T = w.shape
        N = B * H
        qh, kh = ctx.heads(q), ctx.heads(k)
        uh = ctx.heads(u) if ctx.u_is_v else u
        with torch.no_grad():
            grad = old_rank_grad(qh.reshape(N, -1, qh.shape[-1]), kh.reshape(N, -1, kh.shape[-1]),
                                 uh.reshape(N, -1, uh.shape[-1]), g.reshape(N, -1), w.reshape(N, T),
                                 do.transpose(1, 2).reshape(N, T, -1), opened, scored, ctx.shared_rank, ctx.block)
        return (do, grad.view(B, H, T), *([None] * 11))
