"""``chunk_dla`` as one ``torch.library`` op: schema, fake and autograd registrations, and ``torch.compile``
without graph breaks (op, and the recurrent layers around it)."""

import pytest
import torch
from torch.library import opcheck

from dla.layers import GatedDeltaNetMixer, Mamba2Mixer
from dla.ops import chunk_dla
from tests.conftest import make_inputs, rel_err

KW = dict(capacity=4, tau=0.3, chunk_size=16, block_size=8)


def _args(x, cu_seqlens=None):
    return (x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], cu_seqlens, None, KW["tau"], KW["capacity"],
            "dla", KW["block_size"], "drift", KW["chunk_size"], "auto", "auto", None)


@pytest.mark.parametrize("gdn", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck(gdn, packed):
    x = make_inputs(B=1, T=40, H=4, G=2, K=8, V=8, R=4, gdn=gdn, dtype=torch.float32, seed=1, requires_grad=True)
    res = opcheck(torch.ops.dla.chunk_dla.default, _args(x, torch.tensor([0, 15, 40]) if packed else None))
    assert set(res.values()) == {"SUCCESS"}, res


@pytest.mark.parametrize("gdn", [False, True])
def test_compiled_equals_eager(gdn):
    x = make_inputs(B=2, T=40, H=4, G=2, K=8, V=8, R=4, gdn=gdn, dtype=torch.float32, seed=2, requires_grad=True)
    names = [n for n, t in x.items() if t is not None]

    def f(**x):
        return chunk_dla(**x, **KW)[0]

    torch._dynamo.reset()
    o = torch.compile(f, backend="aot_eager", fullgraph=True)(**x)  # fullgraph: a graph break is an error
    o_ref = f(**x)
    assert rel_err(o, o_ref) < 1e-6
    do = torch.randn_like(o)
    g = torch.autograd.grad((o * do).sum(), [x[n] for n in names])
    g_ref = torch.autograd.grad((o_ref * do).sum(), [x[n] for n in names])
    for n, a, b in zip(names, g, g_ref):
        assert rel_err(a, b) < 1e-6, n


def test_compiled_only_lam_needs_grad():
    x = make_inputs(B=1, T=24, H=2, G=1, K=8, V=8, R=4, dtype=torch.float32, seed=3)
    x["lam"].requires_grad_(True)
    f = torch.compile(lambda **x: chunk_dla(**x, **KW)[0], backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    (dlam,) = torch.autograd.grad(f(**x).sum(), [x["lam"]])
    x2 = {n: (t.detach().requires_grad_(n == "lam") if t is not None else None) for n, t in x.items()}
    (ref,) = torch.autograd.grad(chunk_dla(**x2, **KW)[0].sum(), [x2["lam"]])
    assert rel_err(dlam, ref) < 1e-6


@pytest.mark.parametrize("cls", [Mamba2Mixer, GatedDeltaNetMixer])
def test_layer_compiles_without_graph_breaks(cls):
    torch.manual_seed(0)
    m = cls(hidden_size=32, num_heads=4, head_v_dim=8, head_k_dim=8, policy="dla", **KW)
    h = torch.randn(2, 40, 32, requires_grad=True)
    torch._dynamo.reset()
    o = torch.compile(m, backend="aot_eager", fullgraph=True)(h)
    o_ref = m(h)
    assert rel_err(o, o_ref) < 1e-6
    params = [h] + list(m.parameters())
    g = torch.autograd.grad(o.sum(), params)
    g_ref = torch.autograd.grad(o_ref.sum(), params)
    assert max(rel_err(a, b) for a, b in zip(g, g_ref)) < 1e-5


def test_compiled_state_request_still_runs():
    """Asking for the final state under compile takes the traced eager path (graph breaks allowed)."""
    x = make_inputs(B=1, T=24, H=2, G=1, K=8, V=8, R=4, dtype=torch.float32, seed=4)
    torch._dynamo.reset()
    o, st = torch.compile(lambda **x: chunk_dla(**x, **KW, output_final_state=True), backend="aot_eager")(**x)
    o_ref, st_ref = chunk_dla(**x, **KW, output_final_state=True)
    assert rel_err(o, o_ref) < 1e-6 and rel_err(st.slots, st_ref.slots) < 1e-6


def test_compiled_bad_input_names_the_argument():
    x = make_inputs(B=1, T=24, H=2, G=1, K=8, V=8, R=4, dtype=torch.float32, seed=5)
    torch._dynamo.reset()
    f = torch.compile(lambda **x: chunk_dla(**x, **{**KW, "capacity": 0})[0], backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="capacity"):
        f(**x)


def test_compiled_call_takes_the_tuning():
    """A :class:`Tuning` travels through the op as a list of its fields (``None`` fields included)."""
    from dla.ops import Tuning
    from dla.ops.chunk import _tuning_list, _tuning_of

    t = Tuning(torch_group_bytes=1 << 12, dq_warps=None, scan_block_v=16)
    assert _tuning_of(_tuning_list(t)) == t and _tuning_of(None) is None
    for form in ("chunk", "pair"):  # string fields travel as their index
        assert _tuning_of(_tuning_list(Tuning(dq_kernel=form))).dq_kernel == form
    x = make_inputs(B=1, T=40, H=2, G=1, K=8, V=8, R=4, dtype=torch.float32, seed=6)
    torch._dynamo.reset()
    f = torch.compile(lambda **x: chunk_dla(**x, **KW, tuning=t)[0], backend="aot_eager", fullgraph=True)
    assert rel_err(f(**x), chunk_dla(**x, **KW)[0]) < 1e-6
