"""Mamba-2 mixer on the DLA op (``beta=None``: ``S_t = a_t S_{t-1} + B_t (x_t dt_t)^T``, ``o_t = C_t^T S_t``)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dla.layers.modules import GatedRMSNorm, ShortConv, inverse_softplus_dt, mark_no_weight_decay, uniform_log
from dla.layers.recurrent import Projected, RecurrentMixer


class Mamba2Mixer(RecurrentMixer):
    """Mamba-2 (SSD) mixer whose state is read through a DLA memory policy.

    ``in_proj`` gives the gate ``z``, the convolved stream ``xBC`` (values ``x [H, P]``, the shared ``B``/``C`` of
    ``num_qk_heads`` groups, state size ``N``) and the step ``dt``. With ``dt = softplus(dt_raw + dt_bias)`` and
    ``A = -exp(A_log)``, the op gets ``q = C``, ``k = B``, ``v = x * dt``, ``g = A * dt``, ``scale = 1``; the output is
    ``out_proj(RMSNorm((o + D x) * silu(z)))`` normalised per group (``norm_before_gate=False``, as Mamba-2).

    The skip ``D x`` (per head, ``D = 1`` at init in Mamba-2) is ``skip_init``: ``None`` leaves it out. At init the
    op's output is far smaller than the skip (``v = x dt`` with ``dt`` in ``[dt_min, dt_max]``), so the gated norm
    sees almost only ``x``; on recall tasks this stalls training (docs/results.md measures it).

    Args:
        hidden_size: model width.
        num_heads: heads ``H``; the inner width is ``H * head_v_dim`` (Mamba-2's ``expand * hidden_size``).
        head_v_dim: head dimension ``P`` (Mamba-2's ``headdim``).
        head_k_dim: state size ``N`` (Mamba-2's ``d_state``).
        num_qk_heads: groups of ``B``/``C`` (Mamba-2's ``ngroups``), must divide ``num_heads``.
        conv_size: width of the causal depthwise convolution over ``xBC`` (with bias, as Mamba-2).
        norm_eps: epsilon of the gated RMSNorm.
        dt_min, dt_max, dt_floor: ``dt`` init range (log-uniform) and floor, stored as ``softplus^-1(dt)``.
        a_init_range: ``A ~ U[a_init_range]``, stored as ``A_log``.
        skip_init: initial value of the per-head skip ``D`` in ``o + D x`` (trained); ``None`` = no skip term.
        **policy_kwargs: ``policy``, ``capacity``, ``tau``, ``score``, ``block_size``, ``chunk_size``,
            ``max_position_embeddings``, ``layer_idx`` of :class:`~dla.layers.recurrent.RecurrentMixer`.

    ``A_log``, ``dt_bias``, ``D`` (when present) and ``lam_scale`` carry ``_no_weight_decay = True``.

    Example:
        >>> mixer = Mamba2Mixer(64, num_heads=4, head_v_dim=32, head_k_dim=16, policy="dla", capacity=4)
        >>> mixer(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, hidden_size: int, num_heads: int, head_v_dim: int = 64, head_k_dim: int = 128,
                 num_qk_heads: int = 1, conv_size: int = 4, norm_eps: float = 1e-5, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_floor: float = 1e-4, a_init_range: Tuple[float, float] = (1.0, 16.0),
                 skip_init: Optional[float] = 1.0, **policy_kwargs: Any):
        super().__init__(hidden_size, num_heads, num_qk_heads, head_k_dim, head_v_dim, **policy_kwargs)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not 0 < a_init_range[0] <= a_init_range[1]:
            raise ValueError(f"a_init_range: expected 0 < low <= high, got {a_init_range}")
        if skip_init is not None and (isinstance(skip_init, bool) or not isinstance(skip_init, (int, float))
                                      or not math.isfinite(skip_init)):
            raise ValueError(f"skip_init: expected a finite number or None, got {skip_init!r}")
        self.skip_init = None if skip_init is None else float(skip_init)
        self.dt_min, self.dt_max, self.dt_floor, self.a_init_range = dt_min, dt_max, dt_floor, tuple(a_init_range)
        self.scale = 1.0
        self.inner_size = num_heads * head_v_dim
        self.conv_dim = self.inner_size + 2 * num_qk_heads * head_k_dim
        self.in_proj = nn.Linear(hidden_size, self.inner_size + self.conv_dim + num_heads, bias=False)
        self.conv = ShortConv(self.conv_dim, conv_size, bias=True)
        self.A_log = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads)))
        self.dt_bias = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads)))
        self.D = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads))) if skip_init is not None else None
        self.norm = GatedRMSNorm(self.inner_size, group_size=self.inner_size // num_qk_heads, eps=norm_eps,
                                 norm_before_gate=False)
        self.out_proj = nn.Linear(self.inner_size, hidden_size, bias=False)
        self.reset_parameters()

    def initial_values(self) -> Dict[str, torch.Tensor]:
        """``A_log = log U[a_init_range]``, ``dt_bias = softplus^-1(dt)``, ``D = skip_init``, ``lam_scale = 1``."""
        device = self.A_log.device
        values = {**super().initial_values(),
                  "A_log": uniform_log(self.num_heads, *self.a_init_range, device=device),
                  "dt_bias": inverse_softplus_dt(self.num_heads, self.dt_min, self.dt_max, self.dt_floor, device)}
        if self.D is not None:
            values["D"] = torch.full((self.num_heads,), self.skip_init, device=device)
        return values

    def _project(self, hidden: torch.Tensor, conv_tail: Optional[torch.Tensor],
                 cu_seqlens: Optional[torch.Tensor] = None) -> Projected:
        B, T, _ = hidden.shape
        H, G, N, P = self.num_heads, self.num_qk_heads, self.head_k_dim, self.head_v_dim
        z, xBC, dt = torch.split(self.in_proj(hidden), [self.inner_size, self.conv_dim, H], -1)
        xBC, tail = self.conv(xBC, conv_tail, cu_seqlens)
        x, Bm, Cm = torch.split(xBC, [self.inner_size, G * N, G * N], -1)
        x = x.reshape(B, T, H, P)
        dt = F.softplus(dt + self.dt_bias.to(dt.dtype))  # [B, T, H]
        g = -torch.exp(self.A_log.to(dt.dtype)) * dt
        v = x * dt[..., None]
        return Cm.reshape(B, T, G, N), Bm.reshape(B, T, G, N), v, g, None, (x, z), tail

    def _output(self, o: torch.Tensor, aux: Any) -> torch.Tensor:
        x, z = aux
        B, T = o.shape[:2]
        if self.D is not None:
            o = o + self.D.to(o.dtype)[:, None] * x
        y = o.reshape(B, T, self.inner_size)
        return self.out_proj(self.norm(y, z))
