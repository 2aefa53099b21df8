"""Loss by position (chunked through the cache = one full forward), smoothing, seed bands, plots, tables and the
per-domain perplexity, on tiny random models."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dla.eval.position import (PositionCurve, domain_perplexity, loss_by_position, plot_position_loss,
                               position_table, seed_band, smooth, stream_nll)

VOCAB = 50


def _model(mixer: str, seed: int = 0):
    from dla.models import DLAConfig, DLAForCausalLM

    torch.manual_seed(seed)
    config = DLAConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, mixer=mixer, num_heads=2,
                       head_k_dim=8, policy="dla", capacity=4, tau=0.3, num_attention_heads=4, chunk_size=16,
                       max_position_embeddings=64)
    return DLAForCausalLM(config).eval()


def _docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=n) for n in lengths]


@pytest.mark.parametrize("mixer", ["gdn", "attention"])
def test_curve_equals_one_full_forward(mixer):
    model = _model(mixer)
    docs = _docs([48, 60, 20])  # the 20-token document is too short and is left out
    curve = loss_by_position(model, docs, length=48, bos_id=0, train_length=32, batch_size=2, chunk_size=16)
    assert (curve.num_documents, curve.length) == (2, 48)
    assert curve.count.tolist() == [2] * 48
    expected = np.zeros(48)
    with torch.no_grad():
        for d in docs[:2]:
            ids = torch.tensor(np.concatenate([[0], d[:47]]))[None]
            logits = model(input_ids=ids, use_cache=False).logits[0]
            expected += F.cross_entropy(logits.double(), torch.tensor(d[:48]), reduction="none").numpy()
    np.testing.assert_allclose(curve.mean(), expected / 2, rtol=1e-4)


def test_curve_refuses_lengths_it_cannot_score():
    model = _model("attention")
    with pytest.raises(ValueError, match="longer than this model supports"):
        loss_by_position(model, _docs([80]), length=80, bos_id=0, train_length=32)
    with pytest.raises(ValueError, match="none has 40 tokens"):
        loss_by_position(model, _docs([10, 20]), length=40, bos_id=0, train_length=32)


def test_curve_sums_round_trip_and_buckets():
    a = PositionCurve("m", 4, 1, np.arange(8, dtype=float), np.ones(8, dtype=np.int64))
    b = PositionCurve("m", 4, 2, np.full(8, 2.0), np.full(8, 2, dtype=np.int64))
    c = a + b
    assert c.num_documents == 3 and c.mean()[0] == pytest.approx(2 / 3) and c.mean()[7] == pytest.approx(3.0)
    again = PositionCurve.from_dict(c.to_dict())
    assert np.array_equal(again.loss_sum, c.loss_sum) and again.train_length == 4
    result = a.buckets([0, 4, 8, 16])
    assert result.edges.tolist() == [0, 4, 8] and result.bucket_loss.tolist() == [1.5, 5.5]
    assert result.trend()["falling_past_train_length"] is False
    with pytest.raises(ValueError, match="lengths"):
        a + PositionCurve("m", 4, 1, np.zeros(4), np.ones(4, dtype=np.int64))


def test_smooth_window_grows_with_position():
    assert np.allclose(smooth(np.full(100, 3.0)), 3.0)
    x = np.arange(100, dtype=float)
    assert np.array_equal(smooth(x, 0.0), x)
    s = smooth(x, 0.1)
    assert s[5] == 5.0 and s[50] == pytest.approx(50.0)  # symmetric windows keep a line's values
    y = np.zeros(100)
    y[60] = 11.0
    s = smooth(y, 0.1)  # window at 60 is 54..66: 13 values
    assert s[60] == pytest.approx(11 / 13) and s[20] == 0.0
    nan = x.copy()
    nan[10] = np.nan
    assert not np.isnan(smooth(nan, 0.2)[10])
    with pytest.raises(ValueError, match="fraction"):
        smooth(x, 1.5)


def test_seed_band_plot_and_table(tmp_path):
    rng = np.random.default_rng(0)
    curves = {"A": [PositionCurve("A", 32, 3, 4 - np.log1p(np.arange(128)) / 5 + rng.normal(0, 0.05, 128),
                                  np.ones(128, dtype=np.int64)) for _ in range(2)],
              "B": [PositionCurve("B", 32, 3, np.full(128, 3.5), np.ones(128, dtype=np.int64))]}
    mean, low, high = seed_band(curves["A"])
    assert (low <= mean).all() and (mean <= high).all() and (high - low).max() > 0
    png = plot_position_loss(curves, tmp_path / "p.png")
    assert png.stat().st_size > 5000
    table = position_table(curves, edges=[0, 16, 32, 64, 128])
    lines = table.split("\n")
    assert lines[0].startswith("| model | seeds | 0-16 | 16-32 | 32-64 | 64-128 |")
    assert "±" in lines[2] and "±" not in lines[3] and lines[3].endswith("| +0.000 |")
    with pytest.raises(ValueError, match="one length"):
        seed_band([curves["A"][0], PositionCurve("A", 32, 1, np.zeros(4), np.ones(4, dtype=np.int64))])


def test_stream_nll_and_domain_perplexity():
    model = _model("gdn")
    stream = np.concatenate([[0], _docs([70])[0]])
    nll, n = stream_nll(model, stream, seq_len=16, batch_size=3)
    assert n == 4 * 16
    with torch.no_grad():
        rows = torch.tensor(stream[:65].reshape(1, -1))
        expected = sum(float(F.cross_entropy(model(input_ids=rows[:, s:s + 16], use_cache=False).logits[0],
                                             rows[0, s + 1:s + 17], reduction="sum")) for s in range(0, 64, 16))
    assert nll == pytest.approx(expected, rel=1e-5)

    class Corpus:  # what domain_perplexity reads of a TokenCorpus
        eos_id, domains = 0, ["x", "y"]

        def documents(self, split, domain):
            return [({"domain": domain}, d) for d in _docs([30, 25] if domain == "x" else [5], seed=3)]

    out = domain_perplexity(model, Corpus(), seq_len=16)
    assert set(out) == {"x", "all"}  # y is shorter than one window
    assert out["x"]["tokens"] == 48 and out["all"]["ppl"] == pytest.approx(math.exp(out["x"]["nll"]))
