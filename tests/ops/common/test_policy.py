"""The Policy value: validated once, its rules per kind (lam index, boundaries, widths), built from keywords."""

import math

import pytest
import torch

from dla.ops import POLICIES, Policy, num_levels


def test_lam_indices_per_policy():
    counts = torch.tensor([1, 1, 2, 8, 16])  # newest first
    assert Policy("dla", capacity=30).lam_indices(counts).tolist() == [0, 1, 2, 3, 4]
    assert Policy("dla_unbounded", capacity=3).lam_indices(counts).tolist() == [0, 1, 2, 2, 2]
    assert Policy("fenwick").lam_indices(counts).tolist() == [0, 1, 2, 4, 5]
    assert Policy("single").lam_indices(counts[:1]).tolist() == [0]


def test_wants_boundary_per_policy():
    info = torch.tensor([0.1, 0.7], dtype=torch.float64)
    pos = torch.tensor([4, 5])
    assert Policy("dla", tau=0.6, capacity=8).wants_boundary(info, pos).tolist() == [False, True]
    assert Policy("dla", tau=0.6, capacity=1).wants_boundary(info, pos).tolist() == [False, False]  # C == 1
    assert Policy("fixed", block_size=4).wants_boundary(info, pos).tolist() == [True, False]
    assert Policy("fenwick").wants_boundary(info, pos).tolist() == [True, True]
    assert Policy("single").wants_boundary(info, pos).tolist() == [False, False]


def test_widths_and_entries():
    assert Policy("dla", capacity=7).lam_entries(1000) == 7
    assert Policy("fenwick").lam_entries(1000) == num_levels(1000) == 11
    assert Policy("single").lam_entries(1000) == 1
    assert Policy("dla", capacity=7).state_width(11, 3) == 7
    assert Policy("fenwick").state_width(11, 3) == 11
    assert Policy("dla_unbounded", capacity=7).state_width(11, 40) == 40
    assert Policy("dla_unbounded").slot_bound(4, 2, 100) == 103
    assert Policy("dla").merges and Policy("fixed").merges and not Policy("fenwick").merges
    assert not Policy("single").data_dependent and Policy("fixed").data_dependent


@pytest.mark.parametrize("field, value, allowed", [
    ("policy", "dla2", POLICIES), ("score", "cosine", ("drift", "write")), ("capacity", 0, ()),
    ("capacity", 2.0, ()), ("capacity", True, ()), ("tau", -0.1, ()), ("tau", math.nan, ()), ("tau", "0.6", ()),
    ("block_size", 0, ()),
])
def test_bad_fields_name_themselves(field, value, allowed):
    kw = {"kind" if field == "policy" else field: value}
    with pytest.raises(ValueError, match=rf"^{field}") as err:
        Policy(**kw)
    for word in allowed:
        assert word in str(err.value)


def test_of_builds_from_keywords_and_refuses_both():
    assert Policy.of("fixed", block_size=8) == Policy("fixed", block_size=8)
    assert Policy.of("dla") == Policy()  # the paper's defaults: tau 0.6, C = 30, drift
    p = Policy("dla", tau=0.3, capacity=4)
    assert Policy.of(p) is p
    with pytest.raises(ValueError, match="^tau"):
        Policy.of(p, tau=0.5)
    with pytest.raises(ValueError, match="^policy"):
        Policy.of(3)


def test_policy_is_a_frozen_value():
    p = Policy("dla", capacity=4)
    with pytest.raises(Exception):
        p.capacity = 5
    assert p == Policy("dla", capacity=4) and hash(p) == hash(Policy("dla", capacity=4))
