"""Data pipeline of the trainer: corpus sources, tokenizer, packing into fixed-length sequences, loaders, and the
synthetic MQAR task (``dla.data.mqar``: generated, no corpus).

Needs ``numpy``, ``torch`` and ``tokenizers``; ``datasets`` (hub sources), ``pyarrow`` (parquet files) and
``transformers`` (non-``tokenizer.json`` tokenizers) are imported only when used. Independent of ``dla.ops``.
"""

from dla.data.corpus import CorpusSource, TokenCorpus, write_corpus
from dla.data.loader import LoaderConfig, PackedLoader, batch_cu_seqlens
from dla.data.mqar import MQARConfig, generate_mqar, mqar_splits
from dla.data.packing import (PackedSequences, PackedSplits, PackingConfig, is_validation_document,
                              load_token_streams, pack_corpus, sequence_cu_seqlens, write_token_streams)
from dla.data.pipeline import DataBundle, DataConfig, build_data, build_loaders
from dla.data.sources import (SourceConfig, iter_corpus, iter_documents, iter_file_documents, iter_hf_documents,
                              iter_stdlib_documents, list_files, source_fingerprint, stdlib_files)
from dla.data.tokenizer import TextTokenizer, TokenizerConfig, get_tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "SourceConfig", "iter_documents", "iter_corpus", "iter_file_documents", "iter_hf_documents",
    "iter_stdlib_documents", "list_files", "stdlib_files", "source_fingerprint",
    "TokenizerConfig", "TextTokenizer", "load_tokenizer", "train_tokenizer", "get_tokenizer",
    "PackingConfig", "PackedSequences", "PackedSplits", "pack_corpus", "write_token_streams", "load_token_streams",
    "sequence_cu_seqlens", "is_validation_document",
    "LoaderConfig", "PackedLoader", "batch_cu_seqlens",
    "DataConfig", "DataBundle", "build_data", "build_loaders",
    "CorpusSource", "TokenCorpus", "write_corpus",
    "MQARConfig", "generate_mqar", "mqar_splits",
]
