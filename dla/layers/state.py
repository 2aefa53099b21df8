"""Per-layer decoding caches and the batch operations on :class:`~dla.ops.DLAState` that they need.

A mixer reads and updates its layer cache in place: prefill and every decode step call the mixer with the same
cache object. The caches hold only tensors with a leading batch dimension, so beam search can reorder them and
``num_return_sequences`` can repeat them.

Memory: a :class:`RecurrentLayerCache` is constant in the number of tokens for the policies ``single`` (one
slot), ``dla`` and ``fixed`` (``capacity`` slots) and ``fenwick`` (the number of ``lam`` levels the layer was
built for); ``dla_unbounded`` grows with the number of boundaries. An :class:`AttentionLayerCache` grows by one
key and one value per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from dla.ops import DLAState
from dla.ops import empty_state as ops_empty_state


def empty_state(batch: int, heads: int, width: int, key_dim: int, value_dim: int, dtype: torch.dtype,
                device: torch.device) -> DLAState:
    """A :class:`DLAState` with no live slot (``num_slots == 0``, ``open_norm == 0``): continuing from it equals
    starting afresh."""
    return ops_empty_state(batch, heads, key_dim, value_dim, width, dtype, device)


def with_open_norm(state: DLAState) -> DLAState:
    """``state`` with ``open_norm`` filled in (``||S_open||_F^2`` from the slots) when it is ``None``."""
    if state.open_norm is not None:
        return state
    B, H, _, K, V = state.slots.shape
    last = (state.num_slots - 1).clamp_min(0)[..., None, None, None].expand(B, H, 1, K, V)
    open_slot = torch.gather(state.slots, 2, last)[:, :, 0] * (state.num_slots > 0)[..., None, None]
    return DLAState(state.slots, state.counts, state.info, state.num_slots, open_slot.pow(2).sum((-1, -2)))


def fit_state_width(state: DLAState, width: int) -> DLAState:
    """Pad (with empty slots) or trim the slot dimension of ``state`` to ``width``.

    Trimming only drops entries past every row's ``num_slots``; a state holding more live slots raises (the check
    reads ``num_slots`` on the host; padding never does).
    """
    current = state.slots.shape[2]
    if current == width:
        return state
    if current > width:
        live = int(state.num_slots.max()) if state.num_slots.numel() else 0
        if live > width:
            raise ValueError(f"width: the state holds {live} live slots, more than width={width}")
        return DLAState(state.slots[:, :, :width], state.counts[:, :, :width], state.info[:, :, :width],
                        state.num_slots, state.open_norm)
    pad = width - current
    return DLAState(torch.nn.functional.pad(state.slots, (0, 0, 0, 0, 0, pad)),
                    torch.nn.functional.pad(state.counts, (0, pad)),
                    torch.nn.functional.pad(state.info, (0, pad)),
                    state.num_slots, state.open_norm)


def select_state(state: DLAState, index: torch.Tensor) -> DLAState:
    """Rows ``index`` of the batch (``index_select`` on dimension 0 of every field)."""
    return DLAState(*(None if t is None else t.index_select(0, index.to(t.device)) for t in _fields(state)))


def cat_states(states: List[DLAState]) -> DLAState:
    """Concatenate along the batch, padding every state to the widest slot dimension first."""
    width = max(s.slots.shape[2] for s in states)
    states = [fit_state_width(with_open_norm(s), width) for s in states]
    return DLAState(*(torch.cat(parts, 0) for parts in zip(*(_fields(s) for s in states))))


def where_state(keep: torch.Tensor, new: DLAState, old: DLAState) -> DLAState:
    """Row-wise choice: ``new`` where ``keep [B]`` is true, ``old`` elsewhere; fixed shapes, no host sync.

    ``old`` is padded to the slot width of ``new`` (which is never narrower: a step only widens).
    """
    old = fit_state_width(with_open_norm(old), new.slots.shape[2])
    new = with_open_norm(new)
    return DLAState(*(torch.where(keep.view(-1, *([1] * (a.dim() - 1))), a, b)
                      for a, b in zip(_fields(new), _fields(old))))


def scatter_state(base: DLAState, index: torch.Tensor, rows: DLAState) -> DLAState:
    """``base`` with its batch rows ``index`` replaced by ``rows`` (both padded to the wider slot width)."""
    width = max(base.slots.shape[2], rows.slots.shape[2])
    base, rows = (fit_state_width(with_open_norm(s), width) for s in (base, rows))
    return DLAState(*(b.index_copy(0, index.to(b.device), r) for b, r in zip(_fields(base), _fields(rows))))


def _fields(state: DLAState):
    return state.slots, state.counts, state.info, state.num_slots, state.open_norm


def _nbytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class RecurrentLayerCache:
    """What a recurrent (Mamba-2 / Gated DeltaNet) mixer continues from.

    Attributes:
        conv: ``[B, D_conv, W - 1]`` the last ``W - 1`` inputs of the short convolution (zeros before the first
            token); ``None`` before the first call.
        state: the :class:`DLAState` after the last token (slot dimension padded to a width fixed by the policy,
            see the module docstring); ``None`` before the first call.
        seen_tokens: positions processed so far, padding included (what ``get_seq_length`` reports).
    """

    conv: Optional[torch.Tensor] = None
    state: Optional[DLAState] = None
    seen_tokens: int = 0

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        s = self.state
        return _nbytes(self.conv) + (_nbytes(*_fields(s)) if s is not None else 0)

    def reset(self) -> None:
        self.conv, self.state, self.seen_tokens = None, None, 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or reorder, or repeat) the batch rows ``indices``."""
        if self.conv is not None:
            self.conv = self.conv.index_select(0, indices.to(self.conv.device))
        if self.state is not None:
            self.state = select_state(self.state, indices)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        batch = self.conv.shape[0] if self.conv is not None else (
            self.state.slots.shape[0] if self.state is not None else 0)
        self.batch_select_indices(torch.arange(batch).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(f"tokens_to_remove: a recurrent layer cache cannot be rolled back (got {tokens_to_remove})")


@dataclass
class AttentionLayerCache:
    """Keys and values of a softmax-attention mixer.

    Attributes:
        keys: ``[B, H_kv, S, D_head]`` rotated keys of the ``S`` cached positions; ``None`` before the first call.
        values: ``[B, H_kv, S, D_head]``.
        key_mask: ``[B, S]`` bool, ``False`` at padding positions (they are never attended to).
        next_position: ``[B]`` int64 RoPE position of the next real token (padding takes no position).
        seen_tokens: ``S``, positions processed so far, padding included.
    """

    keys: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    key_mask: Optional[torch.Tensor] = None
    next_position: Optional[torch.Tensor] = None
    seen_tokens: int = 0

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        return _nbytes(self.keys, self.values, self.key_mask, self.next_position)

    def reset(self) -> None:
        self.keys = self.values = self.key_mask = self.next_position = None
        self.seen_tokens = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or reorder, or repeat) the batch rows ``indices``."""
        for name in ("keys", "values", "key_mask", "next_position"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, indices.to(t.device)))

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.keys is not None:
            self.batch_select_indices(torch.arange(self.keys.shape[0]).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(f"tokens_to_remove: cropping an attention layer cache is not supported "
                         f"(got {tokens_to_remove})")
