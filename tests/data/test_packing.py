import numpy as np
import pytest

import dla.data.packing as packing
from dla.data.packing import (PackedSequences, PackingConfig, is_validation_document, load_token_streams,
                              pack_corpus, sequence_cu_seqlens, token_dtype, write_token_streams)
from dla.data.sources import SourceConfig


def expected_stream(docs, tokenizer):
    eos = tokenizer.eos_id
    return np.array([t for d in docs for t in [eos] + tokenizer.encode(d)] + [eos], dtype=np.int64)


def test_stream_is_eos_joined_documents(documents, tokenizer, tmp_path):
    meta = write_token_streams(documents, tokenizer, tmp_path, encode_batch_size=7)
    streams, loaded_meta = load_token_streams(tmp_path)
    assert meta == loaded_meta
    np.testing.assert_array_equal(np.asarray(streams["train"], dtype=np.int64), expected_stream(documents, tokenizer))
    assert len(streams["val"]) == 0 and meta["splits"]["train"]["num_documents"] == len(documents)


def test_packed_sequences_tile_the_stream(documents, tokenizer):
    stream = expected_stream(documents, tokenizer)
    seqs = PackedSequences(stream.astype(np.uint16), seq_len=37, eos_id=tokenizer.eos_id)
    assert len(seqs) == (len(stream) - 1) // 37
    items = [seqs[i] for i in range(len(seqs))]
    np.testing.assert_array_equal(np.concatenate([s["input_ids"] for s in items]), stream[:len(seqs) * 37])
    np.testing.assert_array_equal(np.concatenate([s["labels"] for s in items]), stream[1:len(seqs) * 37 + 1])
    assert all(s["input_ids"].dtype == np.int64 and s["input_ids"].shape == (37,) for s in items)


def test_cu_seqlens_match_document_starts(documents, tokenizer):
    T = 50
    lengths = [1 + len(tokenizer.encode(d)) for d in documents]
    doc_starts = np.cumsum([0] + lengths[:-1])  # stream offset of each document's EOS
    seqs = PackedSequences(expected_stream(documents, tokenizer), seq_len=T, eos_id=tokenizer.eos_id)
    for i in range(len(seqs)):
        item = seqs[i]
        cu = item["cu_seqlens"]
        inside = doc_starts[(doc_starts > i * T) & (doc_starts < (i + 1) * T)] - i * T
        np.testing.assert_array_equal(cu, np.concatenate([[0], inside, [T]]))
        assert cu.dtype == np.int32 and np.all(np.diff(cu) > 0)
        assert np.all(item["input_ids"][cu[1:-1]] == tokenizer.eos_id)
        assert np.count_nonzero(item["input_ids"][1:] == tokenizer.eos_id) == len(cu) - 2


def test_sequence_cu_seqlens_example():
    np.testing.assert_array_equal(sequence_cu_seqlens(np.array([0, 4, 4, 0, 5, 0]), eos_id=0), [0, 3, 5, 6])
    np.testing.assert_array_equal(sequence_cu_seqlens(np.array([7, 7, 7]), eos_id=0), [0, 3])


def test_validation_split_disjoint_and_deterministic(documents, tokenizer, tmp_path):
    meta = write_token_streams(documents, tokenizer, tmp_path, val_fraction=0.25, split_seed=3)
    streams, _ = load_token_streams(tmp_path, in_memory=True)
    val_docs = [d for d in documents if is_validation_document(d, 0.25, 3)]
    train_docs = [d for d in documents if not is_validation_document(d, 0.25, 3)]
    assert not set(val_docs) & set(train_docs) and len(val_docs) + len(train_docs) == len(documents)
    assert 0.15 * len(documents) < len(val_docs) < 0.35 * len(documents)
    assert meta["splits"]["val"]["num_documents"] == len(val_docs)
    np.testing.assert_array_equal(streams["val"], expected_stream(val_docs, tokenizer))
    np.testing.assert_array_equal(streams["train"], expected_stream(train_docs, tokenizer))
    assert [is_validation_document(d, 0.25, 3) for d in documents] == \
        [is_validation_document(d, 0.25, 3) for d in documents]
    assert [is_validation_document(d, 0.25, 4) for d in documents] != \
        [is_validation_document(d, 0.25, 3) for d in documents]
    assert not any(is_validation_document(d, 0.0, 3) for d in documents)


def test_pack_corpus_caches_streams(corpus_dir, documents, tokenizer, tmp_path, monkeypatch):
    sources = [SourceConfig("files", path=str(corpus_dir))]
    config = PackingConfig(seq_len=32, val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    first = pack_corpus(sources, tokenizer, config)
    assert first.cache_path is not None and (first.cache_path / "meta.json").is_file()
    assert first.meta["splits"]["train"]["num_documents"] + first.meta["splits"]["val"]["num_documents"] == \
        len(documents)

    def no_retokenize(*args, **kwargs):
        raise AssertionError("cached streams should have been reused")

    monkeypatch.setattr(packing, "write_token_streams", no_retokenize)
    again = pack_corpus(sources, tokenizer, config)
    longer = pack_corpus(sources, tokenizer, PackingConfig(seq_len=64, val_fraction=0.2, cache_dir=config.cache_dir))
    assert again.cache_path == first.cache_path == longer.cache_path  # seq_len does not change the streams
    np.testing.assert_array_equal(again.train.tokens, first.train.tokens)
    assert len(longer.train) == (len(first.train.tokens) - 1) // 64
    monkeypatch.undo()
    other_seed = pack_corpus(sources, tokenizer, PackingConfig(seq_len=32, val_fraction=0.2, split_seed=1,
                                                               cache_dir=config.cache_dir))
    assert other_seed.cache_path != first.cache_path


def test_pack_corpus_without_cache_matches_cached(corpus_dir, tokenizer, tmp_path):
    sources = [SourceConfig("files", path=str(corpus_dir))]
    plain = pack_corpus(sources, tokenizer, PackingConfig(seq_len=16, val_fraction=0.0))
    cached = pack_corpus(sources, tokenizer, PackingConfig(seq_len=16, val_fraction=0.0, cache_dir=str(tmp_path)))
    assert plain.cache_path is None and plain.val is None
    np.testing.assert_array_equal(plain.train.tokens, cached.train.tokens)


def test_corpus_too_small_raises(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("tiny")
    sources = [SourceConfig("files", path=str(tmp_path / "a.txt"))]
    with pytest.raises(ValueError, match=r"seq_len: the train split has \d+ tokens, fewer than seq_len \+ 1"):
        pack_corpus(sources, tokenizer, PackingConfig(seq_len=512, val_fraction=0.0))
    with pytest.raises(ValueError, match=r"seq_len: the val split has 0 tokens.*val_fraction"):
        pack_corpus(sources, tokenizer, PackingConfig(seq_len=2, val_fraction=1e-9))


def test_window_and_index_errors(tokenizer):
    seqs = PackedSequences(np.arange(21), seq_len=5, eos_id=0)
    np.testing.assert_array_equal(seqs.window([3, 0]), [[15, 16, 17, 18, 19, 20], [0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(seqs[-1]["input_ids"], [15, 16, 17, 18, 19])
    with pytest.raises(IndexError, match="indices"):
        seqs.window([4])
    with pytest.raises(IndexError, match="i: expected"):
        seqs[4]


def test_token_dtype():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


@pytest.mark.parametrize("kwargs, match", [
    ({"seq_len": 0}, "seq_len"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"encode_batch_size": 0}, "encode_batch_size"),
])
def test_packing_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PackingConfig(**kwargs)
