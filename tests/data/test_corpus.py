"""Token corpora: whole documents held out per domain, streams that decode back to the texts, what the trainer
reads (``data.tokens``), and the ``dla data`` command."""

import json

import numpy as np
import pytest

from dla.data import DataConfig, PackingConfig, SourceConfig, build_data, load_token_streams
from dla.data.corpus import (CorpusSource, TokenCorpus, book_sources, corpus_table, parse_source, plan_heldout,
                             write_corpus)
from dla.data.sources import iter_named_documents

from .conftest import make_documents


def _records(domain_sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [{"domain": d, "chars": int(c), "score": float(rng.random())} for d, sizes in domain_sizes.items()
            for c in sizes]


def test_plan_heldout_fractions_whole_documents():
    records = _records({"a": [100] * 20, "b": [1000, 10, 10], "c": [5]})
    held = plan_heldout(records, {"*": 0.1, "b": 0.5})
    a = [h for r, h in zip(records, held) if r["domain"] == "a"]
    assert sum(a) == 2  # 10% of 2000 chars: two 100-char documents
    b = [h for r, h in zip(records, held) if r["domain"] == "b"]
    assert 1 <= sum(b) <= 2  # at least one, never all three
    assert not held[-1]  # a one-document domain keeps its document
    # the choice follows the scores, not the order of the records
    order = np.random.default_rng(1).permutation(len(records))
    again = plan_heldout([records[i] for i in order], {"*": 0.1, "b": 0.5})
    assert [again[list(order).index(i)] for i in range(len(records))] == held
    assert not any(plan_heldout(records, 0.0))
    with pytest.raises(ValueError, match="heldout"):
        plan_heldout(records, 1.0)


def test_parse_source():
    s = parse_source("books:austen=some/dir")
    assert (s.domain, s.name, s.source.kind, s.source.path) == ("books", "austen", "files", "some/dir")
    s = parse_source("code=stdlib")
    assert (s.domain, s.name, s.source.kind) == ("code", "code", "stdlib")
    for bad in ("nodomain", "=x", "bad domain=x"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_named_documents_follow_iter_documents(corpus_dir, documents):
    names = list(iter_named_documents(SourceConfig("files", path=str(corpus_dir))))
    assert [t for _, t in names] == documents
    assert names[0][0] == "a.txt" and names[1][0] == "b/c.parquet:1" and names[-1][0].startswith("b/d.jsonl:")


@pytest.fixture()
def corpus(tmp_path, tokenizer):
    texts = {"prose": make_documents(40, seed=1, max_words=200), "code": make_documents(30, seed=2)}
    sources = []
    for domain, docs in texts.items():
        directory = tmp_path / "text" / domain
        directory.mkdir(parents=True)
        for i, doc in enumerate(docs):
            (directory / f"{i:03d}.txt").write_text(doc)
        sources.append(CorpusSource(domain, domain, SourceConfig("files", path=str(directory))))
    meta = write_corpus(sources, tmp_path / "tokens", tokenizer=tokenizer, heldout={"*": 0.1, "code": 0.2})
    return TokenCorpus(tmp_path / "tokens"), texts, meta


def test_corpus_streams_decode_to_the_documents(corpus, tokenizer):
    corpus, texts, meta = corpus
    assert len(corpus.records) == 70
    for split in ("train", "val"):
        stream = corpus.streams[split]
        assert stream[0] == stream[-1] == tokenizer.eos_id
        for r in corpus.select(split):
            assert stream[r["offset"]] == tokenizer.eos_id
            assert tokenizer.decode(corpus.tokens(r).tolist()) == texts[r["domain"]][int(r["name"][:3])]
    for domain, fraction in (("prose", 0.1), ("code", 0.2)):
        held = corpus.select("val", domain=domain)
        chars = sum(r["chars"] for r in corpus.records if r["domain"] == domain)
        assert held and sum(r["chars"] for r in held) >= fraction * chars
        assert sum(r["chars"] for r in held[:-1]) < fraction * chars + max(r["chars"] for r in held)
    assert meta["domains"]["code"]["val_documents"] == len(corpus.select("val", domain="code"))
    assert sum(r["val_tokens"] + r["train_tokens"] for r in meta["sources"].values()) == \
        sum(r["tokens"] for r in corpus.records)
    streams, loaded = load_token_streams(corpus.path)  # the packing module's reader sees the same streams
    assert np.array_equal(streams["val"], corpus.streams["val"]) and loaded["eos_id"] == tokenizer.eos_id
    assert "| **all** |" in corpus_table(meta)
    with pytest.raises(ValueError, match="domain"):
        corpus.select("val", domain="poetry")


def test_trainer_reads_the_corpus(corpus):
    corpus, _, _ = corpus
    bundle = build_data(DataConfig(tokens=str(corpus.path), packing=PackingConfig(seq_len=16)))
    assert bundle.tokenizer.vocab_size == corpus.meta["vocab_size"]
    assert len(bundle.splits.train) == (corpus.meta["splits"]["train"]["num_tokens"] - 1) // 16
    window = bundle.splits.val.window([0])[0]
    assert np.array_equal(window, corpus.streams["val"][:17])


def test_corpus_rejects_a_truncated_copy(corpus):
    corpus, _, _ = corpus
    with open(corpus.path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="interrupted copy"):
        TokenCorpus(corpus.path)
    with pytest.raises(FileNotFoundError, match="dla data"):
        TokenCorpus(corpus.path / "nothing")


def test_cli_tokenize_and_info(tmp_path, corpus_dir, capsys):
    from dla.cli import main

    text = tmp_path / "text" / "books" / "demo"
    text.mkdir(parents=True)
    for i in range(6):
        (text / f"{i:03d}-part.txt").write_text(f"Chapter {i}. " + "The quiet morning by the bridge. " * 40)
    (tmp_path / "text" / "manifest.json").write_text(json.dumps({"sources": [{"name": "demo", "domain": "books"}]}))
    assert [s.name for s in book_sources(tmp_path / "text")] == ["demo"]
    out = tmp_path / "tokens"
    assert main(["data", "tokenize", str(out), "--books", str(tmp_path / "text"), "--source",
                 f"code:mixed={corpus_dir}", "--vocab-size", "300", "--train-chars", "20000",
                 "--heldout-domain", "books=0.3"]) == 0
    printed = capsys.readouterr().out
    assert "| demo | books | 6 |" in printed and "| mixed | code |" in printed
    corpus = TokenCorpus(out)
    assert corpus.tokenizer.vocab_size == 300
    assert len(corpus.select("val", domain="books")) == 2
    assert main(["data", "info", str(out), "--min-tokens", "50"]) == 0
    assert "held-out documents with >= 50 tokens: " in capsys.readouterr().out
