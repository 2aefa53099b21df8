"""Metrics of the synthetic and language-modelling evaluations.

Array arguments may be numpy arrays, torch tensors (any device) or nested lists; results are Python floats
or numpy arrays.

* ``masked_accuracy``: MQAR (Zoology's accuracy over the labelled positions) and the token NIAH / passkey
  tasks (``per_example=True``: every scored token of a row right).
* ``string_match`` / ``string_match_all``: RULER NIAH (fraction of target strings in the prediction).
* ``passkey_accuracy``: the first number in the generation equals the passkey.
* ``perplexity``: ``exp(sum NLL / sum tokens)``.
* ``position_loss`` / ``PositionLoss``: mean loss per position bucket, e.g. ``log_spaced_edges``.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from .synthetic.common import IGNORE_INDEX


def _tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array or tensor, got {type(x).__name__}") from e


def masked_accuracy(predictions, labels, *, ignore_index: int = IGNORE_INDEX, per_example: bool = False) -> float:
    """Accuracy over the positions whose label is not ``ignore_index`` (the MQAR metric).

    Args:
        predictions: ``[..., T]`` predicted ids, or ``[..., T, V]`` logits (argmax is taken).
        labels: ``[..., T]`` target ids, ``ignore_index`` where not scored.
        ignore_index: label of unscored positions.
        per_example: False: fraction of scored positions predicted right (Zoology's accuracy; equal to the mean
            of per-example accuracies when every example has the same number of queries). True: fraction of
            examples (rows over the last dim) with every scored position right; rows with none are skipped.

    Returns:
        float in ``[0, 1]``.
    """
    labels = _tensor("labels", labels)
    predictions = _tensor("predictions", predictions).to(labels.device)
    if predictions.dim() == labels.dim() + 1:
        predictions = predictions.argmax(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} must have the shape of labels {tuple(labels.shape)}"
                         " (or that shape plus a vocabulary dim for logits)")
    scored = labels != ignore_index
    if not bool(scored.any()):
        raise ValueError(f"labels has no scored position (every label is ignore_index={ignore_index})")
    right = predictions == labels
    if not per_example:
        return float((right & scored).sum().item() / scored.sum().item())
    scored, right = scored.reshape(-1, labels.shape[-1]), right.reshape(-1, labels.shape[-1])
    rows = scored.any(-1)
    return float((right | ~scored).all(-1)[rows].double().mean().item())


def _check_str(name: str, x) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{name} must be a str, got {type(x).__name__}")
    return x


def string_match(prediction: str, targets: Union[str, Sequence[str]]) -> float:
    """RULER's score of one generation: the fraction of ``targets`` contained in ``prediction``,
    case-insensitively. A single target may be passed as a str."""
    prediction = _check_str("prediction", prediction).lower()
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ValueError("targets must hold at least one string")
    return sum(_check_str("targets", t).lower() in prediction for t in targets) / len(targets)


def string_match_all(predictions: Sequence[str], targets: Sequence[Union[str, Sequence[str]]]) -> float:
    """RULER's ``string_match_all``: ``string_match`` averaged over examples (papers report it x100).

    Args:
        predictions: one generation per example.
        targets: per example, the target strings (an example's ``"target"``) or one string.
    """
    if isinstance(predictions, str) or len(predictions) != len(targets) or not len(predictions):
        raise ValueError(f"predictions and targets must be equally long non-empty sequences, got "
                         f"{len(predictions)} and {len(targets)}")
    return sum(string_match(p, t) for p, t in zip(predictions, targets)) / len(predictions)


def passkey_accuracy(predictions: Sequence[str], passkeys: Sequence[Union[str, int]]) -> float:
    """Fraction of generations whose first run of digits equals the passkey (the landmark-attention rule).

    Example:
        >>> passkey_accuracy([" 48213. Remember", "I think 4821"], ["48213", 48213])
        0.5
    """
    if isinstance(predictions, str) or len(predictions) != len(passkeys) or not len(predictions):
        raise ValueError(f"predictions and passkeys must be equally long non-empty sequences, got "
                         f"{len(predictions)} and {len(passkeys)}")
    hits = 0
    for p, key in zip(predictions, passkeys):
        found = re.search(r"\d+", _check_str("predictions", p))
        hits += found is not None and found.group() == str(key).strip()
    return hits / len(predictions)


def perplexity(nll_sum, num_tokens) -> float:
    """``exp(sum(nll_sum) / sum(num_tokens))``: perplexity from summed negative log-likelihoods (nats).

    Args:
        nll_sum: a number or array of per-document/per-batch NLL sums.
        num_tokens: the matching token counts; their total must be > 0.
    """
    total_nll = _tensor("nll_sum", nll_sum).double().sum().item()
    total_tokens = _tensor("num_tokens", num_tokens).double().sum().item()
    if not total_tokens > 0:
        raise ValueError(f"num_tokens must sum to > 0, got {total_tokens}")
    if not math.isfinite(total_nll):
        raise ValueError(f"nll_sum must be finite, got {total_nll}")
    return math.exp(total_nll / total_tokens)


def log_spaced_edges(seq_len: int, base: float = 2.0) -> np.ndarray:
    """Bucket edges ``[0, 1, 2, 4, ..., seq_len]`` (powers of ``base``, rounded and deduplicated): bucket
    ``i`` holds positions ``edges[i] <= t < edges[i + 1]``."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    powers = np.round(base ** np.arange(0, math.log(seq_len, base) + 1)).astype(np.int64)
    return np.unique(np.concatenate([[0], powers[powers < seq_len], [seq_len]]))


class BucketLoss(NamedTuple):
    """Mean loss per position bucket.

    Attributes:
        edges: ``[B + 1]`` int64; bucket ``i`` is positions ``edges[i] <= t < edges[i + 1]``.
        mean: ``[B]`` float64 mean loss of the bucket (NaN where it has no token).
        count: ``[B]`` int64 tokens in the bucket.
    """

    edges: np.ndarray
    mean: np.ndarray
    count: np.ndarray


class PositionLoss:
    """Accumulates per-position loss sums and token counts over batches, then buckets them.

    Example:
        >>> acc = PositionLoss()
        >>> acc.update(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> acc.compute([0, 1, 4]).mean.tolist()
        [1.0, 3.0]
    """

    def __init__(self):
        self.loss_sum = np.zeros(0, dtype=np.float64)  # [T]
        self.count = np.zeros(0, dtype=np.int64)  # [T]

    def update(self, loss, mask=None) -> None:
        """Add ``loss`` ``[T]`` or ``[B, T]`` (per-token NLL at position ``t``); ``mask`` (same shape, bool)
        marks the tokens to count (all when None)."""
        loss = _tensor("loss", loss).detach().double()
        if loss.dim() not in (1, 2):
            raise ValueError(f"loss must be [T] or [B, T], got shape {tuple(loss.shape)}")
        loss = loss.reshape(-1, loss.shape[-1])
        if mask is None:
            mask = torch.ones_like(loss, dtype=torch.bool)
        else:
            mask = _tensor("mask", mask).to(loss.device).bool()
            if mask.numel() != loss.numel():
                raise ValueError(f"mask must have the shape of loss {tuple(loss.shape)}, got {tuple(mask.shape)}")
            mask = mask.reshape(loss.shape)
        if bool(torch.isnan(loss[mask]).any()):
            raise ValueError("loss has NaN at a counted position")
        t = loss.shape[-1]
        if t > len(self.count):
            self.loss_sum = np.pad(self.loss_sum, (0, t - len(self.loss_sum)))
            self.count = np.pad(self.count, (0, t - len(self.count)))
        self.loss_sum[:t] += torch.where(mask, loss, 0.0).sum(0).cpu().numpy()
        self.count[:t] += mask.sum(0).cpu().numpy()

    def compute(self, edges: Optional[Sequence[int]] = None) -> BucketLoss:
        """Bucket the totals; ``edges`` defaults to ``log_spaced_edges`` of the longest sequence seen.

        Edges must increase strictly from 0 and end at or past the longest sequence seen.
        """
        t = len(self.count)
        if t == 0:
            raise ValueError("PositionLoss.compute called before any update")
        edges = log_spaced_edges(t) if edges is None else np.asarray(edges, dtype=np.int64)
        if edges.ndim != 1 or len(edges) < 2 or edges[0] != 0 or edges[-1] < t or (np.diff(edges) <= 0).any():
            raise ValueError(f"edges must increase strictly from 0 to >= {t} (longest sequence), got {edges.tolist()}")
        csum = np.concatenate([[0.0], np.cumsum(self.loss_sum)])
        ccount = np.concatenate([[0], np.cumsum(self.count)])
        ends = np.minimum(edges, t)
        total, count = np.diff(csum[ends]), np.diff(ccount[ends])
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return BucketLoss(edges, mean, count)


def position_loss(loss, mask=None, edges: Optional[Sequence[int]] = None) -> BucketLoss:
    """Mean loss per position bucket of one ``[T]`` or ``[B, T]`` loss array (see ``PositionLoss``).

    Example:
        >>> position_loss([[2.0, 2.0, 4.0, 6.0]], edges=[0, 2, 4]).mean.tolist()
        [2.0, 5.0]
    """
    acc = PositionLoss()
    acc.update(loss, mask)
    return acc.compute(edges)
