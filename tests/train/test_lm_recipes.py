"""The small language-model recipes of configs/lm/: they load, and their models have the same parameters (2%)."""

from pathlib import Path

import pytest
import torch

from dla.train.config import load_config
from dla.train.model import build_model, build_model_config, num_parameters

LM = Path(__file__).resolve().parents[2] / "configs" / "lm"
RECIPES = ("transformer", "mamba2", "loglinear-mamba2", "dla-mamba2", "gdn", "loglinear-gdn", "dla-gdn")
VOCAB = 16384  # the corpus tokenizer's size (dla data tokenize --vocab-size default)


def _params(name: str) -> int:
    config = load_config(LM / f"{name}.yaml")
    with torch.device("meta"):
        model = build_model(build_model_config(config.model, VOCAB, 0))
    return num_parameters(model)


def test_recipes_are_the_seven_models():
    assert sorted(p.stem for p in LM.glob("[!_]*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_shares_the_base(name):
    config = load_config(LM / f"{name}.yaml")
    assert config.data.seq_len == 2048 and config.data.tokens == "runs/books/tokens"
    options = config.model.options
    assert (options["hidden_size"], options["num_hidden_layers"], options["max_position_embeddings"]) == \
        (512, 7, 8192)
    assert options.get("policy", "single") == {"loglinear": "fenwick", "dla": "dla"}.get(name.split("-")[0], "single")


def test_parameter_counts_within_two_percent():
    counts = {name: _params(name) for name in RECIPES}
    low, high = min(counts.values()), max(counts.values())
    assert 30e6 < low and high < 42e6, counts
    assert high / low - 1 <= 0.02, counts
