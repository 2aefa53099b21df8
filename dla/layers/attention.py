"""Causal softmax attention (SDPA, RoPE, grouped KV heads, KV cache): the Transformer reference mixer."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dla.layers.modules import check_hidden, check_mask, rotary, split_packed
from dla.layers.recurrent import check_positive_int
from dla.layers.state import AttentionLayerCache

SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""SDPA backends of every attention call: not cuDNN, which builds a graph for every new sequence length (about 6 ms
of host time per call on an H100 with torch 2.11, 60x a decode step's attention). Packed documents of a training
batch have lengths that change from batch to batch, and decode steps a key length that grows every step."""


class AttentionMixer(nn.Module):
    """Multi-head causal self-attention with rotary positions, for the Transformer baseline and hybrid layers.

    Args:
        hidden_size: model width.
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention), must divide ``num_heads``; default ``num_heads``.
        head_dim: per-head width; default ``hidden_size // num_heads`` (which must then divide exactly).
        rope_theta: RoPE base.
        max_position_embeddings: the longest sequence accepted; a longer one raises ``ValueError``.
        layer_idx: index of the layer in the model (informational).

    Positions count real tokens only: with left padding a row's first real token is at position 0, as when
    the row is run alone.

    Example:
        >>> attn = AttentionMixer(64, num_heads=4)
        >>> attn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    needs_positions = True
    """The block passes ``position_ids`` to this mixer."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, rope_theta: float = 10000.0, max_position_embeddings: int = 2048,
                 layer_idx: Optional[int] = None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                            ("max_position_embeddings", max_position_embeddings)):
            check_positive_int(name, value)
        if head_dim is None:
            if hidden_size % num_heads != 0:
                raise ValueError(f"num_heads: must divide hidden_size={hidden_size}, got {num_heads}")
            head_dim = hidden_size // num_heads
        check_positive_int("head_dim", head_dim)
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim: RoPE needs an even head dimension, got {head_dim}")
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_kv_heads: must divide num_heads={num_heads}, got {num_kv_heads}")
        if not rope_theta > 0:
            raise ValueError(f"rope_theta: expected a positive number, got {rope_theta!r}")
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim = hidden_size, num_heads, num_kv_heads, \
            head_dim
        self.rope_theta, self.max_position_embeddings, self.layer_idx = float(rope_theta), max_position_embeddings, \
            layer_idx
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[AttentionLayerCache] = None, cu_seqlens: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend over the cached and the new tokens; returns ``[B, T, D]``.

        Args:
            hidden: ``[B, T, D]``.
            attention_mask: ``[B, T]`` 1 for tokens, 0 for padding of the new tokens (the cache remembers the
                padding of earlier calls). Padding is never attended to and takes no position; outputs there are 0.
            cache: an :class:`AttentionLayerCache`, extended in place.
            cu_seqlens: ``[N + 1]`` offsets of packed documents in ``hidden [1, T, D]``; each attends only to
                itself, positions restart at 0 (no cache, no mask, no ``position_ids``).
            position_ids: ``[B, T]`` or ``[1, T]`` RoPE positions overriding the ones counted from the mask and
                the cache.
        """
        check_hidden(hidden, self.hidden_size)
        if cu_seqlens is not None:
            if cache is not None or attention_mask is not None or position_ids is not None:
                raise ValueError("cu_seqlens: packed sequences take no cache, attention_mask or position_ids")
            return self._forward_packed(hidden, split_packed(cu_seqlens, hidden))
        if cache is not None and not isinstance(cache, AttentionLayerCache):
            raise ValueError(f"cache: expected an AttentionLayerCache, got {type(cache).__name__}")
        return self._forward(hidden, check_mask(attention_mask, hidden), cache, position_ids)

    def _positions(self, mask: Optional[torch.Tensor], cache: Optional[AttentionLayerCache],
                   position_ids: Optional[torch.Tensor], B: int, T: int, device: torch.device) -> torch.Tensor:
        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or \
                    position_ids.shape[1] != T or position_ids.shape[0] not in (1, B):
                shape = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else position_ids
                raise ValueError(f"position_ids: expected [B, T] or [1, T] with T={T}, got {shape}")
            return position_ids.to(device=device, dtype=torch.int64).expand(B, T)
        start = cache.next_position if cache is not None and cache.next_position is not None else \
            torch.zeros(B, dtype=torch.int64, device=device)
        if mask is None:
            return start[:, None] + torch.arange(T, device=device)
        return start[:, None] + (mask.long().cumsum(-1) - 1).clamp_min(0)

    def _check_length(self, positions: int) -> None:
        if positions > self.max_position_embeddings:
            raise ValueError(f"max_position_embeddings: the sequence reaches {positions} positions, more than "
                             f"max_position_embeddings={self.max_position_embeddings} of this attention layer")

    def _project(self, hidden: torch.Tensor, positions: torch.Tensor):
        """``q, k, v [B, heads, T, head_dim]`` of ``hidden [B, T, D]``, ``q`` and ``k`` rotated to ``positions``."""
        B, T, _ = hidden.shape
        q = self.q_proj(hidden).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta), v

    def _forward_packed(self, hidden: torch.Tensor, bounds) -> torch.Tensor:
        """Packed documents ``(start, end)`` of ``hidden [1, T, D]``: the projections and rotations run once over the
        row (positions restart at each document), causal attention once per document."""
        lengths = [e - s for s, e in bounds]
        self._check_length(max(lengths))
        positions = torch.cat([torch.arange(n) for n in lengths])[None].to(hidden.device, non_blocking=True)
        q, k, v = self._project(hidden, positions)
        gqa = self.num_kv_heads != self.num_heads
        with sdpa_kernel(SDPA_BACKENDS):
            out = torch.cat([F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=gqa)
                             for qd, kd, vd in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))], 2)
        return self.o_proj(out.transpose(1, 2).reshape(1, hidden.shape[1], self.num_heads * self.head_dim))

    def _forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[AttentionLayerCache],
                 position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, _ = hidden.shape
        positions = self._positions(mask, cache, position_ids, B, T, hidden.device)
        seen = cache.seen_tokens if cache is not None else 0
        if position_ids is not None or seen + T > self.max_position_embeddings:
            # counted positions never exceed the positions fed: read them on the host only when that bound fails
            real = positions if mask is None else positions[mask]
            if real.numel():
                self._check_length(int(real.max()) + 1)
        q, k, v = self._project(hidden, positions)
        new_mask = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        past = 0
        if cache is not None and cache.keys is not None:
            past = cache.keys.shape[2]
            k, v = torch.cat([cache.keys, k], 2), torch.cat([cache.values, v], 2)
            key_mask = torch.cat([cache.key_mask, new_mask], 1)
        else:
            key_mask = new_mask
        gqa = self.num_kv_heads != self.num_heads
        if past == 0 and mask is None:
            with sdpa_kernel(SDPA_BACKENDS):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            S = k.shape[2]
            rows = past + torch.arange(T, device=hidden.device)
            allowed = (torch.arange(S, device=hidden.device)[None, :] <= rows[:, None])[None] & key_mask[:, None, :]
            # a padded query may see no key at all: let it see itself (its output is zeroed below)
            allowed[:, torch.arange(T, device=hidden.device), rows] = True
            with sdpa_kernel(SDPA_BACKENDS):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], enable_gqa=gqa)
        out = self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        if cache is not None:
            cache.keys, cache.values, cache.key_mask = k, v, key_mask
            after = torch.where(new_mask, positions + 1, torch.zeros_like(positions)).max(-1).values
            cache.next_position = after if cache.next_position is None else torch.maximum(cache.next_position, after)
            cache.seen_tokens += T
        return out
