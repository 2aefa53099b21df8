"""Haystack text for the NIAH and passkey prompts: filler sources, needle insertion, fitting to a length.

A haystack is an endless sequence of units (sentences here), of which a prompt uses the first ``n``; needles
go between units. ``fit_units`` finds the largest ``n`` whose prompt stays within a token budget.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

NOISE_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                   "There and back again.")
"""RULER's ``repeat`` noise and the classic passkey filler, cycled sentence by sentence."""

ADJECTIVES = (
    "amber", "ancient", "bitter", "bold", "brave", "brief", "bright", "calm", "careful", "cheerful", "clever",
    "cold", "crimson", "curious", "damp", "distant", "dusty", "eager", "early", "faint", "fierce", "fragile",
    "gentle", "gloomy", "golden", "graceful", "hollow", "humble", "icy", "idle", "jolly", "keen", "lively",
    "lonely", "loud", "lucky", "mellow", "merry", "misty", "modest", "narrow", "noble", "odd", "pale", "patient",
    "plain", "polite", "proud", "quiet", "rapid", "rare", "restless", "rough", "rusty", "silent", "silver",
    "sleepy", "slow", "smooth", "sober", "steady", "sturdy", "swift", "tame", "tender", "tidy", "vast", "vivid",
    "wary", "wild", "wise", "young",
)
NOUNS = (
    "anchor", "apricot", "badger", "basket", "beacon", "birch", "bison", "bracelet", "candle", "canyon",
    "castle", "cedar", "cliff", "comet", "compass", "crane", "crystal", "falcon", "feather", "fern", "fiddle",
    "garden", "glacier", "harbor", "hazel", "helmet", "heron", "island", "jackal", "kettle", "lantern", "larch",
    "lemur", "lichen", "meadow", "mirror", "moth", "needle", "oak", "orchard", "otter", "parrot", "pebble",
    "pepper", "pine", "planet", "quarry", "quill", "raven", "ribbon", "river", "saddle", "salmon", "shovel",
    "sparrow", "spruce", "thistle", "tiger", "tulip", "valley", "violin", "walnut", "willow", "wolf", "zebra",
)
"""Word keys and values are ``f"{adjective}-{noun}"`` (RULER draws them from the wonderwords lists)."""

_SUBJECTS = ("the committee", "a young engineer", "most founders", "the old librarian", "every good teacher",
             "the city council", "a patient gardener", "the small team", "our neighbour", "the new manager",
             "a careful reader", "the village baker", "the research group", "a travelling painter")
_VERBS = ("noticed", "argued about", "quietly improved", "rebuilt", "forgot", "studied", "ignored", "praised",
          "questioned", "described", "planned", "abandoned", "rediscovered", "measured")
_OBJECTS = ("the weekly schedule", "a small garden", "the annual budget", "an unusual idea", "the river path",
            "the broken bridge", "a forgotten letter", "the market square", "the evening lecture",
            "a wooden cabinet", "the harbour wall", "the long report", "the winter supplies", "an old map")
_TAILS = ("after the long winter", "without much fuss", "because nobody else would", "in the early spring",
          "before anyone noticed", "with surprising care", "during the storm", "for reasons nobody recalled",
          "while the town slept", "at the end of the season", "more than once", "with a little help")
_OPENERS = ("", "", "", "Later, ", "In the end, ", "Surprisingly, ", "As usual, ", "Once again, ",
            "It seemed obvious that ", "Nobody expected that ")


def essay_sentences(rng: np.random.Generator) -> Iterator[str]:
    """An endless stream of plain essay-like sentences (no digits), drawn from ``rng``."""
    parts = (_OPENERS, _SUBJECTS, _VERBS, _OBJECTS, _TAILS)
    sizes = [len(p) for p in parts]
    while True:
        o, s, v, x, t = (p[i] for p, i in zip(parts, rng.integers(0, sizes)))
        sentence = f"{o}{s} {v} {x} {t}."
        yield sentence[0].upper() + sentence[1:]


def split_sentences(text: str) -> list[str]:
    """Whitespace-normalised sentences of ``text``, split after ``.``, ``!`` or ``?``."""
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


class CycleHaystack:
    """The endless cycle of a fixed list of sentences; ``text`` uses string repetition, so a million-token
    filler costs a few string operations, not a list of sentences."""

    def __init__(self, sentences: Sequence[str]):
        if not sentences:
            raise ValueError("the haystack needs at least one sentence")
        self.sentences = tuple(sentences)

    def text(self, start: int, stop: int) -> str:
        """Units ``start..stop-1`` joined by a space."""
        count, n = stop - start, len(self.sentences)
        if count <= 0:
            return ""
        i = start % n
        rotated = self.sentences[i:] + self.sentences[:i]
        full, rest = divmod(count, n)
        block = " ".join(rotated) + " "
        return (block * full + " ".join(rotated[:rest])).rstrip(" ")


class StreamHaystack:
    """Units taken from an iterator as they are needed and kept, so a prefix never changes."""

    def __init__(self, units: Iterator[str]):
        self._units, self._seen = units, []

    def text(self, start: int, stop: int) -> str:
        while len(self._seen) < stop:
            self._seen.append(next(self._units))
        return " ".join(self._seen[start:stop])


def insert_needles(haystack, n: int, needles: Sequence[tuple[float, str]]) -> str:
    """The first ``n`` units of ``haystack`` with each ``(depth, needle)`` placed after
    ``round(depth / 100 * n)`` units (depth in percent); units and needles are joined by spaces."""
    placed = sorted((round(depth / 100.0 * n), i, needle) for i, (depth, needle) in enumerate(needles))
    pieces, prev = [], 0
    for index, _, needle in placed:
        if index > prev:
            pieces.append(haystack.text(prev, index))
        pieces.append(needle)
        prev = max(prev, index)
    if n > prev:
        pieces.append(haystack.text(prev, n))
    return " ".join(pieces)


def count_words(text: str) -> int:
    """The default token count: whitespace-separated words."""
    return len(text.split())


def make_counter(tokenize: Optional[Callable[[str], Sequence]]) -> Callable[[str], int]:
    """``len(tokenize(text))``, or ``count_words`` when ``tokenize`` is None."""
    if tokenize is None:
        return count_words
    if not callable(tokenize):
        raise ValueError(f"tokenize must be a callable str -> sequence of tokens or None, got {tokenize!r}")
    return lambda text: len(tokenize(text))


def fit_units(build: Callable[[int], str], count: Callable[[str], int], budget: int,
              max_steps: int = 200) -> tuple[int, str]:
    """The largest ``n >= 0`` with ``count(build(n)) <= budget``, and that text.

    ``count(build(n))`` must be non-decreasing in ``n``. The search extrapolates from the tokens per unit it
    has seen and interpolates inside the bracket, bisecting every other step, so a near-linear count needs
    a handful of ``count`` calls even for a million tokens.

    Raises:
        ValueError: naming ``length`` when even ``n = 0`` (prompt and needles alone) is over the budget.
    """
    text0 = build(0)
    c0 = count(text0)
    if c0 > budget:
        raise ValueError(f"length={budget} is too small: the prompt without any haystack already has {c0} tokens")
    lo, c_lo, t_lo, hi, c_hi = 0, c0, text0, None, None
    for step in range(max_steps):
        if hi is not None and hi - lo <= 1:
            return lo, t_lo
        if hi is None:
            rate = (c_lo - c0) / lo if lo else 0.0
            n = lo + int((budget - c_lo) / rate) + 1 if rate > 0 else max(1, 2 * lo)
        elif step % 2:
            n = (lo + hi) // 2
        else:
            n = lo + int((budget - c_lo) * (hi - lo) / max(c_hi - c_lo, 1))
        n = max(n, lo + 1) if hi is None else min(max(n, lo + 1), hi - 1)
        text = build(n)
        c = count(text)
        if c <= budget:
            lo, c_lo, t_lo = n, c, text
        else:
            hi, c_hi = n, c
    raise RuntimeError(f"fit_units did not converge in {max_steps} steps (does the count grow with the haystack?)")
