"""Segmentation statistics on MQAR examples, checked on the `fixed` policy, whose boundaries and merges do not
depend on the weights: a slot every `block_size` tokens, a merge for every slot past the capacity."""

import numpy as np
import pytest
import torch

from dla.data.mqar import MQARConfig, generate_mqar
from dla.models import DLAConfig, DLAForCausalLM
from dla.study.segstats import STAT_KEYS, has_segmentation, mqar_segmentation_stats


def model(policy: str, **kw) -> DLAForCausalLM:
    torch.manual_seed(0)
    config = DLAConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, mixer="mamba2", num_heads=2,
                       head_k_dim=4, policy=policy, capacity=4, block_size=2, chunk_size=16,
                       max_position_embeddings=16, skip_init=None, **kw)
    return DLAForCausalLM(config)


def test_fixed_policy_statistics_are_exact():
    T, N = 16, 2
    inputs, labels = generate_mqar(MQARConfig(seq_len=T, num_kv_pairs=N, vocab_size=32, num_examples=10), seed=3)
    stats = mqar_segmentation_stats(model("fixed"), inputs, labels, N, batch_size=4)
    assert [s["layer"] for s in stats] == ["model.layers.0.mixer", "model.layers.1.mixer"]
    ctx = 2 * N
    scored = labels != -100
    filler = ~scored.copy()
    filler[:, :ctx] = False
    even = np.zeros(T, dtype=bool)
    even[::2] = True
    for s in stats:
        assert s["policy"] == "fixed" and s["capacity"] == 4 and s["examples"] == 10
        assert s["boundary_rate_context"] == 0.5 and s["boundary_rate_query"] == 0.5
        assert s["boundary_rate_keys"] == 1.0 and s["boundary_rate_values"] == 0.0
        assert s["boundary_rate_query_keys"] == 1.0  # query keys sit at even positions
        assert s["boundary_rate_filler"] == pytest.approx((filler & even).sum() / filler.sum())
        assert s["slots_end_context"] == 2 and s["slots_end"] == 4  # 2 blocks in the context; capped at C = 4
        assert s["merges_context"] == 0 and s["merges_query"] == T // 2 - 4  # one merge per block past C
        assert s["starts_at_keys"] == 1.0
        assert set(STAT_KEYS) <= set(s)


def test_models_without_slots_and_bad_input():
    assert has_segmentation(model("dla")) and has_segmentation(model("fenwick"))
    assert not has_segmentation(model("single"))
    inputs, labels = generate_mqar(MQARConfig(seq_len=16, num_kv_pairs=2, vocab_size=32, num_examples=2))
    with pytest.raises(ValueError, match="num_kv_pairs: a context of 2 \\* 8 tokens does not fit T = 16"):
        mqar_segmentation_stats(model("dla"), inputs, labels, 8)
    with pytest.raises(ValueError, match="inputs, labels"):
        mqar_segmentation_stats(model("dla"), inputs, labels[:1], 2)
    attention = DLAForCausalLM(DLAConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, mixer="attention",
                                         num_attention_heads=2, max_position_embeddings=16))
    with pytest.raises(ValueError, match="RecurrentMixer"):
        mqar_segmentation_stats(attention, inputs, labels, 2)
