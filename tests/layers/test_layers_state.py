"""Batch operations on DLAState and the layer caches (exact: integer and copied values)."""

import pytest
import torch

from dla.layers import AttentionLayerCache, RecurrentLayerCache
from dla.layers.state import (cat_states, empty_state, fit_state_width, scatter_state, select_state, where_state,
                              with_open_norm)

FIELDS = ("slots", "counts", "info", "num_slots", "open_norm")


def random_state(B=3, H=2, C=4, K=3, V=5, seed=0):
    torch.manual_seed(seed)
    state = empty_state(B, H, C, K, V, torch.float64, torch.device("cpu"))
    state.num_slots = torch.randint(1, C + 1, (B, H))
    live = torch.arange(C) < state.num_slots[..., None]
    state.slots = torch.randn(B, H, C, K, V, dtype=torch.float64) * live[..., None, None]
    state.counts = torch.randint(1, 9, (B, H, C)) * live
    state.info = torch.rand(B, H, C, dtype=torch.float64) * live
    state.open_norm = torch.rand(B, H, dtype=torch.float64)
    return state


def test_fit_state_width_pads_and_trims_empty_slots_only():
    state = random_state()
    wide = fit_state_width(state, 7)
    assert wide.slots.shape[2] == 7 and float(wide.slots[:, :, 4:].abs().sum()) == 0.0
    back = fit_state_width(wide, 4)
    assert all(torch.equal(getattr(back, f), getattr(state, f)) for f in FIELDS)
    with pytest.raises(ValueError, match="^width:"):
        fit_state_width(state, int(state.num_slots.max()) - 1)


def test_select_and_cat_states_round_trip():
    state = random_state()
    rows = [select_state(state, torch.tensor([b])) for b in range(3)]
    rows[1] = fit_state_width(rows[1], 6)
    joined = cat_states(rows)
    assert joined.slots.shape[2] == 6
    assert torch.equal(fit_state_width(joined, 4).slots, state.slots)
    assert torch.equal(joined.num_slots, state.num_slots) and torch.equal(joined.open_norm, state.open_norm)
    assert torch.equal(select_state(state, torch.tensor([2, 0])).counts, state.counts[[2, 0]])


def test_recurrent_cache_reorder_and_repeat():
    cache = RecurrentLayerCache(conv=torch.arange(6.).reshape(3, 2, 1), state=random_state(), seen_tokens=5)
    before = cache.state.slots.clone()
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.conv[:, 0, 0], torch.tensor([4., 4., 0.]))
    assert torch.equal(cache.state.slots, before[[2, 2, 0]])
    cache.batch_repeat_interleave(2)
    assert cache.conv.shape[0] == 6 and cache.state.num_slots.shape[0] == 6
    assert cache.nbytes() == sum(t.numel() * t.element_size() for t in (
        cache.conv, *(getattr(cache.state, f) for f in FIELDS)))
    with pytest.raises(ValueError, match="^tokens_to_remove:"):
        cache.crop(1)
    cache.reset()
    assert cache.state is None and cache.seen_tokens == 0 and cache.nbytes() == 0


def test_attention_cache_reorder():
    cache = AttentionLayerCache(keys=torch.arange(4.).reshape(2, 1, 2, 1), values=torch.zeros(2, 1, 2, 1),
                                key_mask=torch.tensor([[True, True], [False, True]]),
                                next_position=torch.tensor([2, 1]), seen_tokens=2)
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.next_position, torch.tensor([1, 2]))
    assert torch.equal(cache.key_mask[0], torch.tensor([False, True]))
    assert torch.equal(cache.keys[0, 0, :, 0], torch.tensor([2., 3.]))


def test_where_and_scatter_states_pick_rows_without_mixing_them():
    old, new = random_state(seed=1), fit_state_width(random_state(seed=2), 6)
    mixed = where_state(torch.tensor([True, False, True]), new, old)
    assert mixed.slots.shape[2] == 6
    for f in FIELDS:
        assert torch.equal(getattr(mixed, f)[[0, 2]], getattr(new, f)[[0, 2]])
        assert torch.equal(getattr(fit_state_width(mixed, 4), f)[1], getattr(old, f)[1])
    put = scatter_state(old, torch.tensor([2]), select_state(new, torch.tensor([0])))
    assert all(torch.equal(getattr(put, f)[2], getattr(new, f)[0]) for f in FIELDS)
    assert all(torch.equal(getattr(fit_state_width(put, 4), f)[:2], getattr(old, f)[:2]) for f in FIELDS)


def test_with_open_norm_fills_the_open_slot_norm():
    state = random_state()
    state.open_norm = None
    filled = with_open_norm(state).open_norm
    open_slot = state.slots[torch.arange(3)[:, None], torch.arange(2), state.num_slots - 1]
    assert torch.allclose(filled, open_slot.pow(2).sum((-1, -2)))
    assert float(empty_state(1, 2, 3, 4, 5, torch.float32, torch.device("cpu")).open_norm.abs().sum()) == 0.0
