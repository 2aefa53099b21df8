"""Loss by token position on long held-out documents, and held-out perplexity per domain.

Loss by position. Every document at least ``length`` tokens long is scored from its start: the model reads
``[BOS] + tokens[:length - 1]`` and predicts ``tokens[:length]``, so position ``t`` (0-based) is the prediction of
token ``t`` from the ``t`` tokens before it plus the BOS (the training convention: EOS doubles as BOS). Every
position averages the same documents, so the curve compares positions, not documents. The forward runs
``chunk_size`` tokens at a time through the model's decoding cache (:func:`dla.eval.scoring.score_tokens`):
recurrent layers carry their state between chunks (the chunked op within one), attention layers their KV cache,
so memory stays bounded by one chunk's activations and logits. ``length`` may exceed the training length (the
interesting part: does the loss keep falling past it?) as far as the model allows
(:func:`dla.eval.checkpoint.context_limit`).

A :class:`PositionCurve` keeps the per-position sums, so curves of several batches, documents or runs add up;
:func:`smooth` averages over a window that grows with the position (even on a log axis);
:func:`plot_position_loss` draws one line per model, the mean of its seeds, with the seeds' spread as a band;
:func:`position_table` gives the bucket means as markdown.

Perplexity per domain. :func:`domain_perplexity` scores each domain's held-out stream (``EOS d1 EOS d2 ...``)
in windows of the training length, the trainer's validation loss restricted to one domain.

Example:
    >>> corpus = TokenCorpus("runs/books/tokens")                                   # doctest: +SKIP
    >>> docs = [t for _, t in corpus.documents("val", min_tokens=8192)]            # doctest: +SKIP
    >>> curve = loss_by_position(model, docs, length=8192, bos_id=corpus.eos_id, train_length=2048)  # doctest: +SKIP
    >>> plot_position_loss({"DLA-GDN": [curve]}, "loss_by_position.png")          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from dla.eval.checkpoint import context_limit
from dla.eval.metrics import PositionLoss
from dla.eval.perplexity import PerplexityResult
from dla.eval.plots import pyplot, save_figure
from dla.eval.scoring import score_tokens

DEFAULT_EDGES = (0, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass
class PositionCurve:
    """Summed loss and counts per position of one model on a set of documents.

    Attributes:
        name: label (model, run or seed).
        train_length: the training context length.
        num_documents: documents scored.
        loss_sum: ``float64 [L]`` summed NLL (nats) per position.
        count: ``int64 [L]`` predictions per position.
    """

    name: str
    train_length: int
    num_documents: int
    loss_sum: np.ndarray
    count: np.ndarray

    @property
    def length(self) -> int:
        return len(self.count)

    def mean(self) -> np.ndarray:
        """``[L]`` mean loss per position (NaN where nothing was scored)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.loss_sum / np.maximum(self.count, 1), np.nan)

    def buckets(self, edges: Sequence[int] = DEFAULT_EDGES) -> PerplexityResult:
        """Bucket means as a :class:`~dla.eval.perplexity.PerplexityResult` (its ``trend()`` compares the loss
        before and past ``train_length``; ``dla.eval.plots.loss_curves`` draws it). Edges past ``length`` are
        dropped and ``length`` is added as the last edge."""
        acc = PositionLoss()
        acc.loss_sum, acc.count = self.loss_sum.copy(), self.count.copy()
        cut = np.asarray([e for e in edges if e < self.length] + [self.length], dtype=np.int64)
        b = acc.compute(cut)
        total, n = float(self.loss_sum.sum()), int(self.count.sum())
        nll = total / max(n, 1)
        return PerplexityResult(self.name, self.length, self.train_length, self.num_documents, n, nll,
                                math.exp(nll), b.edges, b.mean, b.count)

    def __add__(self, other: "PositionCurve") -> "PositionCurve":
        if self.length != other.length:
            raise ValueError(f"other: curves of different lengths ({self.length} and {other.length}) do not add")
        return PositionCurve(self.name, self.train_length, self.num_documents + other.num_documents,
                             self.loss_sum + other.loss_sum, self.count + other.count)

    def to_dict(self) -> dict:
        """JSON-ready: the sums and counts, plus the default buckets and their trend for reading."""
        b = self.buckets()
        return {"name": self.name, "train_length": self.train_length, "num_documents": self.num_documents,
                "length": self.length, "loss_sum": self.loss_sum.tolist(), "count": self.count.tolist(),
                "edges": b.edges.tolist(), "bucket_loss": [None if math.isnan(v) else float(v) for v in b.bucket_loss],
                "trend": b.trend()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "PositionCurve":
        return cls(d["name"], int(d["train_length"]), int(d["num_documents"]),
                   np.asarray(d["loss_sum"], dtype=np.float64), np.asarray(d["count"], dtype=np.int64))


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


@torch.no_grad()
def loss_by_position(model, documents: Sequence, *, length: int, bos_id: int, train_length: int,
                     batch_size: int = 1, chunk_size: int = 2048, autocast: Optional[torch.dtype] = None,
                     name: str = "model", progress: bool = False) -> PositionCurve:
    """Mean loss at each position ``0 .. length - 1`` over the documents at least ``length`` tokens long.

    Args:
        model: a ``DLAForCausalLM`` in eval mode (any device).
        documents: token-id sequences (numpy arrays, tensors or lists), without BOS; shorter ones are skipped.
        length: positions scored per document.
        bos_id: the id fed before each document (the tokenizer's EOS).
        train_length: the training context length (recorded; the trend is measured against it).
        batch_size: documents per forward.
        chunk_size: tokens per forward call through the cache.
        autocast: e.g. ``torch.bfloat16`` to score under autocast (as trained on GPU); None = the weights' dtype.
        name: label of the curve.
        progress: tqdm bar over documents.

    Raises:
        ValueError: ``length`` past what the model supports, or no document is long enough.
    """
    for arg, value in (("length", length), ("batch_size", batch_size), ("chunk_size", chunk_size),
                       ("train_length", train_length)):
        _check_int(arg, value)
    limit = context_limit(model.config)
    if limit is not None and length > limit:
        raise ValueError(f"length: {length} is longer than this model supports ({limit} tokens: attention layers "
                         f"or the fenwick policy are built for max_position_embeddings={limit})")
    long_docs = [torch.as_tensor(np.asarray(d[:length]), dtype=torch.long) for d in documents if len(d) >= length]
    if not long_docs:
        raise ValueError(f"documents: none has {length} tokens (got {len(documents)} documents, longest "
                         f"{max((len(d) for d in documents), default=0)})")
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    acc = PositionLoss()
    bos = torch.full((1,), bos_id, dtype=torch.long)
    for start in tqdm(range(0, len(long_docs), batch_size), desc=f"{name} by position", disable=not progress):
        targets = torch.stack(long_docs[start:start + batch_size])  # [B, L]
        inputs = torch.cat([bos.expand(len(targets), 1), targets[:, :-1]], dim=1)
        with _autocast(device, autocast):
            logp, _, _ = score_tokens(model, inputs, targets, chunk_size=chunk_size)
        acc.update(-logp)
    return PositionCurve(name, train_length, len(long_docs), acc.loss_sum, acc.count)


@torch.no_grad()
def stream_nll(model, stream, *, seq_len: int, max_tokens: Optional[int] = None, batch_size: int = 8,
               autocast: Optional[torch.dtype] = None) -> tuple[float, int]:
    """``(summed NLL, scored tokens)`` of a token stream cut into windows of ``seq_len`` tokens (each window
    predicts its next ``seq_len`` tokens from itself alone, as the trainer's validation does).

    Args:
        stream: 1-D token ids (e.g. ``EOS d1 EOS d2 ... EOS``).
        seq_len: tokens per window.
        max_tokens: score at most this many tokens (whole windows, from the start); None = all.
        batch_size: windows per forward.
    """
    _check_int("seq_len", seq_len)
    _check_int("batch_size", batch_size)
    tokens = np.asarray(stream)
    windows = (len(tokens) - 1) // seq_len
    if max_tokens is not None:
        windows = min(windows, max(1, max_tokens // seq_len))
    if windows < 1:
        raise ValueError(f"stream: {len(tokens)} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, windows, batch_size):
        idx = np.arange(start, min(start + batch_size, windows))[:, None] * seq_len + np.arange(seq_len + 1)
        rows = torch.as_tensor(tokens[idx].astype(np.int64)).to(device)
        with _autocast(device, autocast):
            logits = model(input_ids=rows[:, :-1], use_cache=False).logits
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                              reduction="sum")
        total += float(nll)
        count += rows[:, 1:].numel()
    return total, count


def domain_perplexity(model, corpus, *, seq_len: int, split: str = "val", max_tokens: Optional[int] = None,
                      batch_size: int = 8, autocast: Optional[torch.dtype] = None) -> dict:
    """Held-out loss and perplexity of each domain of a :class:`~dla.data.corpus.TokenCorpus`, and of all.

    Each domain's documents of ``split`` are laid out as one stream ``EOS d1 EOS d2 ... EOS`` (corpus order) and
    scored by :func:`stream_nll` in ``seq_len`` windows (at most ``max_tokens`` per domain).

    Returns:
        ``{domain: {"nll", "ppl", "tokens", "documents"}}`` plus ``"all"`` (token-weighted over the domains).
    """
    out, total, count = {}, 0.0, 0
    eos = np.asarray([corpus.eos_id], dtype=np.int64)
    for domain in corpus.domains:
        docs = corpus.documents(split, domain=domain)
        if not docs:
            continue
        stream = np.concatenate([part for _, t in docs for part in (eos, t)] + [eos])
        if len(stream) < seq_len + 1:
            continue
        nll, n = stream_nll(model, stream, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
                            autocast=autocast)
        out[domain] = {"nll": nll / n, "ppl": math.exp(nll / n), "tokens": n, "documents": len(docs)}
        total, count = total + nll, count + n
    if not out:
        raise ValueError(f"corpus: no domain has {seq_len + 1} tokens in the {split} split")
    out["all"] = {"nll": total / count, "ppl": math.exp(total / count), "tokens": count,
                  "documents": sum(v["documents"] for v in out.values())}
    return out


def smooth(values: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Moving average whose half-width at position ``t`` is ``floor(fraction * t)`` (NaNs ignored): position 10
    stays itself, position 4000 averages 3600..4400, so a log-x plot is evenly smoothed."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: expected a value in [0, 1), got {fraction}")
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cnum = np.concatenate([[0], np.cumsum(ok)])
    t = np.arange(len(v))
    half = np.floor(fraction * t).astype(np.int64)
    lo, hi = np.maximum(t - half, 0), np.minimum(t + half + 1, len(v))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnum[hi] > cnum[lo], (csum[hi] - csum[lo]) / np.maximum(cnum[hi] - cnum[lo], 1), np.nan)


def seed_band(curves: Sequence[PositionCurve], fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` over the smoothed curves of several seeds of one model (each ``[L]``)."""
    if not curves:
        raise ValueError("curves: expected at least one PositionCurve")
    lengths = {c.length for c in curves}
    if len(lengths) != 1:
        raise ValueError(f"curves: seeds must share one length, got {sorted(lengths)}")
    stack = np.stack([smooth(c.mean(), fraction) for c in curves])
    return stack.mean(0), stack.min(0), stack.max(0)


def plot_position_loss(groups: Mapping[str, Sequence[PositionCurve]], path: Union[str, Path], *,
                       fraction: float = 0.1, title: str = "Loss by position on held-out documents",
                       start: int = 16) -> Path:
    """One line per model (the mean of its seeds' smoothed curves) with the seeds' min-max band, log-x, the
    training length dashed; positions before ``start`` are left out (one-token noise). Writes a PNG."""
    if not groups:
        raise ValueError("groups: expected at least one model's curves")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    train_lengths = set()
    for label, curves in groups.items():
        mean, low, high = seed_band(curves, fraction)
        x = np.arange(1, len(mean) + 1)
        keep = x > start
        line, = ax.plot(x[keep], mean[keep], lw=1.5, label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            ax.fill_between(x[keep], low[keep], high[keep], color=line.get_color(), alpha=0.2, lw=0)
        train_lengths.update(c.train_length for c in curves)
    for length in sorted(train_lengths):
        ax.axvline(length, color="k", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in document (tokens)")
    ax.set_ylabel(f"loss (nats), smoothed over ±{fraction:.0%} of the position")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def position_table(groups: Mapping[str, Sequence[PositionCurve]], edges: Sequence[int] = DEFAULT_EDGES) -> str:
    """Markdown: one row per model, the mean loss of each position bucket (mean over seeds, ``± half the range``
    with several seeds), and the change from the bucket ending at the training length to the last bucket."""
    rows = []
    header = None
    for label, curves in groups.items():
        results = [c.buckets(edges) for c in curves]
        e = results[0].edges
        labels = [f"{e[i]}-{e[i + 1]}" for i in range(len(e) - 1)]
        if header is not None and labels != header:
            raise ValueError(f"groups: {label}'s buckets {labels} differ from the first model's {header} (curves "
                             f"of different lengths)")
        header = labels
        stack = np.stack([r.bucket_loss for r in results])
        mean, half = stack.mean(0), (stack.max(0) - stack.min(0)) / 2
        cells = [f"{m:.3f}" + (f" ± {h:.3f}" if len(curves) > 1 else "") for m, h in zip(mean, half)]
        train = curves[0].train_length
        at = [i for i in range(len(e) - 1) if e[i] < train <= e[i + 1]]
        delta = f"{mean[-1] - mean[at[0]]:+.3f}" if at and at[0] < len(mean) - 1 else "—"
        rows.append(f"| {label} | {len(curves)} | " + " | ".join(cells) + f" | {delta} |")
    head = "| model | seeds | " + " | ".join(header) + " | last − at train length |"
    return "\n".join([head, "|" + " --- |" * (len(header) + 3)] + rows)


__all__ = ["PositionCurve", "loss_by_position", "stream_nll", "domain_perplexity", "smooth", "seed_band",
           "plot_position_loss", "position_table", "DEFAULT_EDGES"]
