import math

import numpy as np
import pytest
import torch

from dla.eval.metrics import (PositionLoss, log_spaced_edges, masked_accuracy, passkey_accuracy, perplexity,
                              position_loss, string_match, string_match_all)
from dla.eval.synthetic import MQARConfig, generate_mqar

LABELS = [[-100, 5, -100, 7], [3, -100, -100, -100]]
PREDS = [[0, 5, 0, 1], [3, 9, 9, 9]]


def test_masked_accuracy_on_hand_made_case():
    assert masked_accuracy(PREDS, LABELS) == pytest.approx(2 / 3)
    assert masked_accuracy(np.array(PREDS), torch.tensor(LABELS)) == pytest.approx(2 / 3)
    assert masked_accuracy(PREDS, LABELS, per_example=True) == pytest.approx(1 / 2)
    logits = torch.nn.functional.one_hot(torch.tensor(PREDS), 10).float() * 3.0 - 1.0
    assert masked_accuracy(logits, LABELS) == pytest.approx(2 / 3)
    no_label_row = [[-100, 5], [-100, -100]]
    assert masked_accuracy([[0, 5], [1, 1]], no_label_row, per_example=True) == 1.0


def test_masked_accuracy_on_mqar():
    inputs, labels = generate_mqar(MQARConfig(seq_len=64, num_kv_pairs=8, vocab_size=128, num_examples=64), 0)
    oracle = np.where(labels != -100, labels, 0)
    assert masked_accuracy(oracle, labels) == 1.0
    half = oracle.copy()
    rows, cols = np.nonzero(labels != -100)
    half[rows[::2], cols[::2]] += 1
    assert masked_accuracy(half, labels) == pytest.approx(0.5)
    assert masked_accuracy(half, labels, per_example=True) == 0.0


def test_masked_accuracy_errors():
    with pytest.raises(ValueError, match="scored"):
        masked_accuracy([[1, 2]], [[-100, -100]])
    with pytest.raises(ValueError, match="shape"):
        masked_accuracy([[1, 2, 3]], [[1, 2]])


def test_string_match_partial_credit_and_case():
    assert string_match("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert string_match(" QUIET-OTTER", "quiet-otter") == 1.0
    assert string_match("nothing", ["42"]) == 0.0
    assert string_match_all(["1234567 and", "only 1"], [["1234567"], ["1", "2"]]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="targets"):
        string_match("x", [])
    with pytest.raises(ValueError, match="predictions"):
        string_match_all(["a"], [["a"], ["b"]])


def test_passkey_accuracy_takes_the_first_number():
    preds = [" 48213. Remember it.", "48214", "no digits", "123 then 48213"]
    assert passkey_accuracy(preds, ["48213", 48214, "1", "48213"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="passkeys"):
        passkey_accuracy(["1"], [])


def test_perplexity_of_known_nll():
    assert perplexity(10 * math.log(3.0), 10) == pytest.approx(3.0)
    assert perplexity([10 * math.log(2.0), 30 * math.log(2.0)], torch.tensor([10, 30])) == pytest.approx(2.0)
    assert perplexity([0.0], [5]) == 1.0
    assert perplexity([2 * math.log(4.0), 2 * math.log(1.0)], [2, 2]) == pytest.approx(2.0)  # geometric mean
    with pytest.raises(ValueError, match="num_tokens"):
        perplexity(1.0, 0)


def test_log_spaced_edges():
    assert log_spaced_edges(1000).tolist() == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert log_spaced_edges(1024).tolist()[-2:] == [512, 1024]
    assert log_spaced_edges(1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="seq_len"):
        log_spaced_edges(0)


def test_position_loss_buckets():
    loss = torch.arange(1.0, 9.0)[None]  # positions 0..7 carry losses 1..8
    result = position_loss(loss)
    assert result.edges.tolist() == [0, 1, 2, 4, 8]
    assert result.mean.tolist() == [1.0, 2.0, 3.5, 6.5] and result.count.tolist() == [1, 1, 2, 4]
    mask = np.array([[True, True, True, False, True, True, True, True]])
    masked = position_loss(loss, mask=mask, edges=[0, 4, 8])
    assert masked.mean.tolist() == [2.0, 6.5] and masked.count.tolist() == [3, 4]


def test_position_loss_accumulates_batches_of_other_lengths():
    acc = PositionLoss()
    acc.update(np.full((2, 4), 2.0))
    acc.update(torch.tensor([4.0, 4.0, 4.0, 4.0, 10.0, 10.0]))
    out = acc.compute([0, 4, 6, 8])
    assert out.mean[:2].tolist() == [pytest.approx((8 * 2.0 + 4 * 4.0) / 12), 10.0]
    assert out.count.tolist() == [12, 2, 0] and math.isnan(out.mean[2])
    with pytest.raises(ValueError, match="edges"):
        acc.compute([0, 3])
    with pytest.raises(ValueError, match="compute"):
        PositionLoss().compute()
    with pytest.raises(ValueError, match="mask"):
        acc.update(np.ones((2, 4)), mask=np.ones((2, 3), dtype=bool))
