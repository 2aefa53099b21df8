"""Shared fixtures of the data-pipeline tests: a small synthetic corpus and a tokenizer trained on it."""

import json
import random

import pytest

from dla.data.tokenizer import train_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "def", "return", "class", "import", "for", "in", "range", "(", ")",
         ":", "=", "+", "x", "y", "self", "None", "True", "ünïcode", "🙂", "\n", "    ", "\t"]


def make_documents(n: int, seed: int = 0, min_words: int = 3, max_words: int = 60) -> list[str]:
    """``n`` distinct pseudo-code documents (each starts with its index, so no two are equal)."""
    rng = random.Random(seed)
    return [f"doc{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            for i in range(n)]


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents(300)


@pytest.fixture(scope="session")
def tokenizer(documents):
    return train_tokenizer(documents, vocab_size=400, min_frequency=2)


@pytest.fixture()
def corpus_dir(tmp_path, documents):
    """``documents`` spread over a .txt, a nested .parquet and a .jsonl file, in sorted-path order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = tmp_path / "corpus"
    (directory / "b").mkdir(parents=True)
    third = len(documents) // 3
    (directory / "a.txt").write_text(documents[0])
    pq.write_table(pa.table({"text": documents[1:third]}), directory / "b" / "c.parquet")
    (directory / "b" / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[third:]))
    return directory
