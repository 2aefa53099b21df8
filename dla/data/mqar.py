"""Multi-query associative recall (MQAR), with the generation rules of Zoology's ``multiquery_ar``.

One example of length ``T`` with ``N`` key-value pairs::

    k1 v1 k2 v2 ... kN vN | . . k2 . . . k1 . . kN . . ...
    \\__ context: 2N ____/ \\__ query region: T - 2N ________/

* Keys are ``N`` distinct ids of ``[1, vocab_size // 2)``, values ``N`` distinct ids of
  ``[vocab_size // 2, vocab_size)``: the two halves of the vocabulary never mix.
* The query region has ``(T - 2N) // 2`` even slots. Each key is asked once, at slot ``g`` (its query
  distance, 0-based), with the slots drawn without replacement, each draw picking slot ``g`` with weight
  ``alpha * (g + 1) ** (alpha - 1)``: a power law, so most keys are asked soon after the context.
* ``labels`` is -100 everywhere except at each query key, where it is the value bound to that key
  (the token to predict next). Accuracy is taken over those ``N`` positions only.
* Every other position of the query region (the odd slots and the unused even ones) holds a token drawn
  uniformly from the whole vocabulary, or 0 when ``random_non_queries=False``.

Zoology's train mix (vocab 8192) is ``(T, N)`` = (64, 4), (128, 8), (256, 16/32/64); its test set adds up to
(1024, 256). On 2 CPU cores, ``T=64, N=8, vocab_size=256`` is learnt in minutes (docs/results.md).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from dla.data.synthetic import IGNORE_INDEX, Seed, TokenBatch, check_int, make_rng, sample_rows


@dataclass(frozen=True)
class MQARConfig:
    """What an MQAR split looks like; checked on construction.

    Attributes:
        seq_len: ``T``, tokens per example (context plus query region).
        num_kv_pairs: ``N``, key-value pairs per example; every key is queried once.
        vocab_size: ids are in ``[0, vocab_size)``; keys use the lower half (0 excluded), values the upper.
        alpha: power-law exponent of the query distance, > 0; small is front-loaded (0.01 is Zoology's
            default), 1 is uniform over the query slots.
        num_examples: ``N`` rows of the output arrays.
        num_passes: the context is repeated this many times before the query region (JRT's "read twice").
        random_non_queries: fill the non-query positions of the query region with uniform random tokens
            (Zoology's default) instead of 0.
    """

    seq_len: int = 64
    num_kv_pairs: int = 4
    vocab_size: int = 8192
    alpha: float = 0.01
    num_examples: int = 1000
    num_passes: int = 1
    random_non_queries: bool = True

    def __post_init__(self):
        check_int("num_kv_pairs", self.num_kv_pairs, 1)
        check_int("num_passes", self.num_passes, 1)
        check_int("num_examples", self.num_examples, 1)
        context = 2 * self.num_kv_pairs * self.num_passes
        check_int("seq_len", self.seq_len, context + 2 * self.num_kv_pairs)
        # keys need N ids in [1, vocab // 2), values N ids in [vocab // 2, vocab)
        check_int("vocab_size", self.vocab_size, 2 * self.num_kv_pairs + 2)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) or not self.alpha > 0:
            raise ValueError(f"alpha must be a float > 0, got {self.alpha!r}")
        if not isinstance(self.random_non_queries, bool):
            raise ValueError(f"random_non_queries must be a bool, got {self.random_non_queries!r}")

    @property
    def context_len(self) -> int:
        """Tokens before the query region: ``2 * num_kv_pairs * num_passes``."""
        return 2 * self.num_kv_pairs * self.num_passes

    @property
    def num_query_slots(self) -> int:
        """Even slots of the query region, where keys may be asked: ``(seq_len - context_len) // 2``."""
        return (self.seq_len - self.context_len) // 2


def query_distance_weights(num_slots: int, alpha: float) -> np.ndarray:
    """``[num_slots]`` probabilities of the first draw of a query slot: ``alpha * g ** (alpha - 1)``,
    ``g = 1..num_slots``, normalised."""
    g = np.arange(1, num_slots + 1, dtype=np.float64)
    p = alpha * g ** (alpha - 1.0)
    return p / p.sum()


def generate_mqar(config: MQARConfig, seed: Seed = 0) -> TokenBatch:
    """MQAR examples for ``config``; the same ``(config, seed)`` always gives the same arrays.

    Args:
        config: sizes and options, see ``MQARConfig``.
        seed: int or sequence of ints seeding a numpy Generator.

    Returns:
        ``TokenBatch(inputs, labels)``, both ``[num_examples, seq_len]`` int64; ``labels`` is -100 except at the
        ``num_kv_pairs`` query positions of each row.

    Example:
        >>> inputs, labels = generate_mqar(MQARConfig(seq_len=64, num_kv_pairs=8, vocab_size=256), seed=0)
        >>> int((labels != -100).sum(1).max())
        8
    """
    if not isinstance(config, MQARConfig):
        raise ValueError(f"config must be an MQARConfig, got {type(config).__name__}")
    rng = make_rng(seed)
    n, t, k, v = config.num_examples, config.seq_len, config.num_kv_pairs, config.vocab_size
    half = v // 2
    keys = 1 + sample_rows(rng, n, half - 1, k)  # [n, k]
    values = half + sample_rows(rng, n, v - half, k)  # [n, k]

    inputs = np.zeros((n, t), dtype=np.int64)
    context = np.empty((n, 2 * k), dtype=np.int64)
    context[:, 0::2], context[:, 1::2] = keys, values
    inputs[:, :config.context_len] = np.tile(context, (1, config.num_passes))

    slots = config.num_query_slots
    gaps = sample_rows(rng, n, slots, k, weights=query_distance_weights(slots, config.alpha))  # [n, k]
    query_pos = config.context_len + 2 * gaps
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    labels = np.full((n, t), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, query_pos, values, axis=1)

    if config.random_non_queries:
        filler = np.ones((n, t), dtype=bool)
        filler[:, :config.context_len] = False
        np.put_along_axis(filler, query_pos, False, axis=1)
        inputs[filler] = rng.integers(0, v, size=int(filler.sum()))
    return TokenBatch(inputs, labels)


def mqar_splits(train: MQARConfig, test: MQARConfig, seed: int = 0) -> tuple[TokenBatch, TokenBatch]:
    """Train and test sets drawn from different seeds: ``(seed, 0)`` for train, ``(seed, 1)`` for test.

    Returns:
        ``(train_batch, test_batch)``; each is what ``generate_mqar`` returns for its config.
    """
    check_int("seed", seed, 0)
    return generate_mqar(train, (seed, 0)), generate_mqar(test, (seed, 1))


__all__ = ["MQARConfig", "generate_mqar", "mqar_splits", "query_distance_weights"]
