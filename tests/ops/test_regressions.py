"""Bugs found once, kept found."""

import torch
import torch.nn.functional as F

from dla.ops import DLAState, chunk_dla, masked_dla, naive_dla, num_levels
from tests.conftest import make_inputs, rel_err


def test_half_precision_inputs_give_half_precision_outputs():
    x = make_inputs(B=1, T=5, H=1, G=1, K=3, V=2, R=4, dtype=torch.float16)
    for impl in (naive_dla, masked_dla, chunk_dla):
        assert impl(**x, capacity=4)[0].dtype == torch.float16


def test_masked_form_with_no_tokens_returns_the_initial_state():
    x = make_inputs(B=1, T=0, H=1, G=1, K=3, V=2, R=3)
    o, state = masked_dla(**x, capacity=3, output_final_state=True)
    assert o.shape == (1, 0, 1, 2) and int(state.num_slots.sum()) == 0


def test_chunked_accepts_an_initial_state_wider_than_its_live_slots():
    x = make_inputs(B=1, T=13, H=2, G=2, K=3, V=3, R=num_levels(13), seed=1)
    head = {n: (t[:, :12] if t is not None else None) for n, t in x.items()}
    tail = {n: (t[:, 12:] if t is not None else None) for n, t in x.items()}
    _, st = chunk_dla(**head, policy="fenwick", output_final_state=True)
    wide = DLAState(F.pad(st.slots, (0, 0, 0, 0, 0, 3)), F.pad(st.counts, (0, 3)), F.pad(st.info, (0, 3)),
                    st.num_slots, st.open_norm)
    o, _ = chunk_dla(**tail, policy="fenwick", initial_state=wide)
    o_ref, _ = naive_dla(**tail, policy="fenwick", initial_state=wide)
    assert rel_err(o, o_ref) < 1e-12
