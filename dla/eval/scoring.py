"""Token scoring and greedy/sampled decoding through the model's decoding cache.

Every function here runs a DLA model piece by piece through a :class:`~dla.models.DLACache`: a long input is
fed in chunks of ``chunk_size`` tokens, each continuing from the cache the previous chunk left, so activations
and logits are held for one chunk only and recurrent layers keep constant memory. Prefill then one-token steps
(decoding) and chunked prefill compute what one pass over the whole sequence computes (the model's decoding
tests check this).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def new_cache(model):
    """An empty :class:`~dla.models.DLACache` for ``model``."""
    from dla.models import DLACache

    return DLACache(model.config)


def select_cache(cache, index: torch.Tensor):
    """A new cache holding rows ``index`` of ``cache`` (rows may repeat); ``cache`` is left unchanged."""
    out = copy.copy(cache)
    out.layers = [dataclasses.replace(layer) for layer in cache.layers]
    out.batch_select_indices(index)
    return out


@torch.no_grad()
def score_tokens(model, input_ids: torch.Tensor, targets: torch.Tensor, *, attention_mask: Optional[torch.Tensor] = None,
                 cache=None, chunk_size: int = 2048) -> Tuple[torch.Tensor, torch.Tensor, object]:
    """Log-probability of ``targets`` under the model fed ``input_ids``, chunk by chunk through ``cache``.

    Args:
        model: a :class:`~dla.models.DLAForCausalLM`.
        input_ids: ``[B, T]`` int64 inputs.
        targets: ``[B, T]`` int64; ``targets[:, t]`` is scored against the logits at position ``t``; negative
            entries are not scored (their log-probability is 0).
        attention_mask: ``[B, T]`` 1 for tokens, 0 for (left) padding, or ``None``.
        cache: a ``DLACache`` to continue from (updated in place); ``None`` starts a new one.
        chunk_size: tokens per forward call.

    Returns:
        ``(logp [B, T] float64, greedy [B, T] bool, cache)``: ``greedy`` is whether the target is the argmax.
    """
    if input_ids.shape != targets.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids, targets: expected equal [B, T] shapes, got {tuple(input_ids.shape)} and "
                         f"{tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    cache = new_cache(model) if cache is None else cache
    device = next(model.parameters()).device
    B, T = input_ids.shape
    logp = torch.zeros(B, T, dtype=torch.float64)
    greedy = torch.ones(B, T, dtype=torch.bool)
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        mask = attention_mask[:, s:e].to(device) if attention_mask is not None else None
        logits = model(input_ids=input_ids[:, s:e].to(device), attention_mask=mask, past_key_values=cache,
                       use_cache=True).logits
        lp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # [B, t, V]
        tgt = targets[:, s:e].to(device)
        scored = tgt >= 0
        safe = tgt.clamp(min=0)
        chunk_lp = lp.gather(-1, safe[..., None])[..., 0]
        logp[:, s:e] = torch.where(scored, chunk_lp, 0.0).double().cpu()
        greedy[:, s:e] = ((lp.argmax(-1) == safe) | ~scored).cpu()
    return logp, greedy, cache


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, T], mask [B, T])``: ``rows`` left-padded with ``pad_id`` to the longest."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, T - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, T - len(r):] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, T], valid [B, T] bool)``: ``rows`` right-padded with ``pad_id`` to the longest."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        valid[i, :len(r)] = True
    return ids, valid


@torch.no_grad()
def prefill(model, rows: Sequence[Sequence[int]], pad_id: int, chunk_size: int = 2048):
    """Run left-padded ``rows`` through a new cache; return ``(cache, last_logits [B, V] float32)``.

    Every row must hold at least one token.
    """
    if any(len(r) == 0 for r in rows):
        raise ValueError("rows: every prompt must hold at least one token")
    ids, mask = left_pad(rows, pad_id)
    device = next(model.parameters()).device
    cache = new_cache(model)
    T = ids.shape[1]
    last = None
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        out = model(input_ids=ids[:, s:e].to(device), attention_mask=mask[:, s:e].to(device), past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        last = out.logits[:, -1].float()
    return cache, last


@torch.no_grad()
def decode(model, rows: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
           stop: Callable[[int, List[int]], bool], do_sample: bool = False, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, generator: Optional[torch.Generator] = None,
           chunk_size: int = 2048) -> List[List[int]]:
    """Generate up to ``max_new_tokens`` tokens after each prompt of ``rows``: one prefill, then one-token steps.

    The prompt is encoded once (chunked prefill); every new token costs one step from the cache.

    Args:
        rows: prompts (token ids), at least one token each; left-padded together.
        max_new_tokens: the most tokens generated per row.
        pad_id: id used for padding (never attended to).
        stop: ``stop(row_index, generated_ids) -> bool``, checked after each token; a stopped row stops growing.
        do_sample: sample from ``softmax(logits / temperature)`` (with ``top_k`` / ``top_p`` filtering) instead
            of taking the argmax.
        generator: torch generator for sampling.

    Returns:
        The generated ids of every row (the token that made ``stop`` true included).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
    out: List[List[int]] = [[] for _ in rows]
    if max_new_tokens == 0 or not rows:
        return out
    device = next(model.parameters()).device
    cache, logits = prefill(model, rows, pad_id, chunk_size)
    done = [False] * len(rows)
    for step in range(max_new_tokens):
        nxt = _choose(logits, do_sample, temperature, top_k, top_p, generator)
        for i, tok in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].append(tok)
                done[i] = stop(i, out[i])
        if all(done) or step == max_new_tokens - 1:
            break
        logits = model(input_ids=nxt[:, None].to(device), past_key_values=cache, use_cache=True).logits[:, -1].float()
    return out


def _choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: Optional[int],
            top_p: Optional[float], generator: Optional[torch.Generator]) -> torch.Tensor:
    if not do_sample or temperature <= 0:
        return logits.argmax(-1).cpu()
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


__all__ = ["new_cache", "select_cache", "score_tokens", "left_pad", "right_pad", "prefill", "decode"]
