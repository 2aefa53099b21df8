"""Packing: tokenize documents into one token stream per split and cut it into fixed-length training windows.

Layout. Each document is written as ``[EOS] + tokens(document)`` and the stream ends with one more ``EOS``:
``EOS d1 EOS d2 ... EOS dn EOS``. ``EOS`` thus opens every document (it is the BOS) and is the label of each
document's last token. Sequence ``i`` of length ``T = seq_len`` is the window

    input_ids = stream[i*T : i*T + T]        labels = stream[i*T + 1 : i*T + T + 1]

so windows tile the stream without overlap or loss (the concatenation of all ``input_ids`` is the stream prefix of
``len(seqs) * T`` tokens) and documents cross window borders freely. Document boundaries within a window come from
the EOS positions (``sequence_cu_seqlens``): a new segment starts at every EOS, plus one at position 0 for a
document continued from the previous window.

Validation split. A document goes to ``val`` when a seeded hash of its text is below ``val_fraction``: the split is
deterministic, independent of corpus order, and identical duplicates always land in the same split.

Cache. Streams are stored under ``cache_dir/tokens-<key>/{train,val}.bin`` (raw ``uint16``/``uint32``, read back as
``numpy.memmap``) with ``meta.json``. The key hashes the sources' fingerprints, the tokenizer, ``val_fraction`` and
``split_seed``; ``seq_len`` is deliberately not part of it, because the streams do not depend on it: changing the
context length reuses the tokenized data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from dla.data.cache import cache_key, publish_dir, staging_dir
from dla.data.sources import SourceConfig, iter_corpus, source_fingerprint
from dla.data.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
CACHE_FORMAT = 1


@dataclass(frozen=True)
class PackingConfig:
    """How documents become fixed-length sequences."""

    seq_len: int = 2048  # tokens per sequence (inputs and labels each have seq_len tokens)
    val_fraction: float = 0.01  # expected fraction of documents held out for validation, in [0, 1)
    split_seed: int = 0  # seed of the document-level train/val assignment
    cache_dir: Optional[str] = None  # where token streams are cached; None = tokenize in memory every run
    encode_batch_size: int = 256  # documents per tokenizers.encode_batch call

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"seq_len: expected >= 1, got {self.seq_len}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in [0, 1), got {self.val_fraction}")
        if self.encode_batch_size < 1:
            raise ValueError(f"encode_batch_size: expected >= 1, got {self.encode_batch_size}")


def is_validation_document(text: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether ``text`` belongs to the validation split: ``blake2b(seed, text)`` mapped to [0, 1) < ``val_fraction``."""
    if val_fraction <= 0.0:
        return False
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    return int.from_bytes(digest.digest(), "little") / 2.0**64 < val_fraction


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_token_streams(documents: Iterable[str], tokenizer: TextTokenizer, directory: Union[str, os.PathLike], *,
                        val_fraction: float = 0.0, split_seed: int = 0, encode_batch_size: int = 256) -> dict:
    """Tokenize ``documents`` into ``directory/train.bin`` and ``directory/val.bin`` plus ``meta.json``.

    Each split's stream is ``EOS d1 EOS d2 ... EOS dn EOS`` (see the module docstring); a split with no document is
    an empty file. Documents are read and encoded ``encode_batch_size`` at a time, so memory stays bounded.

    Returns:
        the metadata written to ``meta.json``: ``dtype``, ``eos_id``, ``vocab_size`` and per split
        ``num_tokens`` / ``num_documents``.
    """
    out = Path(directory)
    dtype = token_dtype(tokenizer.vocab_size)
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    counts = {split: {"num_tokens": 0, "num_documents": 0} for split in SPLITS}
    files = {split: open(out / f"{split}.bin", "wb") for split in SPLITS}

    def flush(batch: list[str]) -> None:
        for text, ids in zip(batch, tokenizer.encode_batch(batch)):
            split = "val" if is_validation_document(text, val_fraction, split_seed) else "train"
            array = np.concatenate([eos, np.asarray(ids, dtype=dtype)])
            files[split].write(array.tobytes())
            counts[split]["num_tokens"] += len(array)
            counts[split]["num_documents"] += 1

    try:
        batch: list[str] = []
        for document in documents:
            batch.append(document)
            if len(batch) == encode_batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        for split in SPLITS:
            if counts[split]["num_documents"]:
                files[split].write(eos.tobytes())
                counts[split]["num_tokens"] += 1
    finally:
        for f in files.values():
            f.close()
    meta = {"format": CACHE_FORMAT, "dtype": dtype.name, "eos_id": tokenizer.eos_id,
            "vocab_size": tokenizer.vocab_size, "splits": counts}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_token_streams(directory: Union[str, os.PathLike], in_memory: bool = False) -> tuple[dict, dict]:
    """Read what ``write_token_streams`` wrote.

    Returns:
        ``(streams, meta)``: ``streams[split]`` is a 1-D ``numpy`` array (``memmap`` unless ``in_memory``) of
        ``meta["dtype"]``.
    """
    root = Path(directory)
    meta = json.loads((root / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    streams = {}
    for split in SPLITS:
        n = meta["splits"][split]["num_tokens"]
        if n == 0:
            streams[split] = np.zeros(0, dtype=dtype)
        elif in_memory:
            streams[split] = np.fromfile(root / f"{split}.bin", dtype=dtype, count=n)
        else:
            streams[split] = np.memmap(root / f"{split}.bin", dtype=dtype, mode="r", shape=(n,))
    return streams, meta


def sequence_cu_seqlens(input_ids: np.ndarray, eos_id: int) -> np.ndarray:
    """Document boundaries of one packed sequence, FlashAttention varlen convention.

    Args:
        input_ids: ``[T]`` token ids.
        eos_id: id that opens each document.

    Returns:
        ``int32 [S + 1]``: 0, every EOS position > 0, then ``T``; segment ``s`` is ``input_ids[cu[s]:cu[s+1]]``.
    """
    starts = np.flatnonzero(np.asarray(input_ids) == eos_id)
    starts = starts[starts > 0]
    return np.concatenate([[0], starts, [len(input_ids)]]).astype(np.int32)


class PackedSequences:
    """Fixed-length next-token windows over a token stream (see the module docstring for the layout).

    Args:
        tokens: 1-D stream of token ids (``numpy`` array or ``memmap``).
        seq_len: tokens per sequence ``T``.
        eos_id: id of the EOS/BOS token.
        split: name used in error messages.

    Raises:
        ValueError: the stream has fewer than ``seq_len + 1`` tokens (not even one sequence with its labels).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, eos_id: int, split: str = "train") -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len: expected >= 1, got {seq_len}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens: expected a 1-D stream, got shape {tokens.shape}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"seq_len: the {split} split has {len(tokens)} tokens, fewer than seq_len + 1 = "
                             f"{seq_len + 1} needed for one sequence; use a larger corpus or a smaller seq_len"
                             + (" (or another val_fraction)" if split == "val" else ""))
        self.tokens = tokens
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.split = split

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def window(self, indices: Sequence[int]) -> np.ndarray:
        """``int64 [N, T + 1]``: the tokens of sequences ``indices`` with the label of their last position."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"indices: expected values in [0, {len(self)}), got {index.min()}..{index.max()}")
        offsets = index[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        return np.asarray(self.tokens[offsets.reshape(-1)], dtype=np.int64).reshape(len(index), self.seq_len + 1)

    def __getitem__(self, i: int) -> dict:
        """Sequence ``i``: ``input_ids`` and ``labels`` (``int64 [T]``), ``cu_seqlens`` (``int32 [S + 1]``)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"i: expected a sequence index in [0, {len(self)}), got {i}")
        row = self.window([i % len(self)])[0]
        return {"input_ids": row[:-1], "labels": row[1:], "cu_seqlens": sequence_cu_seqlens(row[:-1], self.eos_id)}


@dataclass
class PackedSplits:
    """The packed train and validation sequences of a corpus."""

    train: PackedSequences
    val: Optional[PackedSequences]  # None when val_fraction == 0
    meta: dict  # what write_token_streams returned
    cache_path: Optional[Path]  # directory of the cached streams, None when not cached


def pack_corpus(sources: Sequence[SourceConfig], tokenizer: TextTokenizer, config: PackingConfig) -> PackedSplits:
    """Tokenize the corpus of ``sources`` (or reuse the cache) and pack both splits into ``config.seq_len`` windows.

    Raises:
        ValueError: a split is too short for one sequence of ``seq_len + 1`` tokens (checked before training starts).
    """
    fingerprints = [source_fingerprint(s) for s in sources]
    key = cache_key(CACHE_FORMAT, fingerprints, tokenizer.fingerprint(), config.val_fraction, config.split_seed)
    kwargs = {"val_fraction": config.val_fraction, "split_seed": config.split_seed,
              "encode_batch_size": config.encode_batch_size}
    cache_path = None
    if config.cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="dla-tokens-") as tmp:
            write_token_streams(iter_corpus(sources), tokenizer, tmp, **kwargs)
            streams, meta = load_token_streams(tmp, in_memory=True)
    else:
        cache_path = Path(config.cache_dir) / f"tokens-{key}"
        if not (cache_path / "meta.json").is_file():
            logger.info("tokenizing corpus into %s", cache_path)
            tmp = staging_dir(cache_path)
            try:
                write_token_streams(iter_corpus(sources), tokenizer, tmp, **kwargs)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            publish_dir(tmp, cache_path)
        streams, meta = load_token_streams(cache_path)
    if meta["eos_id"] != tokenizer.eos_id:
        raise ValueError(f"cache_dir: cached streams at {cache_path} use eos_id {meta['eos_id']}, "
                         f"the tokenizer {tokenizer.eos_id}")
    train = PackedSequences(streams["train"], config.seq_len, tokenizer.eos_id, "train")
    val = PackedSequences(streams["val"], config.seq_len, tokenizer.eos_id, "val") if config.val_fraction else None
    logger.info("packed %d train and %d val sequences of %d tokens", len(train), len(val) if val else 0,
                config.seq_len)
    return PackedSplits(train, val, meta, cache_path)
