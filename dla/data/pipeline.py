"""The whole data pipeline behind one config: sources -> tokenizer -> packed splits -> loaders.

Example:
    >>> config = DataConfig(packing=PackingConfig(seq_len=1024, cache_dir="runs/cache"),
    ...                     loader=LoaderConfig(batch_size=16, rank=rank, world_size=world_size))
    >>> data = build_data(config)                   # stdlib corpus, trained 8K BPE, cached token streams
    >>> train_loader, val_loader = build_loaders(data, config.loader)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from dla.data.corpus import TokenCorpus
from dla.data.loader import LoaderConfig, PackedLoader
from dla.data.packing import PackedSplits, PackingConfig, is_validation_document, pack_corpus
from dla.data.sources import SourceConfig, iter_corpus, source_fingerprint
from dla.data.tokenizer import TextTokenizer, TokenizerConfig, get_tokenizer


@dataclass(frozen=True)
class DataConfig:
    """Everything the trainer's data needs; each part is validated by its own dataclass."""

    sources: tuple[SourceConfig, ...] = (SourceConfig(kind="stdlib"),)  # read in order; default: Python stdlib
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # load or train the tokenizer
    packing: PackingConfig = field(default_factory=PackingConfig)  # seq_len, validation split, cache
    loader: LoaderConfig = field(default_factory=LoaderConfig)  # batch size, shuffle seed, rank/world size
    tokens: Optional[str] = None  # a corpus written by `dla data tokenize` (dla.data.corpus): used instead of
    # sources, tokenizer and the packing's split and cache (its held-out documents are the validation split)

    def __post_init__(self) -> None:
        if not isinstance(self.sources, tuple):
            object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise ValueError("sources: expected at least one SourceConfig, got none")
        for i, source in enumerate(self.sources):
            if not isinstance(source, SourceConfig):
                raise ValueError(f"sources[{i}]: expected a SourceConfig, got {type(source).__name__}")
        for name, kind in (("tokenizer", TokenizerConfig), ("packing", PackingConfig), ("loader", LoaderConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name}: expected a {kind.__name__}, got {type(getattr(self, name)).__name__}")


@dataclass
class DataBundle:
    """What ``build_data`` returns: the tokenizer and the packed splits."""

    tokenizer: TextTokenizer
    splits: PackedSplits


def build_data(config: DataConfig) -> DataBundle:
    """Get the tokenizer (trained on train-split documents only when ``config.tokenizer.path`` is None) and pack
    the corpus; both are cached under ``config.packing.cache_dir`` when it is set. With ``config.tokens``, the
    tokenizer and both splits come from that token corpus instead (nothing is read or tokenized).

    Raises:
        ValueError / FileNotFoundError: a bad source, an empty corpus, or a split too short for one sequence.
    """
    packing = config.packing
    if config.tokens is not None:
        corpus = TokenCorpus(config.tokens)
        return DataBundle(corpus.tokenizer, corpus.packed(packing.seq_len))
    documents_key = [[source_fingerprint(s) for s in config.sources], packing.val_fraction, packing.split_seed]
    train_documents = (d for d in iter_corpus(config.sources)
                       if not is_validation_document(d, packing.val_fraction, packing.split_seed))
    tokenizer = get_tokenizer(config.tokenizer, train_documents, packing.cache_dir, str(documents_key))
    return DataBundle(tokenizer, pack_corpus(config.sources, tokenizer, packing))


def build_loaders(data: DataBundle, config: LoaderConfig) -> tuple[PackedLoader, Optional[PackedLoader]]:
    """The train loader (``config``) and a validation loader (one pass, stream order, same batch size and
    sharding), or None for the latter when there is no validation split."""
    train = PackedLoader(data.splits.train, config)
    if data.splits.val is None:
        return train, None
    val = PackedLoader(data.splits.val, dataclasses.replace(config, shuffle=False, epochs=1))
    return train, val
