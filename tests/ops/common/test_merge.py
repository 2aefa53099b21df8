"""The merge rule picks the documented pair, ties included."""

import torch

from dla.ops.common.merge import pick_merge


def test_pick_merge_lowest_density():
    info = torch.tensor([[0.0, 3.0, 0.1, 0.2, 5.0]], dtype=torch.float64)
    counts = torch.tensor([[4, 1, 1, 1, 1]])
    # densities of pairs: (0+3)/5=.6, 3.1/2, .3/2=.15, 5.2/2 -> pair 2
    assert pick_merge(info, counts, torch.tensor([5])).tolist() == [2]


def test_pick_merge_ties_take_smallest_index():
    info = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    counts = torch.tensor([[1, 1, 1, 1]])
    assert pick_merge(info, counts, torch.tensor([4])).tolist() == [0]
    info = torch.tensor([[5.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    counts = torch.ones(1, 5, dtype=torch.int64)
    assert pick_merge(info, counts, torch.tensor([5])).tolist() == [1]


def test_pick_merge_ignores_dead_slots_and_batches():
    info = torch.tensor([[2.0, 2.0, 0.0, 0.0], [9.0, 9.0, 1.0, 0.5]], dtype=torch.float64)
    counts = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    # row 0 has 2 live slots: the only pair is 0 even though dead entries look 'cheaper'
    assert pick_merge(info, counts, torch.tensor([2, 4])).tolist() == [0, 2]
