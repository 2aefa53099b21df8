"""Synthetic evaluation data, deterministic by seed (numpy).

* ``mqar``: multi-query associative recall (Zoology's generator rules), token arrays; training data, so it
  lives in :mod:`dla.data.mqar` and is re-exported here.
* ``niah``: RULER-style needle-in-a-haystack prompts (strings, jsonl) and a token-level variant.
* ``passkey``: passkey retrieval prompts up to millions of tokens, and a token-level variant.
"""

from dla.data.mqar import MQARConfig, generate_mqar, mqar_splits

from .common import IGNORE_INDEX, TokenBatch, read_jsonl, write_jsonl
from .niah import (NEEDLE_ID, NIAH_TASKS, NUM_SPECIAL_TOKENS, PAD_ID, QUERY_ID, NeedleBatch, NIAHTask, generate_niah,
                   niah_grid, token_niah)
from .passkey import generate_passkey, passkey_grid, token_passkey

__all__ = [
    "IGNORE_INDEX", "TokenBatch", "read_jsonl", "write_jsonl",
    "MQARConfig", "generate_mqar", "mqar_splits",
    "NIAHTask", "NIAH_TASKS", "generate_niah", "niah_grid",
    "NeedleBatch", "token_niah", "PAD_ID", "NEEDLE_ID", "QUERY_ID", "NUM_SPECIAL_TOKENS",
    "generate_passkey", "passkey_grid", "token_passkey",
]
