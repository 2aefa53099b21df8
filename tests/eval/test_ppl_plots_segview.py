"""Perplexity and per-position loss against a direct forward, the trend summary, the pictures (needle heat map,
loss curves, boundary view) and the needle sweep."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dla.eval.checkpoint import load_checkpoint
from dla.eval.metrics import string_match
from dla.eval.needle import needle_sweep, sweep_summary
from dla.eval.perplexity import PerplexityResult, evaluate_perplexity, position_edges
from dla.eval.plots import loss_curves, needle_grid, needle_heatmap
from dla.eval.segview import LayerSegmentation, segment_view, segmentations, token_slots
from dla.ops import Segmentation

TEXTS = ["The grass is green. The sky is blue. The sun is yellow. Here we go. " * 4,
         "One of the special magic numbers for quick-fox is: 1234567. " * 3, "Paris is the capital."]
PNG = b"\x89PNG\r\n\x1a\n"


def test_perplexity_equals_direct_forward(ckpt):
    model, tok = load_checkpoint(ckpt, dtype="float64")
    res = evaluate_perplexity(model, tok, TEXTS, seq_len=40, train_length=16, batch_size=2, chunk_size=7)
    losses = []
    for text in TEXTS:
        ids = [tok.eos_token_id] + tok.encode(text, add_special_tokens=False)[:40]
        with torch.no_grad():
            logits = model(torch.tensor([ids[:-1]]), use_cache=False).logits.double()
        losses.append(-F.log_softmax(logits, -1)[0].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0])
    total = sum(float(x.sum()) for x in losses)
    n = sum(len(x) for x in losses)
    assert res.num_tokens == n and res.num_documents == 3
    assert res.perplexity == pytest.approx(math.exp(total / n), rel=1e-9)
    assert 16 in res.edges.tolist()
    first = [float(x[0]) for x in losses]
    assert res.bucket_loss[0] == pytest.approx(sum(first) / 3, rel=1e-9) and res.bucket_count[0] == 3
    again = PerplexityResult.from_dict(res.to_dict())
    assert again.perplexity == res.perplexity and np.array_equal(again.bucket_count, res.bucket_count)


def test_perplexity_refuses_length_past_limit(hybrid_ckpt):
    model, tok = load_checkpoint(hybrid_ckpt)
    with pytest.raises(ValueError, match="seq_len: 1024 is longer than this checkpoint supports"):
        evaluate_perplexity(model, tok, TEXTS, seq_len=1024)
    with pytest.raises(ValueError, match="none scored"):
        evaluate_perplexity(model, tok, TEXTS, seq_len=64, min_tokens=10_000)


def _result(loss, edges, train_length):
    return PerplexityResult("m", edges[-1], train_length, 1, 1, 1.0, math.e, np.asarray(edges),
                            np.asarray(loss, dtype=float), np.ones(len(loss), dtype=np.int64))


def test_trend_hand_made():
    edges = [0, 1, 2, 4, 8, 16]
    falling = _result([5.0, 4.0, 3.0, 2.0, 1.0], edges, 4).trend()
    assert falling["slope_within"] == pytest.approx(-1.0, rel=0.2) and falling["slope_past"] < 0
    assert falling["loss_at_train_length"] == 3.0 and falling["loss_past_train_length"] == 1.5
    assert falling["falling_past_train_length"] is True
    rising = _result([5.0, 4.0, 3.0, 4.0, 6.0], edges, 4).trend()
    assert rising["falling_past_train_length"] is False and rising["slope_past"] > 0
    assert _result([5.0, 4.0], [0, 1, 2], 4).trend()["falling_past_train_length"] is None
    assert position_edges(100, 48).tolist() == [0, 1, 2, 4, 8, 16, 32, 48, 64, 100]


def test_needle_grid_and_pictures(tmp_path):
    lengths, depths, grid = needle_grid([(512, 50, 1.0), (512, 50, 0.0), (256, 0, 1.0), (512, 0, 0.25)])
    assert lengths == [256, 512] and depths == [0.0, 50.0]
    assert grid[0].tolist() == [1.0, 0.25] and grid[1, 1] == 0.5 and math.isnan(grid[1, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        needle_grid([(1, 0, 2.0)])
    png = needle_heatmap([(256, 0, 1.0), (512, 50, 0.5)], tmp_path / "h.png", train_length=256)
    assert png.read_bytes()[:8] == PNG
    r1, r2 = _result([5.0, 4.0, 3.0], [0, 1, 2, 4], 2), _result([5.0, 3.0, 2.0], [0, 1, 2, 4], 2)
    assert loss_curves([r1, r2], tmp_path / "c.png").read_bytes()[:8] == PNG


def test_segmentation_view(ckpt, tmp_path):
    model, tok = load_checkpoint(ckpt, dtype="float64")
    ids = tok.encode(TEXTS[0], add_special_tokens=False)
    layers = segmentations(model, torch.tensor([ids]))
    assert [s.layer for s in layers] == [0, 1]
    for layer in layers:
        assert layer.seg.boundary.shape == (1, len(ids), 2)  # the layer's own op call on the whole text
        for h in range(2):
            v = token_slots(layer, h)
            assert v.boundary[0] and v.final_slot[0] == 0
            assert (np.diff(v.final_slot) >= 0).all() and v.final_slot[-1] == v.num_slots[-1] - 1
            assert v.survives.sum() == v.num_slots[-1] and not (v.survives & ~v.boundary).any()
            assert (v.num_slots <= 4).all()  # capacity
            # every boundary either survives or was merged away: boundaries = live slots + merges
            assert v.boundary.sum() == v.num_slots[-1] + len(v.merges)
    paths = segment_view(model, tok, TEXTS[0], tmp_path, max_tokens=40)
    html = paths["html"].read_text()
    merges = sum(len(token_slots(s, h).merges) for s in segmentations(model, torch.tensor([ids[:40]]))
                 for h in range(2))
    assert html.count("'><sup>⊕</sup>") == merges and "grass" in html
    assert paths["png_layer0"].read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="not recurrent layers"):
        segment_view(model, tok, TEXTS[0], tmp_path, layers=[5])


def test_token_slots_hand_made():
    # T=5, one head, capacity 2: slots open at 0, 2, 3; before token 3 the slots starting at 0 and 2 merge.
    B = torch.tensor([True, False, True, True, False])
    starts = torch.full((5, 2), -(2 ** 62), dtype=torch.int64)
    starts[0, 0] = 0
    starts[1, 0] = 0
    starts[2] = torch.tensor([2, 0])
    starts[3] = torch.tensor([3, 0])
    starts[4] = torch.tensor([3, 0])
    seg = Segmentation(score=torch.zeros(1, 5, 1), boundary=B.view(1, 5, 1),
                       num_slots=torch.tensor([1, 1, 2, 2, 2]).view(1, 5, 1),
                       merged=torch.tensor([-1, -1, -1, 0, -1]).view(1, 5, 1),
                       starts=starts.view(1, 5, 1, 2), lam_index=torch.zeros(1, 5, 1, 2, dtype=torch.int64))
    v = token_slots(LayerSegmentation(0, "dla", seg), 0)
    assert v.final_slot.tolist() == [0, 0, 0, 1, 1]
    assert v.segment.tolist() == [0, 0, 1, 2, 2]
    assert v.survives.tolist() == [True, False, False, True, False]
    assert v.merges == [(3, 0, 2)]


def test_needle_sweep(ckpt, hybrid_ckpt):
    model, tok = load_checkpoint(ckpt)
    recs = needle_sweep(model, tok, lengths=[230, 250], depths=[0, 100], max_new_tokens=4)
    assert len(recs) == 4 and {r["length"] for r in recs} == {230, 250}
    for r in recs:
        assert "\n" not in r["prediction"] and r["score"] == string_match(r["prediction"], r["target"])
        assert len(r["target"]) == 1 and r["target"][0].isdigit()
    s = sweep_summary([{"length": 100, "score": 1.0}, {"length": 300, "score": 0.0}, {"length": 300, "score": 0.5}],
                      train_length=200)
    assert s == {"score": 0.5, "score_within": 1.0, "score_past": 0.25}
    hybrid, htok = load_checkpoint(hybrid_ckpt)
    with pytest.raises(ValueError, match="longer than this checkpoint supports"):
        needle_sweep(hybrid, htok, lengths=[1024], depths=[50])
