"""AdamW with decay/no-decay parameter groups and the learning-rate schedule (linear warmup, then cosine, linear or
constant down to ``min_lr_ratio * lr``)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from dla.train.config import SCHEDULES, TrainSection


class WarmupDecay:
    """Learning-rate multiplier of step ``s`` (a picklable ``LambdaLR`` lambda, saved with the scheduler).

    ``(s + 1) / warmup`` during the first ``warmup`` steps, then from 1 down to ``min_ratio`` at ``total``:
    ``cosine`` ``min + (1 - min) (1 + cos(pi p)) / 2``, ``linear`` ``1 - (1 - min) p``, or ``constant`` 1, with
    ``p = (s - warmup) / (total - warmup)`` clipped to [0, 1].

    Example:
        >>> f = WarmupDecay(total=100, warmup=10, min_ratio=0.1)
        >>> round(f(0), 3), f(9), round(f(100), 3)
        (0.1, 1.0, 0.1)
    """

    def __init__(self, total: int, warmup: int = 0, min_ratio: float = 0.1, kind: str = "cosine") -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {kind!r}")
        if not 0 <= warmup <= total:
            raise ValueError(f"warmup_steps: expected 0 <= warmup_steps <= {total} (total steps), got {warmup}")
        self.total, self.warmup, self.min_ratio, self.kind = total, warmup, min_ratio, kind

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        p = min(max((step - self.warmup) / max(self.total - self.warmup, 1), 0.0), 1.0)
        if self.kind == "linear":
            return 1.0 - (1.0 - self.min_ratio) * p
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], no_decay: set[str], config: TrainSection,
                    device: torch.device) -> torch.optim.AdamW:
    """AdamW over two groups: weight-decayed parameters and those named in ``no_decay`` (decay 0).

    ``config.fused_adamw`` None means fused on CUDA and the default (foreach) implementation elsewhere.
    """
    decay, plain = [], []
    for name, p in named_params:
        if p.requires_grad:
            (plain if name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    fused = config.fused_adamw if config.fused_adamw is not None else device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: TrainSection) \
        -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with ``WarmupDecay``; ``scheduler.step()`` once per optimizer step."""
    schedule = WarmupDecay(total_steps, config.warmup_steps, config.min_lr_ratio, config.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


__all__ = ["WarmupDecay", "build_optimizer", "build_scheduler"]
