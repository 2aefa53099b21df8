"""A tiny DLA-Mamba-2 run with the trainable boundary (``model.boundary_grad: ste``, docs/design.md 3.2): it trains,
the losses stay finite, and the score's path adds gradient to the projections that feed it, and only there."""

import math

import pytest
import torch

from dla.layers.mamba2 import Mamba2Mixer
from dla.layers.recurrent import RecurrentMixer
from dla.models import DLAConfig
from dla.train import train
from dla.train.logs import read_log


def test_dla_mamba2_trains_with_the_trainable_boundary(tiny):
    config = tiny(model={"boundary_grad": "ste", "boundary_temperature": 0.1}, train={"max_steps": 4})
    result = train(config)
    losses = [r["loss"] for r in read_log(config.output_dir / "log.jsonl") if r["kind"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    model = result.model.train()
    mixers = [m for m in model.modules() if isinstance(m, RecurrentMixer)]
    assert len(mixers) == 2 and all(m.boundary_grad == "ste" for m in mixers)
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))

    def step(gate):
        for m in mixers:
            m.boundary_grad = gate
        model.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with mixers[0].capture_segmentation() as segs:
        loss_on, on = step("ste")
    assert int(segs[0].boundary[:, 1:].sum()) > 0  # boundaries taken, so the gates have something to train
    loss_off, off = step(None)
    assert torch.equal(loss_on, loss_off)  # the forward is unchanged
    assert all(bool(torch.isfinite(g).all()) for g in on.values())
    changed = {n for n in off if (on[n] - off[n]).norm() > 1e-6 * off[n].norm()}
    assert any(n.endswith("mixer.in_proj.weight") for n in changed)  # k, v and dt come from in_proj
    last = [n for n in off if ".1.mixer.lam_" in n]  # the last layer's lam: nothing after it feeds a score
    assert len(last) == 2 and not changed.intersection(last)


def test_config_fields_and_mixer_arguments_are_validated():
    kw = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, mixer="mamba2", num_heads=2, head_k_dim=8)
    assert DLAConfig(**kw, boundary_grad="ste").boundary_temperature == 0.1
    with pytest.raises(ValueError, match="boundary_grad"):
        DLAConfig(**kw, boundary_grad="soft")
    with pytest.raises(ValueError, match="boundary_grad"):
        DLAConfig(**kw, boundary_grad="ste", policy="fenwick")
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="boundary_temperature"):
            DLAConfig(**kw, boundary_temperature=bad)
    sizes = dict(num_heads=2, head_v_dim=8, head_k_dim=8)
    for bad in (dict(boundary_grad="soft"), dict(boundary_grad="ste", policy="single")):
        with pytest.raises(ValueError, match="boundary_grad"):
            Mamba2Mixer(32, **sizes, **bad)
    with pytest.raises(ValueError, match="boundary_temperature"):
        Mamba2Mixer(32, **sizes, boundary_grad="ste", boundary_temperature=0.0)
    assert "boundary_grad='ste'" in repr(Mamba2Mixer(32, **sizes, boundary_grad="ste"))
