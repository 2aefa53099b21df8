"""Tokenizers: load a local Hugging Face tokenizer, or train a deterministic byte-level BPE on a corpus sample.

``TextTokenizer`` wraps a ``tokenizers.Tokenizer`` with the one special token the pipeline needs, ``eos_token``
(default ``<|endoftext|>``), which also serves as BOS (the GPT-2 convention). Documents are encoded with special
tokens treated as plain text, so a document that literally contains ``<|endoftext|>`` never produces the EOS id
and document boundaries stay unambiguous. A saved directory loads with
``transformers.PreTrainedTokenizerFast(tokenizer_file=dir + "/tokenizer.json")`` or ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dla.data.cache import cache_key, publish_dir, staging_dir

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TokenizerConfig:
    """How to get the tokenizer: load ``path`` if set, else train a byte-level BPE on the corpus."""

    path: Optional[str] = None  # directory with tokenizer.json (or a transformers fast tokenizer), or the file
    vocab_size: int = 8192  # training only: vocabulary size including the EOS token and the 256 byte tokens
    eos_token: str = EOS_TOKEN  # EOS, also used as BOS; must be in the vocabulary of a loaded tokenizer
    min_frequency: int = 2  # training only: minimum count of a pair to be merged
    train_chars: int = 4_000_000  # training only: characters of corpus sample (whole documents, in corpus order)

    def __post_init__(self) -> None:
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size: expected >= 257 (256 bytes + EOS), got {self.vocab_size}")
        if not self.eos_token:
            raise ValueError(f"eos_token: expected a non-empty string, got {self.eos_token!r}")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency: expected >= 1, got {self.min_frequency}")
        if self.train_chars < 1:
            raise ValueError(f"train_chars: expected >= 1, got {self.train_chars}")


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus its EOS token.

    Args:
        tokenizer: the backend tokenizer.
        eos_token: the EOS/BOS token; must be in the vocabulary.

    Attributes:
        eos_id (int): id of ``eos_token``; ``bos_id`` is the same id.
        vocab_size (int): number of ids, added tokens included.
    """

    def __init__(self, tokenizer: Tokenizer, eos_token: str = EOS_TOKEN) -> None:
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"eos_token: {eos_token!r} is not in the tokenizer vocabulary")
        self.backend = tokenizer
        self.backend.encode_special_tokens = True  # runtime only, not serialized: documents cannot emit EOS
        self.eos_token = eos_token
        self.eos_id = int(eos_id)
        self.bos_id = self.eos_id
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by ``tokenizers``."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the EOS token is kept, so ``decode(encode(t)) == t`` for any text with a byte-level BPE."""
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        """A hex digest of the serialized tokenizer and EOS token; used as a cache key."""
        return hashlib.sha256((self.backend.to_str() + "\0" + self.eos_token).encode()).hexdigest()

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``directory``.

        Returns:
            the path of ``tokenizer.json``.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / TOKENIZER_FILE))
        special = {"bos_token": self.eos_token, "eos_token": self.eos_token, "unk_token": self.eos_token}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "add_bos_token": False, "add_eos_token": False, **special}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        return out / TOKENIZER_FILE


def _configured_eos(directory: Path) -> Optional[str]:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = directory / name
        if file.is_file():
            token = json.loads(file.read_text()).get("eos_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str) and token:
                return token
    return None


def load_tokenizer(path: Union[str, os.PathLike], eos_token: Optional[str] = None) -> TextTokenizer:
    """Load a tokenizer from a local directory or ``tokenizer.json`` file.

    A directory without ``tokenizer.json`` is loaded with ``transformers.AutoTokenizer`` (optional dependency) and
    must give a fast tokenizer.

    Args:
        path: directory or ``tokenizer.json`` file.
        eos_token: EOS token; None = ``eos_token`` of the directory's ``tokenizer_config.json`` /
            ``special_tokens_map.json``, else ``<|endoftext|>``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no loadable tokenizer at ``path``, or ``eos_token`` not in its vocabulary.
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"path: tokenizer {str(path)!r} does not exist")
    directory = source if source.is_dir() else source.parent
    eos = eos_token or _configured_eos(directory) or EOS_TOKEN
    file = source / TOKENIZER_FILE if source.is_dir() else source
    if file.is_file():
        return TextTokenizer(Tokenizer.from_file(str(file)), eos)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError(f"path: {str(path)!r} has no {TOKENIZER_FILE}; install transformers to load other "
                         f"tokenizer formats") from None
    try:
        hf = AutoTokenizer.from_pretrained(str(source), use_fast=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"path: no loadable tokenizer at {str(path)!r} ({e})") from e
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"path: {str(path)!r} loads a slow tokenizer ({type(hf).__name__}); a fast one is required")
    return TextTokenizer(hf.backend_tokenizer, eos_token or hf.eos_token or EOS_TOKEN)


def train_tokenizer(documents: Iterable[str], vocab_size: int = 8192, *, eos_token: str = EOS_TOKEN,
                    min_frequency: int = 2, train_chars: int = 4_000_000) -> TextTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization, no normalizer) on a prefix of ``documents``.

    The result depends only on the sampled documents and arguments (training is deterministic); any text
    round-trips through ``encode``/``decode``.

    Args:
        documents: corpus; whole documents are taken in order until ``train_chars`` characters are reached.
        vocab_size: final vocabulary size, ``eos_token`` (id 0) and the 256 byte tokens included.
        eos_token: the special EOS/BOS token.
        min_frequency: minimum count of a pair to be merged.
        train_chars: size of the training sample in characters.

    Example:
        >>> tok = train_tokenizer(iter_stdlib_documents(), vocab_size=4096, train_chars=1_000_000)
        >>> tok.decode(tok.encode("def f(x):\\n    return x")) == "def f(x):\\n    return x"
        True
    """
    TokenizerConfig(vocab_size=vocab_size, eos_token=eos_token, min_frequency=min_frequency, train_chars=train_chars)
    sample, chars = [], 0
    for document in documents:
        sample.append(document)
        chars += len(document)
        if chars >= train_chars:
            break
    if not sample:
        raise ValueError("documents: expected at least one document to train the tokenizer, got none")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[eos_token], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sample, trainer=trainer, length=len(sample))
    logger.info("trained byte-level BPE: %d tokens on %d documents (%d chars)",
                tokenizer.get_vocab_size(), len(sample), chars)
    return TextTokenizer(tokenizer, eos_token)


def get_tokenizer(config: TokenizerConfig, documents: Optional[Iterable[str]] = None,
                  cache_dir: Optional[Union[str, os.PathLike]] = None, documents_key: str = "") -> TextTokenizer:
    """Load ``config.path``, or train on ``documents`` (reusing ``cache_dir/tokenizer-<hash>`` when present).

    Args:
        config: tokenizer settings.
        documents: training corpus; required when ``config.path`` is None.
        cache_dir: where a trained tokenizer is saved and looked up; None = no cache.
        documents_key: identifies ``documents`` (e.g. the sources' fingerprints); hashed with ``config``.
    """
    if config.path is not None:
        return load_tokenizer(config.path, config.eos_token)
    if documents is None:
        raise ValueError("documents: required to train a tokenizer when config.path is None")
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"tokenizer-{cache_key(vars(config), documents_key)}"
        if (cached / TOKENIZER_FILE).is_file():
            logger.info("loading cached tokenizer %s", cached)
            return load_tokenizer(cached, config.eos_token)
    tokenizer = train_tokenizer(documents, config.vocab_size, eos_token=config.eos_token,
                                min_frequency=config.min_frequency, train_chars=config.train_chars)
    if cached is not None:
        tmp = staging_dir(cached)
        tokenizer.save(tmp)
        publish_dir(tmp, cached)
    return tokenizer
