"""``minimal_dla`` (the method in about a hundred lines) == the slot form (``naive_dla``, the specification)."""

import pytest

from dla.ops import minimal_dla, naive_dla
from tests.conftest import make_inputs, rel_err


@pytest.mark.parametrize("gdn", [False, True], ids=["mamba2", "gdn"])
@pytest.mark.parametrize("tau, capacity", [(0.3, 4), (0.0, 3), (0.6, 30), (0.05, 1)])
def test_minimal_equals_the_slot_form(gdn, tau, capacity, record):
    x = make_inputs(B=2, T=40, H=4, G=2, K=4, V=3, R=capacity, gdn=gdn, decay=0.2, seed=capacity)
    o = minimal_dla(**x, tau=tau, capacity=capacity)
    ref, _, seg = naive_dla(**x, tau=tau, capacity=capacity, return_segmentation=True)
    assert record("minimal vs slot form, output", rel_err(o, ref)) < 1e-12
    if capacity > 1 and tau < 0.6:  # the case exercises boundaries and (capacity 3, 4) merges
        assert seg.boundary.any() and (seg.merged >= 0).any()


def test_minimal_reads_like_its_docstring():
    """The module is the short listing it says it is."""
    import inspect

    import dla.ops.minimal as minimal

    code = [line for line in inspect.getsource(minimal).splitlines() if line.strip()]
    assert len(code) <= 130, len(code)
