"""Mamba-2's skip term ``D x`` (``skip_init``): its init value, leaving it out, and the config field behind it."""

import pytest
import torch

from dla.layers import Mamba2Mixer
from dla.models import DLAConfig, DLAForCausalLM


def mixer(skip_init, seed=0):
    torch.manual_seed(seed)
    return Mamba2Mixer(32, num_heads=2, head_v_dim=16, head_k_dim=8, policy="dla", capacity=4, chunk_size=16,
                       skip_init=skip_init)


def test_skip_init_value_and_no_skip():
    x = torch.randn(2, 12, 32)
    with_zero, without = mixer(0.0), mixer(None)
    assert torch.equal(with_zero.D.detach(), torch.zeros(2)) and without.D is None
    assert "D" not in dict(without.named_parameters())
    assert torch.equal(mixer(2.5).D.detach(), torch.full((2,), 2.5))
    # D = 0 computes what no skip computes (same seed, same other weights)
    torch.testing.assert_close(with_zero(x), without(x), rtol=0, atol=0)
    # the skip changes the output, and decoding token by token matches the full forward without it too
    assert not torch.allclose(mixer(1.0)(x), without(x))
    from dla.layers import RecurrentLayerCache

    cache, steps = RecurrentLayerCache(), []
    with torch.no_grad():
        full = without(x)
        for t in range(x.shape[1]):
            steps.append(without(x[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "1"])
def test_bad_skip_init(value):
    with pytest.raises(ValueError, match="skip_init"):
        mixer(value)
    with pytest.raises(ValueError, match="skip_init"):
        DLAConfig(skip_init=value)


def test_config_field_reaches_the_mixers(tmp_path):
    config = DLAConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, mixer="mamba2", num_heads=2, head_k_dim=4,
                       capacity=4, chunk_size=16, max_position_embeddings=32, skip_init=None)
    model = DLAForCausalLM(config)
    assert all(layer.mixer.D is None for layer in model.model.layers)
    model.save_pretrained(tmp_path)
    loaded = DLAForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.skip_init is None and loaded.model.layers[0].mixer.D is None
    assert DLAConfig().skip_init == 1.0  # Mamba-2's own default stays the default
    assert DLAForCausalLM(DLAConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, mixer="mamba2", num_heads=2,
                                    head_k_dim=4, capacity=4, skip_init=0.5)).model.layers[0].mixer.D[0] == 0.5
