"""What the Mamba-2 and Gated DeltaNet mixers share: the memory policy, the ``lam`` projection, padding masks,
packed sequences, the decoding cache and the call of the DLA op."""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dla.layers.modules import check_hidden, check_mask, copy_initial_values, mark_no_weight_decay, split_packed
from dla.layers.op import OP_TAKES_CHUNK_SIZE, dla_op
from dla.layers.state import RecurrentLayerCache, cat_states, empty_state, fit_state_width, select_state
from dla.ops import POLICIES, SCORES, DLAState
from dla.ops.common.state import num_levels

Projected = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Any, torch.Tensor]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


class RecurrentMixer(nn.Module, metaclass=ABCMeta):
    """Base of the linear-attention mixers: subclasses define the projections (``_project``) and the output
    (``_output``); this class runs the DLA op with the configured memory policy.

    Args:
        hidden_size: model width ``D``.
        num_heads: value heads ``H`` of the op.
        num_qk_heads: query/key heads ``G`` (``G`` divides ``H``; ``H // G`` value heads share one key).
        head_k_dim: key / state dimension ``K``.
        head_v_dim: value dimension ``V``.
        policy: ``single`` (the backbone) | ``fenwick`` (Log-Linear) | ``dla`` | ``fixed`` | ``dla_unbounded``
            (DESIGN.md section 3.1).
        capacity: ``C``, the most live slots (``dla``, ``fixed``; ``lam`` entries for ``dla_unbounded``).
        tau: boundary threshold of the information score.
        score: ``drift`` (the paper's) or ``write``.
        block_size: slot width of the ``fixed`` policy.
        chunk_size: chunk length of the chunked op (passed only to an op that takes it).
        max_position_embeddings: the longest sequence ``fenwick`` sizes its ``lam`` levels for
            (``ceil(log2 T) + 1`` levels); unused by the other policies.
        layer_idx: index of the layer in the model (informational).

    Every policy but ``single`` reads the slots with ``lam = softplus(lam_scale * lam_proj(x))`` of shape
    ``[B, T, H, R]`` (``R = capacity``, or the Fenwick levels), with ``lam_scale [H, R]`` initialised to ones as
    Log-Linear Attention does.
    """

    needs_positions = False
    """Recurrent mixers carry position in their state and take no ``position_ids``."""

    def __init__(self, hidden_size: int, num_heads: int, num_qk_heads: int, head_k_dim: int, head_v_dim: int, *,
                 policy: str = "dla", capacity: int = 30, tau: float = 0.6, score: str = "drift",
                 block_size: int = 64, chunk_size: int = 64, max_position_embeddings: int = 2048,
                 layer_idx: Optional[int] = None):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_qk_heads", num_qk_heads),
                            ("head_k_dim", head_k_dim), ("head_v_dim", head_v_dim), ("capacity", capacity),
                            ("block_size", block_size), ("chunk_size", chunk_size),
                            ("max_position_embeddings", max_position_embeddings)):
            check_positive_int(name, value)
        if num_heads % num_qk_heads != 0:
            raise ValueError(f"num_qk_heads: must divide num_heads={num_heads}, got {num_qk_heads}")
        if policy not in POLICIES:
            raise ValueError(f"policy: unknown {policy!r}; allowed: {', '.join(POLICIES)}")
        if score not in SCORES:
            raise ValueError(f"score: unknown {score!r}; allowed: {', '.join(SCORES)}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau: expected a finite number >= 0, got {tau!r}")
        self.hidden_size, self.num_heads, self.num_qk_heads = hidden_size, num_heads, num_qk_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.policy, self.capacity, self.tau, self.score = policy, capacity, float(tau), score
        self.block_size, self.chunk_size, self.layer_idx = block_size, chunk_size, layer_idx
        self.max_position_embeddings = max_position_embeddings
        self.scale = head_k_dim ** -0.5
        self.lam_size: Optional[int] = {"single": None, "fenwick": num_levels(max_position_embeddings)}.get(
            policy, capacity)
        if self.lam_size is not None:
            self.lam_proj = nn.Linear(hidden_size, num_heads * self.lam_size, bias=False)
            self.lam_scale = mark_no_weight_decay(nn.Parameter(torch.ones(num_heads, self.lam_size)))

    @property
    def state_width(self) -> Optional[int]:
        """Slot dimension of the cached :class:`DLAState` (``None``: grows, ``dla_unbounded``)."""
        return {"single": 1, "fenwick": self.lam_size, "dla_unbounded": None}.get(self.policy, self.capacity)

    def initial_values(self) -> Dict[str, torch.Tensor]:
        """Values of the parameters with a non-default init (see :mod:`dla.layers.modules`)."""
        return {"lam_scale": torch.ones_like(self.lam_scale)} if self.lam_size is not None else {}

    def reset_parameters(self) -> None:
        copy_initial_values(self)

    def compute_lam(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        """``[B, T, H, R]`` positive readout weights, ``None`` for ``single``."""
        if self.lam_size is None:
            return None
        B, T, _ = hidden.shape
        return F.softplus(self.lam_scale * self.lam_proj(hidden).view(B, T, self.num_heads, self.lam_size))

    @abstractmethod
    def _project(self, hidden: torch.Tensor, conv_tail: Optional[torch.Tensor]) -> Projected:
        """``-> (q [B,T,G,K], k [B,T,G,K], v [B,T,H,V], g [B,T,H], beta [B,T,H] or None, aux, new conv tail)``."""

    @abstractmethod
    def _output(self, o: torch.Tensor, aux: Any) -> torch.Tensor:
        """``o [B, T, H, V]`` (op output) and the ``aux`` of ``_project`` -> ``[B, T, D]``."""

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[RecurrentLayerCache] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mix ``hidden [B, T, D]`` along time; returns ``[B, T, D]``.

        Args:
            hidden: ``[B, T, D]`` input.
            attention_mask: ``[B, T]`` 1 for tokens, 0 for padding. Padding does not change the layer's state:
                its input is zeroed (so the short convolution sees zeros), its key and value are zeroed and its
                decay set to ``g = 0``, so the backbone state passes through unchanged; for the policies with slot
                bookkeeping (token counts, boundaries) each row is also run on its real tokens only. Exact for left
                padding (what ``generate`` builds) and for right padding; with holes inside a row the short
                convolution sees zeros where the masked tokens were. Outputs at padding are 0.
            cache: a :class:`RecurrentLayerCache` to continue from; updated in place (conv tail, state,
                ``seen_tokens``). Prefill then one-token steps equal one pass over the whole sequence.
            cu_seqlens: ``[N + 1]`` offsets of ``N`` packed documents in ``hidden [1, T, D]``: each document is run
                on its own from an empty state (no cache, no mask).
        """
        check_hidden(hidden, self.hidden_size)
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cache: packed sequences (cu_seqlens) are run without a cache")
            if attention_mask is not None:
                raise ValueError("attention_mask: not used with cu_seqlens (documents are delimited by the offsets)")
            segments = split_packed(cu_seqlens, hidden)
            return torch.cat([self._forward(hidden[:, s:e], None, None) for s, e in segments], 1)
        if cache is not None and not isinstance(cache, RecurrentLayerCache):
            raise ValueError(f"cache: expected a RecurrentLayerCache, got {type(cache).__name__}")
        return self._forward(hidden, check_mask(attention_mask, hidden), cache)

    def _forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor],
                 cache: Optional[RecurrentLayerCache]) -> torch.Tensor:
        if mask is not None:
            hidden = hidden * mask[..., None].to(hidden.dtype)
        q, k, v, g, beta, aux, tail = self._project(hidden, cache.conv if cache is not None else None)
        lam = self.compute_lam(hidden)
        if mask is not None:
            keep = mask[..., None, None]
            k = torch.where(keep, k, torch.zeros_like(k))
            v = torch.where(keep, v, torch.zeros_like(v))
            g = torch.where(mask[..., None], g, torch.zeros_like(g))
        state = cache.state if cache is not None else None
        self._check_length(state, mask, hidden.shape[1])
        o, final = self._run_op(q, k, v, g, lam, beta, state, mask, want_state=cache is not None)
        y = self._output(o, aux)
        if mask is not None:
            y = y * mask[..., None].to(y.dtype)
        if cache is not None:
            cache.conv, cache.state = tail, final
            cache.seen_tokens += hidden.shape[1]
        return y

    def _check_length(self, state: Optional[DLAState], mask: Optional[torch.Tensor], T: int) -> None:
        if self.policy != "fenwick":
            return
        seen = int(state.counts.sum(-1).max()) if state is not None and state.counts.numel() else 0
        new = int(mask.sum(-1).max()) if mask is not None else T
        if num_levels(seen + new) > self.lam_size:
            raise ValueError(f"max_position_embeddings: policy 'fenwick' was built for {self.max_position_embeddings} "
                             f"positions ({self.lam_size} lam levels); this call reaches {seen + new} tokens")

    def _run_op(self, q, k, v, g, lam, beta, state: Optional[DLAState], mask: Optional[torch.Tensor],
                want_state: bool) -> Tuple[torch.Tensor, Optional[DLAState]]:
        if mask is None or self.policy == "single":
            o, final = self._call_op(q, k, v, g, lam, beta, state, want_state)
            return o, final
        # Slot bookkeeping (counts, boundaries, Fenwick levels) must not see padding: one call per row on its tokens.
        o = torch.zeros_like(v)
        finals: List[DLAState] = []
        for b in range(mask.shape[0]):
            idx = mask[b].nonzero().squeeze(-1)
            row_state = select_state(state, torch.tensor([b])) if state is not None else None
            if idx.numel() == 0:
                if want_state:
                    finals.append(row_state if row_state is not None else empty_state(
                        1, self.num_heads, self.state_width or 1, q.shape[-1], v.shape[-1],
                        torch.promote_types(v.dtype, torch.float32), v.device))
                continue
            rows = [x[b:b + 1, idx] if x is not None else None for x in (q, k, v, g, lam, beta)]
            o_b, final_b = self._call_op(*rows, row_state, want_state)
            o = o.index_put((torch.full_like(idx, b), idx), o_b[0])
            if want_state:
                finals.append(final_b)
        return o, (cat_states(finals) if want_state else None)

    def _call_op(self, q, k, v, g, lam, beta, state: Optional[DLAState],
                 want_state: bool) -> Tuple[torch.Tensor, Optional[DLAState]]:
        extra = {"chunk_size": self.chunk_size} if OP_TAKES_CHUNK_SIZE else {}
        if state is not None:  # hand the op only the live slots: the cache pads to a fixed width
            state = fit_state_width(state, max(int(state.num_slots.max()), 1))
        o, final = dla_op(q, k, v, g, lam, beta, scale=self.scale, tau=self.tau, capacity=self.capacity,
                          policy=self.policy, block_size=self.block_size, score=self.score, initial_state=state,
                          output_final_state=want_state, **extra)
        if final is not None and self.state_width is not None:
            final = fit_state_width(final, self.state_width)
        return o, final

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_qk_heads={self.num_qk_heads}, "
                f"head_k_dim={self.head_k_dim}, head_v_dim={self.head_v_dim}, policy={self.policy!r}, "
                f"capacity={self.capacity}, tau={self.tau}, score={self.score!r}")
