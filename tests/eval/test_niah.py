import re

import numpy as np
import pytest

from dla.eval.synthetic import (NEEDLE_ID, NIAH_TASKS, NUM_SPECIAL_TOKENS, QUERY_ID, NIAHTask, generate_niah,
                                niah_grid, read_jsonl, token_niah, write_jsonl)

NEEDLE_RE = re.compile(r"One of the special magic \w+ for (\S+) is: (\S+?)\.(?:\s|$)")


def _needles(text):
    return [(m.start(), m.group(1), m.group(2)) for m in NEEDLE_RE.finditer(text)]


def _question(text):
    return text.rsplit("\n", 1)[1]


def test_same_seed_same_examples_other_seed_differs():
    a = generate_niah("niah_multikey_1", 400, num_examples=3, seed=5)
    assert a == generate_niah("niah_multikey_1", 400, num_examples=3, seed=5)
    b = generate_niah("niah_multikey_1", 400, num_examples=3, seed=6)
    assert [x["input"] for x in a] != [x["input"] for x in b]
    assert a[0]["input"] != a[1]["input"]


@pytest.mark.parametrize("name", sorted(NIAH_TASKS))
def test_every_task_fits_length_and_holds_its_targets(name):
    task = NIAH_TASKS[name]
    for ex in generate_niah(name, 1500, num_examples=2, depth=40.0, seed=1):
        assert set(ex) == {"input", "target", "length", "depth", "task"}
        assert ex["task"] == name and ex["length"] == 1500 and ex["depth"] == 40.0
        words = len(ex["input"].split())
        assert 1500 - 40 <= words <= 1500
        assert len(ex["target"]) == task.num_queries * task.num_values
        assert len(set(ex["target"])) == len(ex["target"])
        needles = _needles(ex["input"])
        asked = [k for _, k, _ in needles if k in _question(ex["input"])]
        assert sorted(v for _, k, v in needles if k in asked) == sorted(ex["target"])
        for value in ex["target"]:
            assert ex["input"].count(value) == 1
        if task.value_type == "numbers":
            assert all(re.fullmatch(r"\d{7}", v) for v in ex["target"])
        elif task.value_type == "uuids":
            assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", v)
                       for v in ex["target"])


@pytest.mark.parametrize("name", ["niah_single_1", "niah_single_2", "niah_multikey_2"])
@pytest.mark.parametrize("depth", [0.0, 25.0, 50.0, 90.0, 100.0])
def test_needle_at_requested_depth(name, depth):
    ex = generate_niah(name, 3000, depth=depth, seed=2)[0]
    context = ex["input"].split("\n")[1]
    value = ex["target"][0]
    start = context.index(f"is: {value}.")
    start = context.rindex("One of the special magic", 0, start)
    assert abs(100.0 * start / len(context) - depth) < 3.0


def test_multikey_distractors_have_other_keys():
    for ex in generate_niah("niah_multikey_1", 800, num_examples=5, seed=3):
        needles = _needles(ex["input"])
        keys = [k for _, k, _ in needles]
        assert len(needles) == 4 and len(set(keys)) == 4
        asked = [k for k in keys if k in _question(ex["input"])]
        assert len(asked) == 1
        assert ex["target"] == [v for _, k, v in needles if k == asked[0]]
        assert "What is the special magic number for" in ex["input"]


def test_needle_haystack_only_queried_key_matches():
    ex = generate_niah("niah_multikey_3", 1000, seed=4)[0]
    needles = _needles(ex["input"])
    assert len(needles) > 20
    asked = _question(ex["input"]).split(" for ")[1].split(" ")[0]
    assert [v for _, k, v in needles if k == asked] == ex["target"]


def test_needle_haystack_never_repeats_a_target_value():
    task = NIAHTask("needle_words", haystack="needle", key_type="words", value_type="words")
    for ex in generate_niah(task, 20000, num_examples=4, seed=8):  # ~2000 needles among ~4700 words
        assert len(_needles(ex["input"])) > 1500
        assert ex["input"].count(ex["target"][0]) == 1


def test_multiquery_and_multivalue_targets():
    mq = generate_niah("niah_multiquery", 800, seed=5)[0]
    needles = _needles(mq["input"])
    assert len({k for _, k, _ in needles}) == 4 and all(k in _question(mq["input"]) for _, k, _ in needles)
    assert sorted(mq["target"]) == sorted(v for _, _, v in needles)
    assert "What are all the special magic numbers for" in mq["input"] and ", and " in _question(mq["input"])
    mv = generate_niah("niah_multivalue", 800, seed=5)[0]
    needles = _needles(mv["input"])
    assert len(needles) == 4 and len({k for _, k, _ in needles}) == 1
    assert sorted(mv["target"]) == sorted(v for _, _, v in needles)


def test_custom_task_counts():
    task = NIAHTask("custom", haystack="noise", key_type="numbers", value_type="words", num_keys=6, num_values=2,
                    num_queries=3)
    ex = generate_niah(task, 1000, depth=10.0, seed=0)[0]
    assert len(_needles(ex["input"])) == 12 and len(ex["target"]) == 6 and ex["task"] == "custom"
    assert all(re.fullmatch(r"[a-z]+-[a-z]+", v) for v in ex["target"])


def test_tokenizer_sets_the_length():
    calls = []

    def chars(text):
        calls.append(1)
        return list(text)

    ex = generate_niah("niah_single_1", 2000, tokenize=chars, seed=0)[0]
    assert calls and 2000 - 25 <= len(ex["input"]) <= 2000


def test_essay_text_is_used():
    essay = "Alpha beta gamma delta. Epsilon zeta eta theta! Iota kappa lambda?"
    ex = generate_niah("niah_single_2", 300, essay_text=essay, depth=50.0, seed=0)[0]
    assert "Epsilon zeta eta theta!" in ex["input"] and ex["input"].count("Alpha beta gamma delta.") > 5
    assert "committee" not in ex["input"]


def test_grid_cells_and_jsonl_roundtrip(tmp_path):
    grid = niah_grid("niah_single_1", [300, 600], [0.0, 50.0, 100.0], num_examples=2, seed=9)
    assert [(e["length"], e["depth"]) for e in grid] == [(n, d) for n in (300, 600) for d in (0., 50., 100.)
                                                          for _ in range(2)]
    assert niah_grid("niah_single_1", [600], [50.0], num_examples=2, seed=9) == grid[8:10]
    assert grid[8:10] == generate_niah("niah_single_1", 600, num_examples=2, depth=50.0, seed=(9, 600, 50000))
    path = tmp_path / "niah.jsonl"
    assert write_jsonl(grid, path) == 12
    assert read_jsonl(path) == grid


@pytest.mark.parametrize("call, name", [
    (lambda: generate_niah("niah_single_1", 20), "length"),
    (lambda: generate_niah("niah_single_1", 500, depth=101.0), "depth"),
    (lambda: generate_niah("niah_nope", 500), "task"),
    (lambda: generate_niah("niah_single_1", 500, num_examples=0), "num_examples"),
    (lambda: generate_niah("niah_single_1", 500, tokenize="gpt2"), "tokenize"),
    (lambda: generate_niah("niah_single_2", 500, essay_text="   "), "essay_text"),
    (lambda: NIAHTask("x", num_keys=1, num_queries=2), "num_keys"),
    (lambda: NIAHTask("x", haystack="books"), "haystack"),
    (lambda: niah_grid("niah_single_1", [500], []), "depths"),
    (lambda: niah_grid("niah_single_1", ["500"], [50.0]), "lengths"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def _check_token_batch(batch, key_len, value_len, num_needles):
    inputs, labels = batch.inputs, batch.labels
    t = inputs.shape[1]
    for row in range(len(inputs)):
        x = inputs[row]
        starts = np.flatnonzero(x == NEEDLE_ID)
        assert len(starts) == num_needles and (x == QUERY_ID).sum() == 1
        assert x[t - key_len - value_len] == QUERY_ID
        special = np.zeros(t, dtype=bool)
        special[starts] = True
        special[t - key_len - value_len] = True
        assert (x[~special] >= NUM_SPECIAL_TOKENS).all()
        query_key = tuple(x[t - key_len - value_len + 1:t - value_len + 1])
        keys = [tuple(x[s + 1:s + 1 + key_len]) for s in starts]
        assert len(set(keys)) == num_needles and keys.count(query_key) == 1
        hit = starts[keys.index(query_key)]
        assert hit == batch.needle_pos[row]
        assert np.array_equal(labels[row, t - value_len:], x[hit + 1 + key_len:hit + 1 + key_len + value_len])
        assert (labels[row, :t - value_len] == -100).all()


def test_token_niah_structure_and_determinism():
    batch = token_niah(200, 128, 64, key_len=2, value_len=3, num_needles=4, seed=0)
    _check_token_batch(batch, 2, 3, 4)
    again = token_niah(200, 128, 64, key_len=2, value_len=3, num_needles=4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batch, again))
    assert not np.array_equal(batch.inputs, token_niah(200, 128, 64, key_len=2, value_len=3, num_needles=4,
                                                       seed=1).inputs)
    # keys from a huge key space, and a key space exactly as large as the number of needles
    _check_token_batch(token_niah(50, 64, 8192, key_len=6, value_len=2, num_needles=3, seed=0), 6, 2, 3)
    _check_token_batch(token_niah(50, 64, 5, key_len=2, value_len=1, num_needles=4, seed=0), 2, 1, 4)


@pytest.mark.parametrize("depth", [0.0, 30.0, 100.0])
def test_token_niah_depth(depth):
    t, key_len, value_len = 256, 2, 2
    batch = token_niah(20, t, 100, key_len=key_len, value_len=value_len, depth=depth, haystack="repeat",
                       filler_len=7, seed=3)
    num_filler = t - key_len - value_len - (1 + key_len + value_len)
    assert (batch.needle_pos == round(depth / 100 * num_filler)).all()
    assert np.allclose(batch.depth, depth, atol=100 / num_filler)
    filler = np.delete(batch.inputs[0, :t - key_len - value_len], np.arange(5) + batch.needle_pos[0])
    assert np.array_equal(filler[7:], filler[:-7])  # repeated pattern of 7 tokens


def test_token_niah_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        token_niah(2, 10, 100, key_len=2, value_len=2, num_needles=2)
    with pytest.raises(ValueError, match="num_needles"):
        token_niah(2, 64, 100, key_len=0, num_needles=2)
    with pytest.raises(ValueError, match="num_needles"):
        token_niah(2, 64, 5, key_len=1, value_len=1, num_needles=3)
    with pytest.raises(ValueError, match="haystack"):
        token_niah(2, 64, 100, haystack="essay")
