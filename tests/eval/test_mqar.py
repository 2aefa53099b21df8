import numpy as np
import pytest

from dla.eval.synthetic import IGNORE_INDEX, MQARConfig, generate_mqar, mqar_splits

SMALL = MQARConfig(seq_len=64, num_kv_pairs=8, vocab_size=256, num_examples=500)


def test_same_seed_same_data_other_seed_differs():
    a, b, c = generate_mqar(SMALL, 3), generate_mqar(SMALL, 3), generate_mqar(SMALL, 4)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.inputs, c.inputs)
    assert a.inputs.shape == a.labels.shape == (500, 64) and a.inputs.dtype == np.int64


def test_splits_use_different_seeds():
    test_cfg = MQARConfig(seq_len=128, num_kv_pairs=16, vocab_size=256, num_examples=50)
    train, test = mqar_splits(SMALL, test_cfg, seed=7)
    assert np.array_equal(train.inputs, generate_mqar(SMALL, (7, 0)).inputs)
    assert np.array_equal(test.inputs, generate_mqar(test_cfg, (7, 1)).inputs)
    train_same_cfg, test_same_cfg = mqar_splits(SMALL, SMALL, seed=7)
    assert not np.array_equal(train_same_cfg.inputs, test_same_cfg.inputs)
    assert test.inputs.shape == (50, 128)


@pytest.mark.parametrize("cfg", [SMALL, MQARConfig(seq_len=256, num_kv_pairs=64, vocab_size=8192, num_examples=200),
                                 MQARConfig(seq_len=40, num_kv_pairs=4, vocab_size=20, num_passes=2, num_examples=200)])
def test_structure(cfg):
    inputs, labels = generate_mqar(cfg, 0)
    n, k, half = cfg.num_kv_pairs, cfg.num_kv_pairs, cfg.vocab_size // 2
    keys, values = inputs[:, 0:2 * k:2], inputs[:, 1:2 * k:2]
    # keys from [1, vocab/2), values from [vocab/2, vocab): disjoint halves
    assert keys.min() >= 1 and keys.max() < half and values.min() >= half and values.max() < cfg.vocab_size
    for row in range(len(inputs)):
        kv = inputs[row, :2 * k]
        assert len(set(kv[0::2])) == k and len(set(kv[1::2])) == k  # each key (and value) once in the kv section
        for p in range(1, cfg.num_passes):
            assert np.array_equal(inputs[row, p * 2 * k:(p + 1) * 2 * k], kv)
        bound = dict(zip(kv[0::2], kv[1::2]))
        query_pos = np.flatnonzero(labels[row] != IGNORE_INDEX)
        assert len(query_pos) == k
        assert ((query_pos - cfg.context_len) % 2 == 0).all() and query_pos.min() >= cfg.context_len
        queried = inputs[row, query_pos]
        assert sorted(queried) == sorted(bound)  # every inserted key asked exactly once
        assert all(labels[row, p] == bound[inputs[row, p]] for p in query_pos)


def test_filler_zero_without_random_non_queries():
    cfg = MQARConfig(seq_len=32, num_kv_pairs=4, vocab_size=64, num_examples=100, random_non_queries=False)
    inputs, labels = generate_mqar(cfg, 1)
    region = inputs[:, cfg.context_len:]
    asked = labels[:, cfg.context_len:] != IGNORE_INDEX
    assert (region[~asked] == 0).all() and (region[asked] > 0).all()
    noisy = generate_mqar(MQARConfig(seq_len=32, num_kv_pairs=4, vocab_size=64, num_examples=100), 1).inputs
    assert (noisy[:, cfg.context_len:] != 0).mean() > 0.9


def _slot_rate(cfg, seed=0):
    inputs, labels = generate_mqar(cfg, seed)
    rows, cols = np.nonzero(labels != IGNORE_INDEX)
    gaps = (cols - cfg.context_len) // 2
    return np.bincount(gaps, minlength=cfg.num_query_slots) / len(inputs)


def test_query_distance_is_power_law():
    cfg = MQARConfig(seq_len=264, num_kv_pairs=4, vocab_size=1024, num_examples=20000, alpha=0.01)
    rate = _slot_rate(cfg)  # P(slot g is queried), g = 0..127
    edges = [0, 1, 2, 4, 8, 16, 32, 64, 128]
    per_bucket = [rate[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
    assert all(x > y for x, y in zip(per_bucket[:-1], per_bucket[1:])), per_bucket
    assert per_bucket[0] > 10 * per_bucket[-1]
    flat = _slot_rate(MQARConfig(seq_len=264, num_kv_pairs=4, vocab_size=1024, num_examples=5000, alpha=1.0))
    buckets = flat.reshape(8, 16).mean(1)  # alpha = 1: every slot equally likely, 4 of 128 per example
    assert np.allclose(buckets, 4 / 128, rtol=0.1), buckets


@pytest.mark.parametrize("kwargs, name", [
    (dict(seq_len=30, num_kv_pairs=8), "seq_len"),
    (dict(vocab_size=17, num_kv_pairs=8), "vocab_size"),
    (dict(alpha=0.0), "alpha"),
    (dict(num_kv_pairs=0), "num_kv_pairs"),
    (dict(num_examples=0), "num_examples"),
    (dict(num_passes=2, seq_len=40, num_kv_pairs=8), "seq_len"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MQARConfig(**kwargs)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        generate_mqar(SMALL, -1)
