"""Building blocks shared by the mixers: norms, the short causal convolution, RoPE, standard inits and input guards.

Modules whose parameters need a non-default init expose ``initial_values() -> {name: tensor}``: the layer applies
it at construction (``reset_parameters``) and the model's ``_init_weights`` applies it through the loader-aware
init functions of transformers, so loaded weights are never overwritten.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def mark_no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag ``param`` so optimizers built by this project (and fla's) leave it out of weight decay."""
    param._no_weight_decay = True
    return param


def copy_initial_values(module: nn.Module) -> None:
    """Copy ``module.initial_values()`` into its parameters (plain PyTorch construction path)."""
    with torch.no_grad():
        for name, value in module.initial_values().items():
            getattr(module, name).copy_(value)


def inverse_softplus_dt(num_heads: int, dt_min: float, dt_max: float, dt_floor: float,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """``dt_bias`` init of Mamba-2: ``dt ~ exp(U[log dt_min, log dt_max])`` clamped at ``dt_floor``, returned as
    ``softplus^-1(dt)`` so that ``softplus(0 + dt_bias) = dt``."""
    dt = torch.exp(torch.rand(num_heads, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))


def uniform_log(num_heads: int, low: float, high: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """``A_log`` init: ``log(A)`` with ``A ~ U[low, high]``."""
    return torch.log(torch.empty(num_heads, device=device).uniform_(low, high))


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in float32 (or float64)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(x.dtype, torch.float32)
        y = x.to(dt)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(dt)).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Gated RMSNorm of the mixer outputs, normalised in groups of ``group_size`` channels.

    ``norm_before_gate=False`` (Mamba-2): ``RMSNorm(x * silu(z)) * weight``;
    ``norm_before_gate=True`` (Gated DeltaNet): ``RMSNorm(x) * weight * silu(z)``.
    """

    def __init__(self, dim: int, group_size: int, eps: float = 1e-6, norm_before_gate: bool = False):
        super().__init__()
        if group_size < 1 or dim % group_size != 0:
            raise ValueError(f"group_size: must divide dim={dim}, got {group_size}")
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x``, ``z``: ``[..., dim]``; returns ``[..., dim]`` in the dtype of ``x``."""
        dt = torch.promote_types(x.dtype, torch.float32)
        y, gate = x.to(dt), F.silu(z.to(dt))
        if not self.norm_before_gate:
            y = y * gate
        shape = y.shape
        y = y.reshape(*shape[:-1], -1, self.group_size)
        y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).reshape(shape)
        y = y * self.weight.to(dt)
        if self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)


class ShortConv(nn.Module):
    """Causal depthwise convolution of width ``W`` over ``[B, T, D]`` followed by SiLU, with a cached tail.

    The tail is the last ``W - 1`` inputs (``[B, D, W - 1]``); feeding it back makes a call on ``x[:, t0:]``
    continue exactly a call on ``x[:, :t0]``. Zero inputs (masked padding) leave the output at later positions as
    if those tokens were absent only when they precede every real token (left padding).
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size: expected an int >= 1, got {kernel_size!r}")
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        copy_initial_values(self)

    def initial_values(self) -> Dict[str, torch.Tensor]:
        """PyTorch's default Conv1d init: ``U(-1/sqrt(W), 1/sqrt(W))`` for the depthwise weight and bias."""
        bound = 1.0 / math.sqrt(self.kernel_size)
        values = {"weight": torch.empty_like(self.weight).uniform_(-bound, bound)}
        if self.bias is not None:
            values["bias"] = torch.empty_like(self.bias).uniform_(-bound, bound)
        return values

    def forward(self, x: torch.Tensor, tail: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, D]``, ``tail [B, D, W - 1]`` or ``None`` (zeros) -> ``(silu(conv(x)) [B, T, D], new tail)``.

        ``cu_seqlens`` (``[N + 1]`` offsets of documents packed in ``x [1, T, D]``, no ``tail``): every document
        starts from zeros, as if run alone.
        """
        B, T, D = x.shape
        W = self.kernel_size
        xt = x.transpose(1, 2)
        if tail is None:
            tail = xt.new_zeros(B, D, W - 1)
        elif tuple(tail.shape) != (B, D, W - 1):
            raise ValueError(f"tail: expected shape {(B, D, W - 1)}, got {tuple(tail.shape)}")
        full = torch.cat([tail.to(xt.dtype), xt], -1)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if cu_seqlens is None:
            y = F.conv1d(full, self.weight.to(x.dtype).unsqueeze(1), bias, groups=D).transpose(1, 2)
        else:
            y = self._packed(x, cu_seqlens, bias)
        return F.silu(y), full[..., full.shape[-1] - (W - 1):]

    def _packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The convolution with taps reaching before their document's start zeroed: ``W`` shifted sums."""
        T, W = x.shape[1], self.kernel_size
        t = torch.arange(T, device=x.device)
        bounds = cu_seqlens.to(device=x.device, dtype=torch.int64)
        start = bounds[torch.searchsorted(bounds[1:], t, right=True).clamp_max(bounds.numel() - 2)]
        offset = (t - start)[None, :, None]  # [1, T, 1] position inside the document
        weight = self.weight.to(x.dtype)
        y = torch.zeros_like(x) if bias is None else bias.expand_as(x).clone()
        for j in range(min(W, T)):  # tap j reads x[t - j]
            shifted = F.pad(x, (0, 0, j, 0))[:, :T]
            y = y + torch.where(offset >= j, shifted, torch.zeros_like(shifted)) * weight[:, W - 1 - j]
        return y


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half convention) of ``x [B, H, T, D]`` at ``positions [B, T]``."""
    D = x.shape[-1]
    dt = torch.promote_types(x.dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, device=x.device, dtype=dt) / D))
    angles = positions.to(dt)[:, None, :, None] * inv_freq  # [B, 1, T, D/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dt)[..., :D // 2], x.to(dt)[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def check_hidden(hidden: torch.Tensor, hidden_size: int) -> None:
    """Raise ``ValueError`` unless ``hidden`` is ``[B, T, hidden_size]`` with at least one token."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != hidden_size or \
            hidden.shape[1] == 0:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden: expected [B, T, {hidden_size}] with T >= 1, got {shape}")


def check_mask(attention_mask: Optional[torch.Tensor], hidden: torch.Tensor,
               drop_full: bool = True) -> Optional[torch.Tensor]:
    """Validate a ``[B, T]`` 0/1 padding mask; return it as bool, or ``None`` when it masks nothing (that test reads
    the mask on the host; ``drop_full=False`` skips it and returns the mask as it is)."""
    if attention_mask is None:
        return None
    B, T = hidden.shape[:2]
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, T):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
        raise ValueError(f"attention_mask: expected a [B, T] = {(B, T)} 0/1 tensor (1 = token, 0 = padding), "
                         f"got {shape}")
    mask = attention_mask.to(device=hidden.device) != 0
    return None if drop_full and bool(mask.all()) else mask


def split_packed(cu_seqlens: torch.Tensor, hidden: torch.Tensor) -> List[Tuple[int, int]]:
    """Validate ``cu_seqlens`` for packed ``hidden [1, T, D]``; return the ``(start, end)`` of every document."""
    if hidden.shape[0] != 1:
        raise ValueError(f"cu_seqlens: packed sequences need hidden of batch 1 [1, T, D], got {tuple(hidden.shape)}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or \
            cu_seqlens.is_floating_point():
        raise ValueError(f"cu_seqlens: expected a 1-D integer tensor [N + 1] of document offsets, got {cu_seqlens!r}")
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if bounds[0] != 0 or bounds[-1] != hidden.shape[1] or any(b > e for b, e in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to T={hidden.shape[1]}, got {bounds}")
    return [(b, e) for b, e in zip(bounds, bounds[1:]) if e > b]
