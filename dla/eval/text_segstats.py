"""DLA's segmentation on held-out text: how often each layer opens and merges slots, how many slots are live, and
where the boundaries fall, by token classes a reader understands.

:func:`text_segmentation_stats` runs a DLA model over windows of a :class:`~dla.data.corpus.TokenCorpus` split,
the way the trainer reads them: each domain's stream ``EOS d1 EOS d2 ...`` cut into ``seq_len`` windows, evenly
spaced over the stream up to a token budget, flattened with ``cu_seqlens`` so that a segment (the state's
context) starts at every EOS and at every window start. The numbers come from the segmentation each recurrent
layer's op computes during that forward (:func:`dla.layers.capture_segmentations`): nothing is recomputed.

:func:`token_classes` labels tokens from the tokenizer's decoded strings (:data:`CLASSES`; classes overlap);
:func:`layer_stats` turns one layer's per-token decisions into the statistics (it is the whole arithmetic, so a
hand-made segmentation checks it); :func:`summary` reduces a model's statistics to one row per model;
:func:`heldout_paragraph` picks the fixed paragraph that a segmentation picture shows
(:func:`dla.eval.segview.write_segment_view`). Token texts come from
:func:`dla.eval.segview.token_strings`.

Example:
    >>> corpus = TokenCorpus("runs/books/tokens")                                        # doctest: +SKIP
    >>> stats = text_segmentation_stats(model, corpus, max_tokens=65536, seq_len=2048)   # doctest: +SKIP
    >>> stats["layers"][0]["boundary_rate"], stats["layers"][0]["classes"]["paragraph_start"]["lift"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dla.data.loader import batch_cu_seqlens
from dla.eval.segview import token_strings
from dla.layers import RecurrentMixer, capture_segmentations

CLASSES = ("any", "paragraph_start", "line_start", "sentence_start", "word_initial", "word_internal", "digit",
           "punctuation", "whitespace")
"""Token classes of :func:`token_classes`, in report order:

* ``any``: every token that is not the first of its segment (the base rate of the lifts);
* ``paragraph_start``: the first non-blank token of a document or after a blank line (two or more newlines);
* ``line_start``: the first non-blank token after exactly one newline (a new line inside a paragraph; code lines);
* ``sentence_start``: the first token after whitespace that follows ``.``, ``!`` or ``?`` (closing quotes and
  brackets between them allowed);
* ``word_initial`` / ``word_internal``: the token starts with a letter or digit after a space or punctuation / right
  after a letter or digit (a piece inside a word);
* ``digit``: the token starts with a digit (after its leading spaces);
* ``punctuation``: the token starts with a character other than a letter, digit or space;
* ``whitespace``: the token is blank (newlines, indentation).
"""

DEFAULT_POSITION_EDGES = (0, 64, 256, 1024)
"""Context-position buckets of the boundary rate: ``[0, 64)``, ``[64, 256)``, ``[256, 1024)``, ``[1024, end)``."""

CONTEXT = 32
"""Tokens before a window that :func:`token_classes` reads to label the window's first tokens."""

_SENTENCE_END = ".!?"
_CLOSERS = "\"')]}’”»"


def _is_word(ch: str) -> bool:
    return ch.isalnum() and ch != "\ufffd"


def token_classes(strings: Sequence[str], restart: Sequence[bool]) -> Dict[str, np.ndarray]:
    """Label every token of a stream with the :data:`CLASSES` it belongs to.

    Args:
        strings: each token's decoded text, in stream order.
        restart: ``[N]`` bool, the token starts a new document (an EOS): the text before it is forgotten and it
            belongs to no class; the next non-blank token is a paragraph start.

    Returns:
        ``{class: bool [N]}`` for every class of :data:`CLASSES` but ``any`` (which depends on segments, not text).
    """
    N = len(strings)
    if len(restart) != N:
        raise ValueError(f"restart: expected {N} flags (one per string), got {len(restart)}")
    out = {name: np.zeros(N, dtype=bool) for name in CLASSES[1:]}
    gap = "\n\n"  # whitespace since the last non-blank character (a document starts after a blank line)
    tail = ""  # the last non-blank characters before that whitespace
    for t, s in enumerate(strings):
        if restart[t]:
            gap, tail = "\n\n", ""
            continue
        content = s.lstrip()
        lead = s[:len(s) - len(content)]
        if not content:
            out["whitespace"][t] = True
            gap += s
            continue
        gap += lead
        first = content[0]
        newlines = gap.count("\n")
        out["paragraph_start"][t] = newlines >= 2
        out["line_start"][t] = newlines == 1
        if gap and tail.rstrip(_CLOSERS)[-1:] in tuple(_SENTENCE_END):
            out["sentence_start"][t] = True
        if _is_word(first):
            after_word = not gap and bool(tail) and _is_word(tail[-1])
            out["word_internal"][t] = after_word
            out["word_initial"][t] = not after_word
            out["digit"][t] = first.isdigit()
        elif first != "\ufffd":
            out["punctuation"][t] = True
        stripped = content.rstrip()
        tail = (tail + gap + stripped)[-8:]  # the text up to its last non-blank character
        gap = content[len(stripped):]
    return out


def _rate(x: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, int]:
    """``(mean of x [N, H] over the tokens of mask and all heads, tokens)``; NaN when the mask is empty."""
    sel = x if mask is None else x[mask]
    n = int(sel.shape[0])
    return (float(sel.mean()) if n else float("nan")), n


def layer_stats(boundary: np.ndarray, merged: np.ndarray, num_slots: np.ndarray, segment_start: np.ndarray, *,
                classes: Optional[Mapping[str, np.ndarray]] = None, domains: Optional[np.ndarray] = None,
                edges: Sequence[int] = DEFAULT_POSITION_EDGES) -> dict:
    """The segmentation statistics of one layer from its per-token decisions.

    Args:
        boundary: ``bool [N, H]`` the token opened a slot (per head).
        merged: ``bool [N, H]`` a merge happened before the token's slot was appended.
        num_slots: ``int [N, H]`` live slots after the token.
        segment_start: ``bool [N]`` the token starts a segment (the state was empty before it); ``[0]`` must be set.
        classes: ``{class: bool [N]}`` (:func:`token_classes`); ``any`` is added.
        domains: ``[N]`` domain name of each token, for the per-domain rates.
        edges: context-position bucket starts (ascending, from 0); the last bucket runs to the longest segment
            (starts past it are dropped).

    Returns:
        ``tokens``, ``heads``; over all tokens and heads: ``boundary_rate`` (slots opened per token),
        ``boundary_rate_heads`` (per head), ``merge_rate`` (merges per token), ``slots_mean`` / ``slots_max`` (live
        slots after a token); at the last token of every segment: ``slots_end`` (mean live slots),
        ``segment_length`` (mean tokens per segment) and ``slot_length_end`` (tokens per live slot, summed over
        segments and heads); ``classes``: ``{class: {tokens, rate, lift}}`` over tokens that do not start a
        segment (a segment's first token always opens a slot), ``lift`` = the class's rate over the rate of
        ``any``; ``positions``: ``[{lo, hi, tokens, rate}]`` per context-position bucket (segment starts
        included); ``domains``: ``{domain: {tokens, boundary_rate, merge_rate}}``.
    """
    boundary = np.asarray(boundary, dtype=bool)
    if boundary.ndim != 2:
        raise ValueError(f"boundary: expected [N, H], got shape {boundary.shape}")
    N, H = boundary.shape
    for name, value in (("merged", merged), ("num_slots", num_slots)):
        if np.shape(value) != (N, H):
            raise ValueError(f"{name}: expected shape {(N, H)} (boundary's), got {np.shape(value)}")
    segment_start = np.asarray(segment_start, dtype=bool)
    if segment_start.shape != (N,) or N == 0 or not segment_start[0]:
        raise ValueError(f"segment_start: expected [{N}] flags with the first set, got shape {segment_start.shape}")
    if list(edges) != sorted(set(edges)) or not edges or edges[0] != 0:
        raise ValueError(f"edges: expected ascending distinct bucket starts from 0, got {list(edges)}")
    merged = np.asarray(merged, dtype=bool)
    num_slots = np.asarray(num_slots)
    starts = np.nonzero(segment_start)[0]
    ends = np.append(starts[1:], N) - 1
    lengths = ends - starts + 1
    position = np.arange(N) - np.repeat(starts, lengths)
    out = {"tokens": N, "heads": H, "boundary_rate": float(boundary.mean()),
           "boundary_rate_heads": boundary.mean(0).tolist(), "merge_rate": float(merged.mean()),
           "slots_mean": float(num_slots.mean()), "slots_max": int(num_slots.max()),
           "slots_end": float(num_slots[ends].mean()), "segment_length": float(lengths.mean()),
           "slot_length_end": float(lengths.sum() * H / max(num_slots[ends].sum(), 1))}
    inner = ~segment_start
    base, n_base = _rate(boundary, inner)
    out["classes"] = {"any": {"tokens": n_base, "rate": base, "lift": 1.0}}
    for name, mask in (classes or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (N,):
            raise ValueError(f"classes: {name!r} has shape {mask.shape}, expected ({N},)")
        rate, n = _rate(boundary, mask & inner)
        out["classes"][name] = {"tokens": n, "rate": rate, "lift": rate / base if n and base > 0 else float("nan")}
    longest = int(position.max()) + 1
    bounds = [e for e in edges if e < longest] + [longest]
    out["positions"] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rate, n = _rate(boundary, (position >= lo) & (position < hi))
        out["positions"].append({"lo": int(lo), "hi": int(hi), "tokens": n, "rate": rate})
    out["domains"] = {}
    if domains is not None:
        domains = np.asarray(domains)
        if domains.shape != (N,):
            raise ValueError(f"domains: expected shape ({N},), got {domains.shape}")
        for name in dict.fromkeys(domains.tolist()):
            mask = domains == name
            rate, n = _rate(boundary, mask)
            out["domains"][str(name)] = {"tokens": n, "boundary_rate": rate, "merge_rate": _rate(merged, mask)[0]}
    return out


def is_dla(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a recurrent mixer with DLA's boundaries (policy ``dla`` or ``dla_unbounded``)."""
    return any(isinstance(m, RecurrentMixer) and m.policy in ("dla", "dla_unbounded") for m in model.modules())


def heldout_windows(corpus, *, seq_len: int, max_tokens: int, split: str = "val",
                    domains: Optional[Sequence[str]] = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(domain, int64 [seq_len] window, int64 [<= CONTEXT] tokens before it)`` triples: each domain's stream
    ``EOS d1 EOS d2 ... EOS`` cut into ``seq_len`` windows, ``max_tokens // (domains * seq_len)`` of them (at
    least one) evenly spaced over it. A domain whose stream is shorter than one window is skipped. The tokens
    before a window are its text's context for :func:`token_classes` (the model does not read them)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len: expected an int >= 2, got {seq_len!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected an int >= 1, got {max_tokens!r}")
    names = list(domains) if domains is not None else list(corpus.domains)
    unknown = [d for d in names if d not in corpus.domains]
    if unknown:
        raise ValueError(f"domains: {unknown} are not in this corpus; known: {', '.join(corpus.domains)}")
    per_domain = max(1, max_tokens // (max(len(names), 1) * seq_len))
    eos = np.asarray([corpus.eos_id], dtype=np.int64)
    out = []
    for domain in names:
        docs = corpus.documents(split, domain=domain)
        if not docs:
            continue
        stream = np.concatenate([part for _, t in docs for part in (eos, t)] + [eos])
        total = len(stream) // seq_len
        if total < 1:
            continue
        picks = np.unique(np.linspace(0, total - 1, min(per_domain, total)).round().astype(np.int64))
        out += [(domain, stream[i * seq_len:(i + 1) * seq_len], stream[max(0, i * seq_len - CONTEXT):i * seq_len])
                for i in picks]
    return out


@torch.no_grad()
def text_segmentation_stats(model: torch.nn.Module, corpus, *, max_tokens: int = 65536, seq_len: int = 2048,
                            batch_size: int = 8, split: str = "val", domains: Optional[Sequence[str]] = None,
                            edges: Sequence[int] = DEFAULT_POSITION_EDGES, autocast: Optional[torch.dtype] = None,
                            progress: bool = False) -> dict:
    """Per recurrent layer, the segmentation statistics (:func:`layer_stats`) of ``model`` on held-out text.

    Args:
        model: a DLA causal LM (``DLAForCausalLM``: its forward takes ``cu_seqlens``).
        corpus: a :class:`~dla.data.corpus.TokenCorpus`.
        max_tokens: token budget over all domains (:func:`heldout_windows`).
        seq_len: window length (the training length: the state's context is at most this long).
        batch_size: windows per forward.
        split: ``val`` (held out) or ``train``.
        domains: domains to read (default: all of the corpus).
        edges: context-position buckets (:func:`layer_stats`).
        autocast: e.g. ``torch.bfloat16`` on a GPU (the training precision); None = the model's dtype.
        progress: a tqdm bar over batches.

    Returns:
        ``{"seq_len", "tokens", "windows", "domains": {domain: windows}, "layers": [...]}``; each layer's dict is
        :func:`layer_stats` plus ``layer`` (module name), ``policy`` and ``capacity``.

    Raises:
        ValueError: bad arguments, no window to read, or a model without a recurrent mixer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    windows = heldout_windows(corpus, seq_len=seq_len, max_tokens=max_tokens, split=split, domains=domains)
    if not windows:
        raise ValueError(f"corpus: no domain of the {split} split holds one window of {seq_len} tokens")
    mixers = {name: m for name, m in model.named_modules() if isinstance(m, RecurrentMixer)}
    if not mixers:
        raise ValueError(f"model: {type(model).__name__} has no recurrent mixer, so no segmentation")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    fields: Dict[str, Dict[str, list]] = {name: {"boundary": [], "merged": [], "num_slots": []} for name in mixers}
    try:
        for lo in tqdm(range(0, len(windows), batch_size), desc="segmentation", disable=not progress):
            ids = torch.as_tensor(np.stack([w for _, w, _ in windows[lo:lo + batch_size]])).to(device)
            cu = batch_cu_seqlens(ids, corpus.eos_id)
            amp = (torch.autocast(device.type, dtype=autocast) if autocast is not None
                   else contextlib.nullcontext())
            with capture_segmentations(model) as records, amp:
                model(input_ids=ids.reshape(1, -1), use_cache=False, cu_seqlens=cu)
            for name, segs in records.items():
                if len(segs) != 1:
                    raise ValueError(f"model: {name} made {len(segs)} op calls for one forward; expected 1")
                seg = segs[0]
                fields[name]["boundary"].append(seg.boundary[0].cpu().numpy())
                fields[name]["merged"].append((seg.merged[0] >= 0).cpu().numpy())
                fields[name]["num_slots"].append(seg.num_slots[0].cpu().numpy())
    finally:
        model.train(was_training)
    stream = np.concatenate([w for _, w, _ in windows])
    segment_start = stream == corpus.eos_id
    segment_start[::seq_len] = True
    ids = np.unique(np.concatenate([np.concatenate([b, w]) for _, w, b in windows]))
    table = dict(zip(ids.tolist(), token_strings(corpus.tokenizer, ids)))
    parts = []
    for _, window, before in windows:
        text = np.concatenate([before, window])
        labels = token_classes([table[i] for i in text.tolist()], text == corpus.eos_id)
        parts.append({name: mask[len(before):] for name, mask in labels.items()})
    classes = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    domain_of = np.repeat(np.asarray([d for d, _, _ in windows]), seq_len)
    layers = []
    for name, m in mixers.items():
        arrays = {k: np.concatenate(v) for k, v in fields[name].items()}
        row = {"layer": name, "policy": m.policy, "capacity": None if m.policy == "dla_unbounded" else m.capacity}
        row.update(layer_stats(arrays["boundary"], arrays["merged"], arrays["num_slots"], segment_start,
                               classes=classes, domains=domain_of, edges=edges))
        layers.append(row)
    counts: Dict[str, int] = {}
    for d, _, _ in windows:
        counts[d] = counts.get(d, 0) + 1
    return {"seq_len": seq_len, "tokens": int(len(stream)), "windows": len(windows), "split": split,
            "domains": counts, "layers": layers}


SUMMARY_CLASSES = ("paragraph_start", "line_start", "sentence_start", "word_initial", "word_internal", "digit",
                   "punctuation", "whitespace")
"""The classes whose lifts :func:`summary` reports."""


def summary(stats: Mapping) -> dict:
    """One row of a model's :func:`text_segmentation_stats`: the mean over layers of ``boundary_rate``,
    ``merge_rate``, ``slots_mean``, ``slots_end``, ``slot_length_end`` and each class's ``lift``
    (``lift_<class>``), the largest ``slots_max``, and ``early_rate`` / ``late_rate``: the boundary rate in the
    first position bucket (context positions ``[0, edges[1])``) and past it."""
    layers = stats["layers"]
    if not layers:
        raise ValueError("stats: has no layer")

    def mean(values):
        values = [v for v in values if v is not None and v == v]
        return float(np.mean(values)) if values else float("nan")

    row = {key: mean([layer[key] for layer in layers])
           for key in ("boundary_rate", "merge_rate", "slots_mean", "slots_end", "slot_length_end")}
    row["slots_max"] = max(layer["slots_max"] for layer in layers)
    for name in SUMMARY_CLASSES:
        row[f"lift_{name}"] = mean([layer["classes"].get(name, {}).get("lift") for layer in layers])
    early, late = [], []
    for layer in layers:
        buckets = layer["positions"]
        early.append(buckets[0]["rate"])
        rest = [b for b in buckets[1:] if b["tokens"]]
        late.append(sum(b["rate"] * b["tokens"] for b in rest) / sum(b["tokens"] for b in rest) if rest else None)
    row["early_rate"], row["late_rate"] = mean(early), mean(late)
    return row


def heldout_paragraph(corpus, *, domain: str = "books", length: int = 200, skip: int = 4096,
                      split: str = "val") -> tuple[dict, int, np.ndarray]:
    """A fixed paragraph to picture: in the first document of ``domain`` (stream order) longer than
    ``skip + length`` tokens (else the longest), the first paragraph start (:func:`token_classes`) at or past
    token ``skip`` (else the first one at all), and ``length`` tokens from there.

    Returns:
        ``(document record, offset of the paragraph in the document, int64 [<= length] token ids)``.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected an int >= 1, got {length!r}")
    docs = corpus.documents(split, domain=domain)
    if not docs:
        raise ValueError(f"domain: the {split} split has no document of {domain!r}")
    record, tokens = next(((r, t) for r, t in docs if len(t) > skip + length), max(docs, key=lambda d: len(d[1])))
    end = min(len(tokens), skip + 64 * length)  # enough text to find a paragraph without decoding a whole book
    starts = np.nonzero(token_classes(token_strings(corpus.tokenizer, tokens[:end]),
                                      np.zeros(end, dtype=bool))["paragraph_start"])[0]
    later = starts[starts >= skip]
    offset = int(later[0]) if len(later) else int(starts[0]) if len(starts) else 0
    return record, offset, tokens[offset:offset + length]


__all__ = ["CLASSES", "SUMMARY_CLASSES", "DEFAULT_POSITION_EDGES", "token_classes", "layer_stats",
           "CONTEXT", "is_dla", "heldout_windows", "text_segmentation_stats", "summary", "heldout_paragraph"]
