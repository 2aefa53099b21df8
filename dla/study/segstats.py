"""How a trained model segments held-out MQAR examples: boundary rates in the context and the query region, slots
live, merges, and where boundaries fall relative to the key-value pairs.

The numbers come from the segmentation each recurrent layer's op computes during an ordinary forward
(:func:`dla.layers.capture_segmentations`): nothing is recomputed. An MQAR example of ``N`` pairs is
``k1 v1 ... kN vN`` (the context, positions ``0 .. 2N-1``: keys at even positions, values at odd ones) followed by
the query region, where the scored positions (labels other than -100) hold the query keys.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from dla.data.synthetic import IGNORE_INDEX
from dla.layers import RecurrentMixer, capture_segmentations

STAT_KEYS = ("boundary_rate_context", "boundary_rate_query", "boundary_rate_keys", "boundary_rate_values",
             "boundary_rate_query_keys", "boundary_rate_filler", "slots_end_context", "slots_end", "merges_context",
             "merges_query", "starts_at_keys", "score_context", "score_query")
"""What :func:`mqar_segmentation_stats` reports per layer (see its docstring)."""


def has_segmentation(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a recurrent mixer whose policy keeps more than one slot (so a segmentation to
    report): every policy but ``single``."""
    return any(isinstance(m, RecurrentMixer) and m.policy != "single" for m in model.modules())


@torch.no_grad()
def mqar_segmentation_stats(model: torch.nn.Module, inputs: np.ndarray, labels: np.ndarray, num_kv_pairs: int,
                            batch_size: int = 64, device: Optional[torch.device] = None) -> list[dict]:
    """Per recurrent layer, the segmentation statistics of ``model`` on MQAR examples.

    Args:
        model: a causal LM whose recurrent mixers are :class:`~dla.layers.RecurrentMixer` (a DLA model).
        inputs, labels: ``int64 [N, T]`` MQAR examples (``dla.data.mqar.generate_mqar``).
        num_kv_pairs: ``N`` pairs of the examples (the context is the first ``2N`` tokens).
        batch_size: examples per forward.
        device: where to run (default: the model's).

    Returns:
        one dict per recurrent layer, in layer order, with ``layer`` (module name), ``policy``, ``capacity`` (the
        most live slots: ``C``, or the Fenwick levels), ``examples`` and, averaged over examples and heads:

        * ``boundary_rate_context`` / ``boundary_rate_query``: fraction of tokens that open a slot, in the context
          and in the query region;
        * ``boundary_rate_keys`` / ``boundary_rate_values``: the same at the context's keys and values (a boundary
          at a value splits a pair across two slots);
        * ``boundary_rate_query_keys`` / ``boundary_rate_filler``: the query region's scored keys and its other
          tokens;
        * ``slots_end_context`` / ``slots_end``: live slots after the last context token and after the last token;
        * ``merges_context`` / ``merges_query``: merges per sequence and head in each region;
        * ``starts_at_keys``: of the slots live after the context that start inside it, the fraction starting at a
          key (slots holding whole pairs);
        * ``score_context`` / ``score_query``: mean information score.

    Raises:
        ValueError: mismatched arrays, ``num_kv_pairs`` that does not fit, or a model without recurrent mixers.
    """
    if inputs.shape != labels.shape or inputs.ndim != 2:
        raise ValueError(f"inputs, labels: expected two [N, T] arrays of one shape, got {inputs.shape} and "
                         f"{labels.shape}")
    ctx = 2 * num_kv_pairs
    if not 0 < ctx < inputs.shape[1]:
        raise ValueError(f"num_kv_pairs: a context of 2 * {num_kv_pairs} tokens does not fit T = {inputs.shape[1]}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, dict[str, float]] = {}
    policies: dict[str, tuple[str, int]] = {
        name: (m.policy, m.state_width or m.capacity) for name, m in model.named_modules()
        if isinstance(m, RecurrentMixer)}
    try:
        for lo in range(0, len(inputs), batch_size):
            ids = torch.from_numpy(inputs[lo:lo + batch_size]).to(device)
            scored = torch.from_numpy(labels[lo:lo + batch_size] != IGNORE_INDEX).to(device)
            with capture_segmentations(model) as records:
                model(input_ids=ids, use_cache=False)
            for name, segs in records.items():
                if len(segs) != 1:
                    raise ValueError(f"model: {name} made {len(segs)} op calls for one forward; expected 1")
                acc = sums.setdefault(name, {})
                for key, value in _batch_sums(segs[0], scored, ctx).items():
                    acc[key] = acc.get(key, 0.0) + value
    finally:
        model.train(was_training)
    if not sums:
        raise ValueError("model: has no recurrent mixer, so no segmentation")
    out = []
    for name, acc in sums.items():
        policy, capacity = policies[name]
        row = {"layer": name, "policy": policy, "capacity": capacity, "examples": int(len(inputs))}
        for key in STAT_KEYS:
            num, den = acc.get(key, 0.0), acc.get(key + "/n", 0.0)
            row[key] = num / den if den else None
        out.append(row)
    return out


def _batch_sums(seg, scored: torch.Tensor, ctx: int) -> dict[str, float]:
    """Numerators and counts (``key/n``) of every statistic over one batch."""
    boundary = seg.boundary.float()  # [B, T, H]
    score = seg.score.float()
    merged = (seg.merged >= 0).float()
    B, T, H = boundary.shape
    region = torch.zeros(T, dtype=torch.bool, device=boundary.device)
    region[:ctx] = True
    keys = region.clone()
    keys[1::2] = False
    values = region & ~keys
    query = ~region
    qkeys = scored & query[None]  # [B, T]
    filler = ~scored & query[None]

    def rate(x: torch.Tensor, mask: torch.Tensor, name: str) -> dict:
        m = mask[..., None].expand_as(x) if mask.dim() == 2 else mask[None, :, None].expand_as(x)
        return {name: float(x[m].sum()), name + "/n": float(m.sum())}

    out = {}
    out.update(rate(boundary, region, "boundary_rate_context"))
    out.update(rate(boundary, query, "boundary_rate_query"))
    out.update(rate(boundary, keys, "boundary_rate_keys"))
    out.update(rate(boundary, values, "boundary_rate_values"))
    out.update(rate(boundary, qkeys, "boundary_rate_query_keys"))
    out.update(rate(boundary, filler, "boundary_rate_filler"))
    out.update(rate(score, region, "score_context"))
    out.update(rate(score, query, "score_query"))
    out["slots_end_context"], out["slots_end_context/n"] = float(seg.num_slots[:, ctx - 1].sum()), B * H
    out["slots_end"], out["slots_end/n"] = float(seg.num_slots[:, -1].sum()), B * H
    out["merges_context"], out["merges_context/n"] = float(merged[:, :ctx].sum()), B * H
    out["merges_query"], out["merges_query/n"] = float(merged[:, ctx:].sum()), B * H
    starts = seg.starts[:, ctx - 1]  # [B, H, R] newest first
    live = torch.arange(starts.shape[-1], device=starts.device) < seg.num_slots[:, ctx - 1, :, None]
    inside = live & (starts >= 0) & (starts < ctx)
    out["starts_at_keys"] = float((inside & (starts % 2 == 0)).sum())
    out["starts_at_keys/n"] = float(inside.sum())
    return out


__all__ = ["mqar_segmentation_stats", "has_segmentation", "STAT_KEYS"]
