"""Perplexity on held-out text and loss per position: does the loss keep falling with position, up to and past
the training length?

Each document is scored from its start: ``[EOS] + tokens`` (EOS doubles as BOS, the training convention), its
first ``seq_len`` predictions; position ``t`` is the prediction of document token ``t`` (0-based) from the
``t`` tokens before it plus the BOS. Documents shorter than ``seq_len`` add to the early positions only. The
model runs chunk by chunk through its decoding cache (:func:`dla.eval.scoring.score_tokens`), so ``seq_len``
may exceed the training length as far as the checkpoint allows (:func:`dla.eval.checkpoint.context_limit`).

Example:
    >>> res = evaluate_perplexity(model, tokenizer, docs, seq_len=4096, train_length=2048)  # doctest: +SKIP
    >>> res.perplexity, res.trend()["falling_past_train_length"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from dla.eval.checkpoint import context_limit
from dla.eval.metrics import PositionLoss, log_spaced_edges
from dla.eval.scoring import right_pad, score_tokens


@dataclass
class PerplexityResult:
    """Held-out loss of one model.

    Attributes:
        name: label (e.g. the checkpoint name).
        seq_len: predictions scored per document (at most).
        train_length: the training context length the trend is measured against.
        num_documents: documents scored.
        num_tokens: predictions scored.
        nll: mean negative log-likelihood per token (nats).
        perplexity: ``exp(nll)``.
        edges: ``[B + 1]`` bucket edges over positions.
        bucket_loss: ``[B]`` mean loss per bucket (NaN where empty).
        bucket_count: ``[B]`` predictions per bucket.
    """

    name: str
    seq_len: int
    train_length: int
    num_documents: int
    num_tokens: int
    nll: float
    perplexity: float
    edges: np.ndarray
    bucket_loss: np.ndarray
    bucket_count: np.ndarray

    def trend(self) -> Dict[str, Any]:
        """Slopes of bucket loss against ``log2(position)`` before and after ``train_length``.

        Returns:
            ``slope_within`` / ``slope_past`` (nats per doubling of position, least squares weighted by bucket
            counts; ``None`` with fewer than two buckets), ``loss_at_train_length`` (the bucket holding the last
            trained position), ``loss_past_train_length`` (mean over buckets starting at or after
            ``train_length``), and ``falling_past_train_length``: the loss past the training length is below
            the loss at it (``None`` when nothing past it was scored).
        """
        centre = (self.edges[:-1] + np.maximum(self.edges[1:] - 1, self.edges[:-1])) / 2.0 + 1.0
        ok = self.bucket_count > 0
        within = ok & (self.edges[1:] <= self.train_length)
        past = ok & (self.edges[:-1] >= self.train_length)

        def slope(sel: np.ndarray) -> Optional[float]:
            if sel.sum() < 2:
                return None
            x, y, w = np.log2(centre[sel]), self.bucket_loss[sel], self.bucket_count[sel].astype(float)
            xm, ym = np.average(x, weights=w), np.average(y, weights=w)
            den = np.sum(w * (x - xm) ** 2)
            return float(np.sum(w * (x - xm) * (y - ym)) / den) if den > 0 else None

        at = ok & (self.edges[:-1] < self.train_length) & (self.edges[1:] >= self.train_length)
        at_loss = float(self.bucket_loss[at][-1]) if at.any() else None
        past_loss = float(np.average(self.bucket_loss[past], weights=self.bucket_count[past])) if past.any() else None
        return {"slope_within": slope(within), "slope_past": slope(past), "loss_at_train_length": at_loss,
                "loss_past_train_length": past_loss,
                "falling_past_train_length": None if past_loss is None or at_loss is None else past_loss < at_loss}

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (arrays as lists, NaN as None), trend included."""
        return {"name": self.name, "seq_len": self.seq_len, "train_length": self.train_length,
                "num_documents": self.num_documents, "num_tokens": self.num_tokens, "nll": self.nll,
                "perplexity": self.perplexity, "edges": self.edges.tolist(),
                "bucket_loss": [None if math.isnan(v) else float(v) for v in self.bucket_loss],
                "bucket_count": self.bucket_count.tolist(), "trend": self.trend()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PerplexityResult":
        return cls(d["name"], d["seq_len"], d["train_length"], d["num_documents"], d["num_tokens"], d["nll"],
                   d["perplexity"], np.asarray(d["edges"], dtype=np.int64),
                   np.asarray([np.nan if v is None else v for v in d["bucket_loss"]], dtype=np.float64),
                   np.asarray(d["bucket_count"], dtype=np.int64))


def position_edges(seq_len: int, train_length: int) -> np.ndarray:
    """Log-spaced bucket edges up to ``seq_len`` with ``train_length`` itself an edge (when inside)."""
    edges = log_spaced_edges(seq_len)
    if 0 < train_length < seq_len:
        edges = np.unique(np.concatenate([edges, [train_length]]))
    return edges


@torch.no_grad()
def evaluate_perplexity(model, tokenizer, documents: Iterable[str], *, seq_len: int,
                        train_length: Optional[int] = None, max_documents: Optional[int] = None,
                        min_tokens: int = 1, batch_size: int = 1, chunk_size: int = 2048,
                        edges: Optional[Sequence[int]] = None, name: str = "model") -> PerplexityResult:
    """Score the first ``seq_len`` tokens of each held-out document.

    Args:
        model: a ``DLAForCausalLM`` (eval mode).
        tokenizer: ``transformers`` tokenizer of the model (``encode``, ``eos_token_id``).
        documents: held-out texts.
        seq_len: predictions per document at most; may exceed ``train_length``.
        train_length: the training context length (default ``config.max_position_embeddings``).
        max_documents: stop after this many scored documents.
        min_tokens: skip documents with fewer tokens (e.g. ``seq_len`` to score only full-length documents, so
            every bucket averages the same documents).
        batch_size: documents per forward (right-padded).
        chunk_size: tokens per forward call through the cache.
        edges: bucket edges; default :func:`position_edges`.
        name: label of the result.

    Raises:
        ValueError: ``seq_len`` past what the checkpoint supports, or no document scored.
    """
    for arg, value in (("seq_len", seq_len), ("batch_size", batch_size), ("chunk_size", chunk_size),
                       ("min_tokens", min_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}: expected an int >= 1, got {value!r}")
    limit = context_limit(model.config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len: {seq_len} is longer than this checkpoint supports ({limit} tokens: attention "
                         f"layers or the fenwick policy are built for max_position_embeddings={limit})")
    train_length = int(train_length or model.config.max_position_embeddings)
    bos = tokenizer.eos_token_id
    if bos is None:
        raise ValueError("tokenizer: has no eos_token (used as BOS at the start of every document)")
    acc = PositionLoss()
    batch: List[List[int]] = []
    docs = tokens = 0

    def flush():
        nonlocal tokens
        if not batch:
            return
        inputs, valid = right_pad([b[:-1] for b in batch], bos)
        targets, _ = right_pad([b[1:] for b in batch], -1)
        logp, _, _ = score_tokens(model, inputs, targets, chunk_size=chunk_size)
        acc.update(-logp, valid)
        tokens += int(valid.sum())
        batch.clear()

    for text in documents:
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        if len(ids) < min_tokens:
            continue
        batch.append([bos] + ids[:seq_len])
        docs += 1
        if len(batch) == batch_size:
            flush()
        if max_documents is not None and docs >= max_documents:
            break
    flush()
    if docs == 0:
        raise ValueError(f"documents: none scored (need at least min_tokens={min_tokens} tokens each)")
    total = float((acc.loss_sum).sum())
    buckets = acc.compute(edges if edges is not None else position_edges(max(len(acc.count), 1), train_length))
    nll = total / tokens
    return PerplexityResult(name, seq_len, train_length, docs, tokens, nll, math.exp(nll), buckets.edges,
                            buckets.mean, buckets.count)


def heldout_documents(source: str = "stdlib", path: str = "", text_field: str = "text",
                      val_fraction: float = 0.01, split_seed: int = 0) -> Iterable[str]:
    """Held-out documents: the trainer's validation split of a corpus source (``stdlib`` or ``files``), or all
    documents of ``path`` when ``val_fraction`` is 0 (a file set kept apart from training)."""
    from dla.data import SourceConfig, is_validation_document, iter_documents

    config = SourceConfig(source, path=path, text_field=text_field)
    for doc in iter_documents(config):
        if val_fraction == 0 or is_validation_document(doc, val_fraction, split_seed):
            yield doc


__all__ = ["PerplexityResult", "evaluate_perplexity", "position_edges", "heldout_documents"]
