"""Peers' own references as oracles: fla's naive Log-Linear attention, Gated DeltaNet and simple GLA.

fla's naive functions compute in float32 whatever the input dtype, hence tolerances of 1e-5 here.
"""

import pytest
import torch

from dla.ops import chunk_dla, naive_dla, num_levels
from tests.conftest import make_inputs, rel_err

fla_ll = pytest.importorskip("fla.ops.log_linear_attn.naive")
fla_gdn = pytest.importorskip("fla.ops.gated_delta_rule.naive")
fla_gla = pytest.importorskip("fla.ops.simple_gla.naive")

TOL = 1e-5


@pytest.mark.parametrize("T,G", [(1, 2), (37, 1), (64, 2), (100, 2)])
@pytest.mark.parametrize("impl", [naive_dla, chunk_dla])
def test_fenwick_equals_fla_log_linear(T, G, impl):
    L = num_levels(T)
    x = make_inputs(B=2, T=T, H=2, G=G, K=4, V=3, R=L, seed=T)
    ref = fla_ll.naive_log_linear_attn(x["q"], x["k"], x["v"], x["g"], x["lam"], scale=1.0)
    o, _ = impl(x["q"], x["k"], x["v"], x["g"], x["lam"], policy="fenwick", scale=1.0)
    assert rel_err(o, ref) < TOL


@pytest.mark.parametrize("impl", [naive_dla, chunk_dla])
def test_single_gdn_equals_fla_gated_delta_rule(impl):
    x = make_inputs(B=2, T=70, H=3, G=3, K=5, V=4, R=1, gdn=True, seed=1)
    h0 = torch.randn(2, 3, 5, 4, dtype=torch.float64) * 0.1
    ref, ref_state = fla_gdn.naive_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"],
                                                              initial_state=h0, output_final_state=True)
    ref_chunk, _ = fla_gdn.naive_chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=h0)
    init = _single_state(h0)
    o, state = impl(x["q"], x["k"], x["v"], x["g"], None, x["beta"], policy="single", initial_state=init,
                    output_final_state=True)
    assert rel_err(o, ref) < TOL and rel_err(o, ref_chunk) < TOL
    assert rel_err(state.backbone_state, ref_state) < TOL


@pytest.mark.parametrize("impl", [naive_dla, chunk_dla])
def test_single_scalar_gate_equals_fla_simple_gla(impl):
    x = make_inputs(B=1, T=90, H=2, G=2, K=4, V=6, R=1, seed=2)
    ref, ref_state = fla_gla.naive_chunk_simple_gla(x["q"], x["k"], x["v"], x["g"], output_final_state=True)
    o, state = impl(x["q"], x["k"], x["v"], x["g"], None, policy="single", output_final_state=True)
    assert rel_err(o, ref) < TOL
    assert rel_err(state.backbone_state, ref_state) < TOL


@pytest.mark.parametrize("policy", ["dla", "fixed", "dla_unbounded", "fenwick"])
@pytest.mark.parametrize("gdn", [False, True])
def test_lam_one_gives_backbone_for_every_policy(policy, gdn):
    x = make_inputs(B=1, T=50, H=2, G=2, K=4, V=4, R=7, gdn=gdn, seed=3)
    ones = torch.ones_like(x["lam"])
    if gdn:
        ref, _ = fla_gdn.naive_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"])
    else:
        ref, _ = fla_gla.naive_chunk_simple_gla(x["q"], x["k"], x["v"], x["g"])
    for impl in (naive_dla, chunk_dla):
        o, _ = impl(x["q"], x["k"], x["v"], x["g"], ones, x["beta"], policy=policy, capacity=7, tau=0.2,
                    block_size=4)
        assert rel_err(o, ref) < TOL


def _single_state(h0):
    from dla.ops import DLAState
    B, H = h0.shape[:2]
    return DLAState(h0[:, :, None].clone(), torch.ones(B, H, 1, dtype=torch.int64),
                    torch.zeros(B, H, 1, dtype=h0.dtype), torch.ones(B, H, dtype=torch.int64))
