"""A toy sweep of two cells (a Transformer and a DLA-Mamba-2 on a tiny MQAR) that trains in seconds on CPU."""

from pathlib import Path

import pytest

RECIPE = """
name: toy
model: {type: dla, mixer: mamba2, policy: dla, hidden_size: 16, num_hidden_layers: 1, num_heads: 2, head_k_dim: 4,
        expand: 2, num_attention_heads: 2, capacity: 4, tau: 0.3, chunk_size: 16, max_position_embeddings: 16,
        skip_init: null}
data: {task: mqar, seq_len: 16, mqar: {num_kv_pairs: 2, vocab_size: 32, num_train: 64, num_val: 16, seed: 0}}
train: {seed: 0, max_steps: 6, global_batch_size: 8, micro_batch_size: 8, lr: 3.0e-3, warmup_steps: 2,
        eval_every: 3, eval_batches: null, device: cpu}
checkpoint: {every: 2, keep_last: 2}
log: {every: 1, progress: false, tensorboard: false, plot: false}
"""

SWEEP = """
study: toy
recipe: recipe.yaml
segmentation_examples: 8
tasks:
  T16-kv2: {data: {seq_len: 16, mqar: {num_kv_pairs: 2}}}
models:
  transformer: {model: {mixer: attention}}
  dla-mamba2: {model: {mixer: mamba2, policy: dla}}
settings:
  d16: {model: {hidden_size: 16}}
lrs: [3.0e-3]
seeds: [0]
"""


@pytest.fixture
def toy_sweep(tmp_path) -> Path:
    """The path of the toy sweep file (its recipe beside it)."""
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    return path
