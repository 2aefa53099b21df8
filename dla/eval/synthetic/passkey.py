"""Passkey retrieval (Mohtashami and Jaggi's landmark-attention test, used by most long-context papers).

The prompt hides one sentence carrying a random number in repeated filler::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ...
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ...
    The pass key is 48213. Remember it. The grass is green. ...
    What is the pass key? The pass key is

The filler is built by string repetition and sized with a handful of token counts (``fit_units``), so a
million-token prompt is cheap. The passkey occurs exactly once in the input. Examples use the NIAH dict
(``target`` is the passkey string, ``task`` is ``"passkey"``); ``token_passkey`` is the token-level variant.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from .common import Seed, check_depth, check_int, grid_examples, make_rng
from .haystack import NOISE_SENTENCES, CycleHaystack, fit_units, insert_needles, make_counter
from .niah import NeedleBatch, token_niah

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
NEEDLE = "The pass key is {passkey}. Remember it."
QUESTION = "What is the pass key? The pass key is"


def generate_passkey(length: int, *, num_examples: int = 1, depth: Optional[float] = None, num_digits: int = 5,
                     tokenize: Optional[Callable[[str], Sequence]] = None, seed: Seed = 0) -> list[dict]:
    """Passkey prompts of about ``length`` tokens.

    Args:
        length: context length in tokens: the filler grows, one noise sentence at a time, while
            ``len(tokenize(input)) <= length`` (within one sentence of it).
        num_examples: examples to make.
        depth: percent in ``[0, 100]`` of the filler sentences before the passkey; None: uniform random.
        num_digits: digits of the passkey (no leading zero).
        tokenize: ``str -> sequence of tokens``; None counts words.
        seed: int or sequence of ints seeding a numpy Generator.

    Returns:
        dicts ``{"input": str, "target": str, "length": int, "depth": float, "task": "passkey"}`` where
        ``length`` is the requested length and ``depth`` the percent used.

    Example:
        >>> ex = generate_passkey(1000, depth=25.0, seed=0)[0]
        >>> ex["input"].count(ex["target"])
        1
    """
    check_int("length", length, 1)
    check_int("num_examples", num_examples, 1)
    depth = check_depth("depth", depth)
    check_int("num_digits", num_digits, 1, 18)
    count = make_counter(tokenize)
    rng = make_rng(seed)
    haystack = CycleHaystack(NOISE_SENTENCES)
    out = []
    for _ in range(num_examples):
        passkey = str(int(rng.integers(10 ** (num_digits - 1), 10 ** num_digits)))
        d = float(rng.uniform(0.0, 100.0)) if depth is None else depth
        needle = [(d, NEEDLE.format(passkey=passkey))]
        _, text = fit_units(lambda n: f"{INTRO}\n{insert_needles(haystack, n, needle)}\n{QUESTION}", count, length)
        out.append({"input": text, "target": passkey, "length": length, "depth": d, "task": "passkey"})
    return out


def passkey_grid(lengths: Iterable[int], depths: Iterable[float], *, num_examples: int = 1, num_digits: int = 5,
                 tokenize: Optional[Callable[[str], Sequence]] = None, seed: int = 0) -> list[dict]:
    """``generate_passkey`` over every ``(length, depth)`` cell, length-major; each cell is seeded by
    ``(seed, length, round(1000 * depth))``."""
    check_int("seed", seed, 0)
    return grid_examples(
        lambda length, depth, cell_seed: generate_passkey(length, num_examples=num_examples, depth=depth,
                                                          num_digits=num_digits, tokenize=tokenize, seed=cell_seed),
        lengths, depths, seed)


def token_passkey(num_examples: int, seq_len: int, vocab_size: int, *, passkey_len: int = 5,
                  depth: Optional[float] = None, filler_len: int = 16, seed: Seed = 0) -> NeedleBatch:
    """Token-level passkey: ``token_niah`` with one needle ``[NEEDLE_ID, passkey...]``, no key, a repeated
    ``filler_len``-token filler, and ``[QUERY_ID, passkey...]`` at the end (the passkey tokens are scored).

    Args:
        num_examples: rows ``N``.
        seq_len: ``T``, tokens per row.
        vocab_size: ids in ``[0, vocab_size)``; filler and passkey tokens avoid the marker ids.
        passkey_len: tokens of the passkey.
        depth: percent of the filler before the passkey; None: uniform random per row.
        filler_len: length of the repeated filler pattern.
        seed: int or sequence of ints seeding a numpy Generator.

    Returns:
        ``NeedleBatch(inputs, labels, needle_pos, depth)``, arrays ``[N, T]``, ``[N, T]``, ``[N]``, ``[N]``.
    """
    check_int("passkey_len", passkey_len, 1)
    return token_niah(num_examples, seq_len, vocab_size, key_len=0, value_len=passkey_len, num_needles=1,
                      depth=depth, haystack="repeat", filler_len=filler_len, seed=seed)
