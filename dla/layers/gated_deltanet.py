"""Gated DeltaNet mixer on the DLA op (``S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dla.layers.modules import GatedRMSNorm, ShortConv, inverse_softplus_dt, mark_no_weight_decay, uniform_log
from dla.layers.recurrent import Projected, RecurrentMixer


class GatedDeltaNetMixer(RecurrentMixer):
    """Gated DeltaNet mixer whose state is read through a DLA memory policy.

    ``q``, ``k``, ``v`` come from linear projections and one causal depthwise convolution (SiLU); ``q`` and ``k``
    are L2-normalised per head (``use_qk_l2norm``, as fla's ``use_qk_l2norm_in_kernel``), ``beta = sigmoid(b_proj x)``,
    ``g = -exp(A_log) * softplus(a_proj x + dt_bias)``, ``scale = K^-0.5``. The output is
    ``o_proj(RMSNorm(o) * silu(gate_proj x))`` normalised per head.

    Args:
        hidden_size: model width.
        num_heads: value heads ``H``.
        head_k_dim: key head dimension ``K``.
        head_v_dim: value head dimension ``V``.
        num_qk_heads: query/key heads ``G`` (default ``num_heads``; fewer = grouped value heads), must divide
            ``num_heads``.
        conv_size: width of the causal depthwise convolution over ``[q, k, v]`` (no bias).
        norm_eps: epsilon of the output RMSNorm.
        dt_min, dt_max, dt_floor: init of ``dt_bias`` as in Mamba-2.
        a_init_range: ``A ~ U[a_init_range]`` (Gated DeltaNet: ``(0, 16)``), stored as ``A_log``.
        use_qk_l2norm: L2-normalise ``q`` and ``k`` per head (default, as fla's Gated DeltaNet layer). Without it the
            delta rule ``I - beta k k^T`` is stable only while ``beta ||k||^2 <= 2``: large keys make the state
            grow without bound.
        **policy_kwargs: ``policy``, ``capacity``, ``tau``, ``score``, ``block_size``, ``chunk_size``,
            ``max_position_embeddings``, ``layer_idx`` of :class:`~dla.layers.recurrent.RecurrentMixer`.

    ``A_log``, ``dt_bias`` and ``lam_scale`` carry ``_no_weight_decay = True``.

    Example:
        >>> mixer = GatedDeltaNetMixer(64, num_heads=2, head_k_dim=16, head_v_dim=32, policy="fenwick",
        ...                            max_position_embeddings=128)
        >>> mixer(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, hidden_size: int, num_heads: int, head_k_dim: int = 64, head_v_dim: int = 128,
                 num_qk_heads: Optional[int] = None, conv_size: int = 4, norm_eps: float = 1e-5,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4,
                 a_init_range: Tuple[float, float] = (0.0, 16.0), use_qk_l2norm: bool = True, **policy_kwargs: Any):
        num_qk_heads = num_heads if num_qk_heads is None else num_qk_heads
        super().__init__(hidden_size, num_heads, num_qk_heads, head_k_dim, head_v_dim, **policy_kwargs)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not 0 <= a_init_range[0] <= a_init_range[1] or a_init_range[1] <= 0:
            raise ValueError(f"a_init_range: expected 0 <= low <= high, high > 0, got {a_init_range}")
        if not isinstance(use_qk_l2norm, bool):
            raise ValueError(f"use_qk_l2norm: expected a bool, got {use_qk_l2norm!r}")
        self.dt_min, self.dt_max, self.dt_floor, self.a_init_range = dt_min, dt_max, dt_floor, tuple(a_init_range)
        self.use_qk_l2norm = use_qk_l2norm
        self.key_size, self.value_size = num_qk_heads * head_k_dim, num_heads * head_v_dim
        self.q_proj = nn.Linear(hidden_size, self.key_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_size, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.gate_proj = nn.Linear(hidden_size, self.value_size, bias=False)
        self.conv = ShortConv(2 * self.key_size + self.value_size, conv_size, bias=False)
        self.A_log = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads)))
        self.dt_bias = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads)))
        self.norm = GatedRMSNorm(head_v_dim, group_size=head_v_dim, eps=norm_eps, norm_before_gate=True)
        self.o_proj = nn.Linear(self.value_size, hidden_size, bias=False)
        self.reset_parameters()

    def initial_values(self) -> Dict[str, torch.Tensor]:
        """``A_log = log U[a_init_range]`` (clamped away from 0), ``dt_bias = softplus^-1(dt)``, ``lam_scale = 1``."""
        device = self.A_log.device
        low = max(self.a_init_range[0], 1e-4)
        return {**super().initial_values(),
                "A_log": uniform_log(self.num_heads, low, max(self.a_init_range[1], low), device=device),
                "dt_bias": inverse_softplus_dt(self.num_heads, self.dt_min, self.dt_max, self.dt_floor, device)}

    def _project(self, hidden: torch.Tensor, conv_tail: Optional[torch.Tensor],
                 cu_seqlens: Optional[torch.Tensor] = None) -> Projected:
        B, T, _ = hidden.shape
        H, G, K, V = self.num_heads, self.num_qk_heads, self.head_k_dim, self.head_v_dim
        qkv = torch.cat([self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)], -1)
        qkv, tail = self.conv(qkv, conv_tail, cu_seqlens)
        q, k, v = torch.split(qkv, [self.key_size, self.key_size, self.value_size], -1)
        q, k = q.reshape(B, T, G, K), k.reshape(B, T, G, K)
        if self.use_qk_l2norm:
            q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
        beta = torch.sigmoid(self.b_proj(hidden))
        g = -torch.exp(self.A_log.to(hidden.dtype)) * F.softplus(self.a_proj(hidden) + self.dt_bias.to(hidden.dtype))
        return q, k, v.reshape(B, T, H, V), g, beta, self.gate_proj(hidden), tail

    def _output(self, o: torch.Tensor, aux: Any) -> torch.Tensor:
        B, T = o.shape[:2]
        gate = aux.reshape(B, T, self.num_heads, self.head_v_dim)
        return self.o_proj(self.norm(o, gate).reshape(B, T, self.value_size))
