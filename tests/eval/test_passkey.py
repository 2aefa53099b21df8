import re
import time

import numpy as np
import pytest

from dla.eval.synthetic import NEEDLE_ID, QUERY_ID, generate_passkey, passkey_grid, token_passkey


def test_same_seed_same_examples_other_seed_differs():
    a = generate_passkey(500, num_examples=4, seed=1)
    assert a == generate_passkey(500, num_examples=4, seed=1)
    assert [e["target"] for e in a] != [e["target"] for e in generate_passkey(500, num_examples=4, seed=2)]
    assert len({e["target"] for e in a}) == 4


@pytest.mark.parametrize("length", [100, 1000, 20000])
def test_length_and_single_passkey(length):
    for ex in generate_passkey(length, num_examples=3, num_digits=6, seed=0):
        assert set(ex) == {"input", "target", "length", "depth", "task"} and ex["task"] == "passkey"
        assert re.fullmatch(r"[1-9]\d{5}", ex["target"])
        assert ex["input"].count(ex["target"]) == 1
        assert re.findall(r"\d+", ex["input"]) == [ex["target"]]
        assert f"The pass key is {ex['target']}. Remember it." in ex["input"]
        assert ex["input"].endswith("What is the pass key? The pass key is")
        assert length - 6 <= len(ex["input"].split()) <= length  # within one filler sentence
        assert 0.0 <= ex["depth"] <= 100.0


@pytest.mark.parametrize("depth", [0.0, 33.0, 100.0])
def test_passkey_depth(depth):
    ex = generate_passkey(5000, depth=depth, seed=3)[0]
    context = ex["input"].split("\n")[1]
    assert abs(100.0 * context.index("The pass key is") / len(context) - depth) < 1.0


def test_million_tokens_is_cheap_and_exact():
    calls = []

    def tokenize(text):
        calls.append(1)
        return text.split()

    start = time.perf_counter()
    ex = generate_passkey(1_000_000, depth=50.0, tokenize=tokenize, seed=0)[0]
    assert time.perf_counter() - start < 20.0 and len(calls) <= 30
    assert 1_000_000 - 6 <= len(ex["input"].split()) <= 1_000_000
    assert ex["input"].count(ex["target"]) == 1


def test_char_tokenizer_and_grid():
    ex = generate_passkey(3000, tokenize=list, seed=0)[0]
    assert 3000 - 25 <= len(ex["input"]) <= 3000
    grid = passkey_grid([200, 400], [10.0, 90.0], num_examples=2, seed=4)
    assert [(e["length"], e["depth"]) for e in grid] == [(n, d) for n in (200, 400) for d in (10., 90.) for _ in "ab"]
    assert grid[6:] == generate_passkey(400, num_examples=2, depth=90.0, seed=(4, 400, 90000))


@pytest.mark.parametrize("call, name", [
    (lambda: generate_passkey(30), "length"),
    (lambda: generate_passkey(500, depth=-1.0), "depth"),
    (lambda: generate_passkey(500, num_digits=0), "num_digits"),
    (lambda: generate_passkey(500, seed="x"), "seed"),
    (lambda: token_passkey(2, 5, 100), "seq_len"),
    (lambda: token_passkey(2, 64, 100, passkey_len=0), "passkey_len"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_token_passkey():
    batch = token_passkey(100, 96, 50, passkey_len=5, depth=40.0, filler_len=8, seed=0)
    t = 96
    assert batch.inputs.shape == batch.labels.shape == (100, t)
    assert ((batch.inputs == NEEDLE_ID).sum(1) == 1).all() and (batch.inputs[:, t - 5] == QUERY_ID).all()
    for row in range(100):
        p = batch.needle_pos[row]
        assert batch.inputs[row, p] == NEEDLE_ID
        assert np.array_equal(batch.labels[row, t - 5:], batch.inputs[row, p + 1:p + 6])
    num_filler = t - 5 - 6
    assert (batch.needle_pos == round(0.4 * num_filler)).all()
    assert not np.array_equal(batch.labels, token_passkey(100, 96, 50, depth=40.0, filler_len=8, seed=1).labels)
