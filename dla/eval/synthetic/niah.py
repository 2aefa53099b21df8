"""RULER-style needle-in-a-haystack (NIAH) prompts as strings, for models evaluated by generation.

A needle is the sentence ``"One of the special magic {kind} for {key} is: {value}."``; the prompt asks for
the values of some keys at the end and closes with an answer prefix for the model to continue::

    Some special magic numbers are hidden within the following text. ... (instruction)
    <haystack sentences, needles between them>
    What are all the special magic numbers for <key> mentioned in the provided text? The special magic ...

Tasks (``NIAH_TASKS``) follow the RULER set that DLA reports (EVAL.md section 1.3): ``niah_single_1/2/3``,
``niah_multikey_1/2/3``, ``niah_multiquery``, ``niah_multivalue``. The haystacks are made here, offline:
``noise`` cycles RULER's five noise sentences, ``essay`` is generated essay-like prose (or sentences of a
text you pass as ``essay_text``, e.g. the Paul Graham essays), ``needle`` is made of distractor needles.

Every example is a dict::

    {"input": str,          # the whole prompt, answer prefix included
     "target": list[str],   # every value the answer must contain (RULER's string_match_all)
     "length": int,         # requested context length in tokens; len(tokenize(input)) <= length
     "depth": float,        # depth in percent of the first needle of the first queried key
     "task": str}           # task name

Differences from lm-eval's RULER: the haystack is filled up to ``length`` exactly (to within one sentence)
instead of in 500-word or 25-line steps, no tokens are reserved for the answer (pass a smaller ``length``),
the noise haystack is split into sentences, and needle depth is a parameter (the first needle) rather than
drawn per needle from a 40-point grid.

``token_niah`` is the token-level counterpart for tiny models trained from scratch on the task: noise or
repeated-filler tokens, needles ``[NEEDLE_ID, key..., value...]``, and ``[QUERY_ID, key...]`` at the end
followed by the value tokens, which are the only scored labels.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from .common import (IGNORE_INDEX, Seed, check_choice, check_depth, check_int, grid_examples, make_rng,
                     sample_rows)
from .haystack import (ADJECTIVES, NOISE_SENTENCES, NOUNS, CycleHaystack, StreamHaystack, essay_sentences,
                       fit_units, insert_needles, make_counter, split_sentences)

HAYSTACKS = ("noise", "essay", "needle")
KINDS = ("words", "numbers", "uuids")
NEEDLE = "One of the special magic {kinds} for {key} is: {value}."
_INSTRUCTION = {
    False: "A special magic {kind} is hidden within the following text. Make sure to memorize it. "
           "I will quiz you about the {kind} afterwards.",
    True: "Some special magic {kinds} are hidden within the following text. Make sure to memorize it. "
          "I will quiz you about the {kinds} afterwards.",
}
_QUESTION = {
    False: "What is the special magic {kind} for {query} mentioned in the provided text? "
           "The special magic {kind} for {query} mentioned in the provided text is",
    True: "What are all the special magic {kinds} for {query} mentioned in the provided text? "
          "The special magic {kinds} for {query} mentioned in the provided text are",
}


@dataclass(frozen=True)
class NIAHTask:
    """One NIAH task; checked on construction.

    Attributes:
        name: written to each example's ``"task"``.
        haystack: ``"noise"`` (repeated noise sentences), ``"essay"`` (prose) or ``"needle"`` (distractor
            needles with other keys).
        key_type: ``"words"`` (adjective-noun), ``"numbers"`` (7 digits) or ``"uuids"``.
        value_type: same choices as ``key_type``.
        num_keys: distinct keys, each with its own needles; those not queried are distractors (MK-NIAH).
        num_values: values (needles) per key (MV-NIAH); all must be recalled.
        num_queries: keys asked about, ``<= num_keys`` (MQ-NIAH); the first ``num_queries`` keys.
    """

    name: str
    haystack: str = "noise"
    key_type: str = "words"
    value_type: str = "numbers"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        check_choice("haystack", self.haystack, HAYSTACKS)
        check_choice("key_type", self.key_type, KINDS)
        check_choice("value_type", self.value_type, KINDS)
        check_int("num_values", self.num_values, 1)
        check_int("num_queries", self.num_queries, 1)
        check_int("num_keys", self.num_keys, self.num_queries)


NIAH_TASKS = {t.name: t for t in (
    NIAHTask("niah_single_1", "noise", "words", "numbers"),
    NIAHTask("niah_single_2", "essay", "words", "numbers"),
    NIAHTask("niah_single_3", "essay", "words", "uuids"),
    NIAHTask("niah_multikey_1", "essay", "words", "numbers", num_keys=4),
    NIAHTask("niah_multikey_2", "needle", "words", "numbers"),
    NIAHTask("niah_multikey_3", "needle", "uuids", "uuids"),
    NIAHTask("niah_multiquery", "essay", "words", "numbers", num_keys=4, num_queries=4),
    NIAHTask("niah_multivalue", "essay", "words", "numbers", num_values=4),
)}
"""The RULER NIAH tasks by lm-eval name (S-NIAH-1/2/3, MK-NIAH-1/2/3, MQ-NIAH, MV-NIAH)."""


def draw_item(rng: np.random.Generator, kind: str) -> str:
    """One random key or value: ``"words"`` like ``"quiet-otter"``, ``"numbers"`` in ``[10**6, 10**7)``,
    ``"uuids"`` a version-4 UUID string."""
    if kind == "words":
        a, n = rng.integers(0, [len(ADJECTIVES), len(NOUNS)])
        return f"{ADJECTIVES[a]}-{NOUNS[n]}"
    if kind == "numbers":
        return str(int(rng.integers(10 ** 6, 10 ** 7)))
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _draw_distinct(rng: np.random.Generator, kind: str, k: int) -> list[str]:
    seen, out = set(), []
    while len(out) < k:
        item = draw_item(rng, kind)
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _join_keys(keys: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b, and c`` (RULER's query phrasing)."""
    if len(keys) <= 2:
        return " and ".join(keys)
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _example(task: NIAHTask, length: int, depth: Optional[float], rng: np.random.Generator,
             count: Callable[[str], int], essay: Optional[list[str]]) -> dict:
    keys = _draw_distinct(rng, task.key_type, task.num_keys)
    values = _draw_distinct(rng, task.value_type, task.num_keys * task.num_values)
    kinds = task.value_type
    needles = [NEEDLE.format(kinds=kinds, key=keys[i // task.num_values], value=v) for i, v in enumerate(values)]
    depths = [float(d) for d in rng.uniform(0.0, 100.0, size=len(needles))]
    if depth is not None:
        depths[0] = depth

    if task.haystack == "noise":
        haystack = CycleHaystack(NOISE_SENTENCES)
    elif task.haystack == "essay":
        haystack = CycleHaystack(essay) if essay else StreamHaystack(essay_sentences(rng.spawn(1)[0]))
    else:
        distractor_rng, taken = rng.spawn(1)[0], set(keys) | set(values)

        def distractors():  # needles whose key and value differ from every real key and value
            while True:
                key, value = draw_item(distractor_rng, task.key_type), draw_item(distractor_rng, kinds)
                if key not in taken and value not in taken:
                    yield NEEDLE.format(kinds=kinds, key=key, value=value)

        haystack = StreamHaystack(distractors())

    plural = task.num_queries * task.num_values > 1
    fmt = {"kind": kinds[:-1], "kinds": kinds, "query": _join_keys(keys[:task.num_queries])}
    head, tail = _INSTRUCTION[plural].format(**fmt), _QUESTION[plural].format(**fmt)

    def build(n: int) -> str:
        return f"{head}\n{insert_needles(haystack, n, list(zip(depths, needles)))}\n{tail}"

    _, text = fit_units(build, count, length)
    return {"input": text, "target": values[:task.num_queries * task.num_values], "length": length,
            "depth": depths[0], "task": task.name}


def _resolve(task: Union[str, NIAHTask]) -> NIAHTask:
    if isinstance(task, NIAHTask):
        return task
    if task not in NIAH_TASKS:
        raise ValueError(f"task must be a NIAHTask or one of {tuple(NIAH_TASKS)}, got {task!r}")
    return NIAH_TASKS[task]


def generate_niah(task: Union[str, NIAHTask], length: int, *, num_examples: int = 1, depth: Optional[float] = None,
                  tokenize: Optional[Callable[[str], Sequence]] = None, essay_text: Optional[str] = None,
                  seed: Seed = 0) -> list[dict]:
    """NIAH examples of one task at one context length.

    Args:
        task: a name of ``NIAH_TASKS`` or a ``NIAHTask`` (custom numbers of keys, values, queries).
        length: context length in tokens: the haystack grows while ``len(tokenize(input)) <= length``.
        num_examples: examples to make.
        depth: percent in ``[0, 100]`` of the haystack before the first needle of the first queried key;
            the other needles get uniform random depths. None: every needle gets a random depth.
        tokenize: ``str -> sequence of tokens`` (e.g. a HF tokenizer's ``encode``); None counts words.
        essay_text: text whose sentences (cycled) form the ``essay`` haystack instead of generated prose.
        seed: int or sequence of ints seeding a numpy Generator.

    Returns:
        ``num_examples`` dicts with keys ``input``, ``target``, ``length``, ``depth``, ``task`` (module doc).

    Example:
        >>> ex = generate_niah("niah_single_1", 512, depth=50.0, seed=0)[0]
        >>> all(v in ex["input"] for v in ex["target"])
        True
    """
    task = _resolve(task)
    check_int("length", length, 1)
    check_int("num_examples", num_examples, 1)
    depth = check_depth("depth", depth)
    count = make_counter(tokenize)
    essay = None
    if essay_text is not None:
        essay = split_sentences(essay_text) if isinstance(essay_text, str) else []
        if not essay:
            raise ValueError("essay_text must be a str with at least one sentence")
    rng = make_rng(seed)
    return [_example(task, length, depth, rng, count, essay) for _ in range(num_examples)]


def niah_grid(task: Union[str, NIAHTask], lengths: Iterable[int], depths: Iterable[float], *,
              num_examples: int = 1, tokenize: Optional[Callable[[str], Sequence]] = None,
              essay_text: Optional[str] = None, seed: int = 0) -> list[dict]:
    """``generate_niah`` over every ``(length, depth)`` cell of ``lengths x depths``, length-major.

    Each cell is seeded by ``(seed, length, round(1000 * depth))``, so a cell is the same in any grid.
    """
    check_int("seed", seed, 0)
    return grid_examples(
        lambda length, depth, cell_seed: generate_niah(task, length, num_examples=num_examples, depth=depth,
                                                       tokenize=tokenize, essay_text=essay_text, seed=cell_seed),
        lengths, depths, seed)


PAD_ID, NEEDLE_ID, QUERY_ID = 0, 1, 2
NUM_SPECIAL_TOKENS = 3
"""Token ids below ``NUM_SPECIAL_TOKENS`` never occur in haystacks, keys or values."""


class NeedleBatch(NamedTuple):
    """Token-level needle examples (``TokenBatch`` plus where the queried needle is).

    Attributes:
        inputs: ``[N, T]`` int64 token ids.
        labels: ``[N, T]`` int64; the value tokens at the last ``value_len`` positions, -100 elsewhere.
        needle_pos: ``[N]`` int64 index in ``inputs`` of the queried needle's ``NEEDLE_ID``.
        depth: ``[N]`` float64 percent of the filler tokens before the queried needle.
    """

    inputs: np.ndarray
    labels: np.ndarray
    needle_pos: np.ndarray
    depth: np.ndarray


def _distinct_keys(rng: np.random.Generator, rows: int, num: int, key_len: int, content: int) -> np.ndarray:
    """``[rows, num, key_len]`` ints of ``[0, content)``; the ``num`` key tuples of a row are distinct."""
    if content ** key_len <= 2 ** 62:  # draw tuple codes without replacement, then write them in base `content`
        codes = sample_rows(rng, rows, content ** key_len, num)
        return (codes[..., None] // content ** np.arange(key_len, dtype=np.int64)) % content
    keys = rng.integers(0, content, size=(rows, num, key_len))
    while True:  # repeats among > 2**62 tuples: practically never; redraw the rows that have one
        s = np.sort(keys.view([("", keys.dtype)] * key_len).reshape(rows, num), axis=1)
        bad = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not bad.any():
            return keys
        keys[bad] = rng.integers(0, content, size=(int(bad.sum()), num, key_len))


def token_niah(num_examples: int, seq_len: int, vocab_size: int, *, key_len: int = 2, value_len: int = 2,
               num_needles: int = 1, depth: Optional[float] = None, haystack: str = "noise", filler_len: int = 16,
               seed: Seed = 0) -> NeedleBatch:
    """Token-level NIAH: find the value of the queried key among noise and distractor needles.

    Layout of ``inputs + [last value token]`` (length ``seq_len + 1``)::

        filler ... [NEEDLE k v] filler ... [NEEDLE k' v'] filler ... [QUERY k] v

    Keys, values and filler tokens are drawn uniformly from ``[NUM_SPECIAL_TOKENS, vocab_size)``. The first
    needle is queried; the other ``num_needles - 1`` are distractors with different keys at uniform random
    filler offsets.

    Args:
        num_examples: rows ``N``.
        seq_len: ``T``, tokens per row.
        vocab_size: ids are in ``[0, vocab_size)``; ids below ``NUM_SPECIAL_TOKENS`` are markers.
        key_len: tokens per key (0: one needle and a bare ``QUERY``, i.e. a passkey).
        value_len: tokens per value, all scored.
        num_needles: needles per row, the queried one included.
        depth: percent of the filler before the queried needle; None: uniform random per row.
        haystack: ``"noise"`` (iid tokens) or ``"repeat"`` (one random ``filler_len``-token pattern, tiled).
        filler_len: pattern length for ``"repeat"``.
        seed: int or sequence of ints seeding a numpy Generator.

    Returns:
        ``NeedleBatch(inputs, labels, needle_pos, depth)``; see its fields.
    """
    n = check_int("num_examples", num_examples, 1)
    check_int("value_len", value_len, 1)
    check_int("key_len", key_len, 0)
    m = check_int("num_needles", num_needles, 1, None if key_len else 1)
    check_int("vocab_size", vocab_size, NUM_SPECIAL_TOKENS + 1)
    content = vocab_size - NUM_SPECIAL_TOKENS
    if content ** key_len < m:
        raise ValueError(f"vocab_size={vocab_size} with key_len={key_len} has fewer than num_needles={m} keys")
    needle_len = 1 + key_len + value_len
    context = seq_len + 1 - (1 + key_len) - value_len
    check_int("seq_len", seq_len, m * needle_len + key_len + value_len)
    depth = check_depth("depth", depth)
    check_choice("haystack", haystack, ("noise", "repeat"))
    check_int("filler_len", filler_len, 1)
    rng = make_rng(seed)
    num_filler = context - m * needle_len

    keys = NUM_SPECIAL_TOKENS + _distinct_keys(rng, n, m, key_len, content)  # [n, m, key_len]
    values = rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=(n, m, value_len))
    offsets = rng.integers(0, num_filler + 1, size=(n, m))  # filler tokens before each needle
    if depth is not None:
        offsets[:, 0] = round(depth / 100.0 * num_filler)
    if haystack == "noise":
        filler = rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=(n, num_filler))
    else:
        filler = np.broadcast_to(np.resize(rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=filler_len),
                                           num_filler), (n, num_filler))

    order = np.argsort(offsets, axis=1, kind="stable")  # needles left to right
    starts = np.take_along_axis(offsets, order, axis=1) + np.arange(m) * needle_len  # [n, m]
    needles = np.concatenate([np.full((n, m, 1), NEEDLE_ID), keys, values], axis=2)  # [n, m, needle_len]
    needles = np.take_along_axis(needles, order[..., None], axis=1)
    is_needle = np.zeros((n, context), dtype=bool)
    np.put_along_axis(is_needle, (starts[..., None] + np.arange(needle_len)).reshape(n, -1), True, axis=1)
    ctx = np.empty((n, context), dtype=np.int64)
    ctx[is_needle] = needles.reshape(-1)  # row-major: each row's needles in position order
    ctx[~is_needle] = filler.reshape(-1)

    seq = np.concatenate([ctx, np.full((n, 1), QUERY_ID), keys[:, 0], values[:, 0]], axis=1)  # [n, T + 1]
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[:, seq_len - value_len:] = values[:, 0]
    needle_pos = np.take_along_axis(starts, np.argmax(order == 0, axis=1)[:, None], axis=1)[:, 0]
    depth_pct = 100.0 * offsets[:, 0] / max(num_filler, 1)
    return NeedleBatch(seq[:, :seq_len].astype(np.int64), labels, needle_pos.astype(np.int64), depth_pct)
