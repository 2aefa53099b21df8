"""The Triton segmentation scan == the vectorised PyTorch scan (:func:`dla.ops.chunked.segmentation.scan`) on the same inputs.

On a GPU both run on it; without one, under ``TRITON_INTERPRET=1`` (set by conftest). Integer and bool fields must
be equal, scores, information sums and the open slot's norm equal to 1e-6 (float32) / 1e-12 (float64) relative.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from dla.ops import DLAState, Tuning, chunk_dla, chunked, num_levels
from dla.ops.utils.tuning import StageConfig
from tests.conftest import make_inputs, rel_err
from tests.ops import stages

pytest.importorskip("triton")
from dla.ops import triton as kernels  # noqa: E402
from dla.ops.triton.segmentation import table_rows  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

POLICIES = ("dla", "fixed", "fenwick", "single", "dla_unbounded")
EXACT = ("boundary", "num_slots", "merged", "starts", "lam_index", "pos", "counts", "m")
CLOSE = ("score", "info", "open_norm")
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
HEAD = 7  # tokens summarised by an initial state


def _scan(impl, k, u, g, T, *, chunk_size, policy, tau, capacity, block_size, score, R, initial_state, lengths=None,
          heads_per_group=1, tuning=None):
    """The scan stage of ``impl`` with ``_case``'s keywords (``tuning``: changes of the defaults)."""
    return stages.scan(impl, k, u, g, T, chunk_size, policy, tau, capacity, block_size, score, R, initial_state,
                       lengths, heads_per_group, StageConfig(tuning=Tuning(**(tuning or {}))))


def _case(policy, *, T=70, chunk_size=16, dtype=torch.float64, init=False, tau=0.6, capacity=4, block_size=3,
          score="drift", K=4, V=6, H=2, decay=0.3, seed=0, values=None):
    """Scan inputs as ``chunk_dla`` builds them (``u = v``, heads expanded, zero padding) and the kwargs."""
    x = make_inputs(B=1, T=T + (HEAD if init else 0), H=H, G=1, K=K, V=V, dtype=dtype, decay=decay, seed=seed)
    if values is not None:
        x["v"] = values(x["v"])
    kw = dict(tau=tau, capacity=capacity, policy=policy, block_size=block_size, score=score)
    state, seen = None, 0
    if init:
        head = {n: None if n == "lam" or t is None else t[:, :HEAD] for n, t in x.items()}
        _, state = chunk_dla(**head, **kw, output_final_state=True)
        x = {n: None if t is None else t[:, HEAD:] for n, t in x.items()}
        seen = HEAD
    Tp = -(-T // chunk_size) * chunk_size
    k = F.pad(x["k"].transpose(1, 2).expand(1, H, T, K), (0, 0, 0, Tp - T)).reshape(H, Tp, K)
    u = F.pad(x["v"].transpose(1, 2), (0, 0, 0, Tp - T)).reshape(H, Tp, V)
    g = F.pad(x["g"].transpose(1, 2), (0, Tp - T)).reshape(H, Tp)
    R = {"single": 1, "fenwick": num_levels(seen + T)}.get(policy, capacity)
    args = dict(chunk_size=chunk_size, policy=policy, tau=tau, capacity=capacity, block_size=block_size,
                score=score, R=R, initial_state=None if state is None else state.to(DEVICE))
    return (k.to(DEVICE), u.to(DEVICE), g.to(DEVICE), T), args


def _check(inputs, args, record, name):
    ref = _scan(chunked, *inputs, **{n: a for n, a in args.items() if n != "tuning"})
    out = _scan(kernels, *inputs, **args)
    for field in EXACT:
        a, b = getattr(out, field), getattr(ref, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert torch.equal(a, b), f"{field}: {int((a != b).sum())} entries differ"
    tol = TOL[inputs[1].dtype]
    for field in CLOSE:
        a, b = getattr(out, field), getattr(ref, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert record(f"{name}, {field} ({str(b.dtype)[6:]})", rel_err(a, b)) <= tol, field
    return ref


@pytest.mark.parametrize("init", [False, True], ids=["empty", "initial_state"])
@pytest.mark.parametrize("score", ["drift", "write"])
@pytest.mark.parametrize("policy", POLICIES)
def test_matches_reference_float64(policy, score, init, record):
    inputs, args = _case(policy, T=40, score=score, init=init)
    _check(inputs, args, record, "scan, triton vs torch")


@pytest.mark.parametrize("score", ["drift", "write"])
@pytest.mark.parametrize("policy", POLICIES)
def test_matches_reference_float32(policy, score, record):
    inputs, args = _case(policy, T=40, score=score, init=True, dtype=torch.float32, seed=1)
    _check(inputs, args, record, "scan, triton vs torch")


@pytest.mark.parametrize("T, chunk_size", [(1, 16), (5, 16), (64, 16), (64, 64), (70, 64), (1, 64), (20, 10)])
@pytest.mark.parametrize("policy", ["dla", "fenwick"])
def test_lengths_and_chunk_sizes(policy, T, chunk_size, record):
    inputs, args = _case(policy, T=T, chunk_size=chunk_size, init=T % 2 == 0, seed=T)
    _check(inputs, args, record, "scan, lengths and chunk sizes")


def test_wide_values_and_odd_dims(record):
    """``K`` padded to a block of 32, ``V = 70`` in two value tiles, ``chunk_size`` not a power of two."""
    inputs, args = _case("dla", T=30, chunk_size=12, K=20, V=70, H=1, init=True, tau=0.3)
    _check(inputs, args, record, "scan, K=20 V=70")


@pytest.mark.parametrize("tau, opened", [(0.7, 33), (0.75, 0)])
def test_keys_in_two_tiles(tau, opened, record):
    """``K = 80``: the open slot's state moves and is read in ``[32, 32]`` tiles (three key tiles, the last
    partly masked). ``tau = 0.7``: boundaries in most tokens, a slot absorbing seven; ``tau = 0.75``: the initial
    state's open slot absorbs all 40 tokens, over three chunks (every score from the state carried across)."""
    inputs, args = _case("dla", T=40, chunk_size=16, K=80, V=40, H=1, init=True, tau=tau)
    ref = _check(inputs, args, record, "scan, K=80 V=40")
    assert int(ref.boundary.sum()) == opened


@pytest.mark.parametrize("block_k, block_v", [(16, 16), (32, 64)])
def test_state_tiles(block_k, block_v, record):
    """The open slot's state in other tiles (``block_k x block_v``: five key tiles and three value tiles, the last
    of each partly masked; or one value tile wider than ``V``): the same decisions, scores to rounding."""
    inputs, args = _case("dla", T=40, chunk_size=16, K=80, V=40, H=2, init=True, tau=0.7)
    ref = _check(inputs, {**args, "tuning": dict(scan_block_k=block_k, scan_block_v=block_v)}, record,
                 f"scan, state tiles {block_k}x{block_v}")
    assert 0 < int(ref.boundary.sum()) < ref.boundary.numel()
    with pytest.raises(ValueError, match="tuning.scan_block_v"):
        Tuning(scan_block_v=24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_merges(dtype, record):
    inputs, args = _case("dla", tau=0.05, capacity=3, dtype=dtype, init=True)
    ref = _check(inputs, args, record, "scan, many merges")
    assert int((ref.merged >= 0).sum()) > 50


@pytest.mark.parametrize("policy, tau", [("fixed", 0.6), ("dla", 0.0)])
def test_merge_ties_go_to_the_oldest_pair(policy, tau, record):
    """Zero values: every score and density is 0, every merge is a tie; the rule picks the smallest index."""
    inputs, args = _case(policy, tau=tau, capacity=3, block_size=2, init=True, values=torch.zeros_like)
    ref = _check(inputs, args, record, "scan, ties")
    merged = ref.merged[ref.merged >= 0]
    assert merged.numel() > 10 and bool((merged == 0).all())


def test_unbounded_initial_state_wider_than_registers(record):
    """``dla_unbounded`` with ``tau = 0``: the initial state holds more slots than the register window (R = 2)."""
    inputs, args = _case("dla_unbounded", tau=0.0, capacity=2, init=True, T=20)
    assert int(args["initial_state"].num_slots.min()) > 2
    _check(inputs, args, record, "scan, unbounded window")


def test_capacity_one_is_the_backbone(record):
    inputs, args = _case("dla", tau=0.0, capacity=1, init=True, T=20)
    ref = _check(inputs, args, record, "scan, capacity 1")
    assert bool((ref.num_slots == 1).all())


def test_initial_state_without_open_norm(record):
    inputs, args = _case("dla", init=True, T=20)
    st = args["initial_state"]
    args["initial_state"] = DLAState(st.slots, st.counts, st.info, st.num_slots)
    _check(inputs, args, record, "scan, state without open_norm")


def test_initial_state_wider_than_capacity(record):
    """A continuation from a state of width 6 > capacity 4 (zero entries past ``num_slots``)."""
    inputs, args = _case("dla", init=True, T=20)
    st = args["initial_state"]
    wide = DLAState(F.pad(st.slots, (0, 0, 0, 0, 0, 2)), F.pad(st.counts, (0, 2)), F.pad(st.info, (0, 2)),
                    st.num_slots, st.open_norm)
    ref = _check(inputs, {**args, "initial_state": wide}, record, "scan, wide initial state")
    assert ref.pos.shape[1] == 6


@pytest.mark.parametrize("policy", ["dla", "fenwick", "dla_unbounded"])
def test_right_padded_rows(policy, record):
    """Rows shorter than ``T`` (``lengths``, zero padding): tokens past a row's length change nothing."""
    (k, u, g, T), args = _case(policy, T=30, H=3, init=True, tau=0.3)
    lengths = torch.tensor([30, 17, 0], device=k.device)
    live = (torch.arange(k.shape[1], device=k.device)[None] < lengths[:, None])
    k, u, g = k * live[..., None], u * live[..., None], g * live
    ref = _check((k, u, g, T), {**args, "lengths": lengths}, record, "scan, right-padded rows")
    assert int(ref.boundary[1, 17:].sum()) == 0 and int(ref.boundary[1, :17].sum()) > 0


def test_rejects_what_it_does_not_implement():
    (k, u, g, T), args = _case("dla", T=5)
    with pytest.raises(ValueError, match="chunk_size"):
        _scan(kernels, k, u, g, T, **{**args, "chunk_size": 3})
    with pytest.raises(ValueError, match="float32 or float64"):
        _scan(kernels, k, u.half(), g, T, **args)
    with pytest.raises(ValueError, match="K <= 256"):
        _scan(kernels, torch.zeros(2, 16, 257, dtype=u.dtype, device=u.device), u, g, T, **args)


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("policy", ["dla", "fenwick", "dla_unbounded", "fixed"])
def test_score_table_windows(policy, window, record):
    """The chunk score tables in windows of ``window`` chunks (``tuning.scan_table_bytes``): the slots, the open
    slot's state and its norm continue from one window's launch to the next, and nothing else changes."""
    (k, u, g, T), args = _case(policy, T=75, H=3, init=True, tau=0.4)
    per_chunk = k.shape[0] * table_rows(16) * 16 * u.element_size()
    lengths = torch.tensor([75, 40, 3], device=k.device)
    live = (torch.arange(k.shape[1], device=k.device)[None] < lengths[:, None])
    k, u, g = k * live[..., None], u * live[..., None], g * live
    ref = _scan(chunked, k, u, g, T, **args, lengths=lengths)
    out = _scan(kernels, k, u, g, T, **args, lengths=lengths, tuning=dict(scan_table_bytes=window * per_chunk))
    for field in EXACT:
        assert torch.equal(getattr(out, field), getattr(ref, field)), field
    for field in CLOSE:
        assert record(f"scan, windows of {window}, {field}", rel_err(getattr(out, field), getattr(ref, field))) <= 1e-12


@pytest.mark.parametrize("policy", ["dla", "fenwick"])
def test_grouped_keys(policy, record):
    """Keys once per group of heads (``heads_per_group``, as ``chunk_dla`` passes grouped ``k``): the decisions,
    scores and slots of the per-head keys, exactly, and those of the PyTorch scan."""
    (k, u, g, T), args = _case(policy, H=4, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    kg = F.normalize(torch.randn(2, k.shape[1], k.shape[2], generator=gen), dim=-1).to(DEVICE)
    kg[:, T:] = 0  # padding, as chunk_dla's copies have it
    k_heads = kg.repeat_interleave(2, 0)  # heads 0, 1 read group 0; heads 2, 3 group 1
    _check((k_heads, u, g, T), args, record, f"triton scan, per-head keys of two groups ({policy})")
    per_head = _scan(kernels, k_heads, u, g, T, **args)
    grouped = _scan(kernels, kg, u, g, T, heads_per_group=2, **args)
    assert per_head.boundary.any() and not torch.equal(per_head.score[0], per_head.score[2])
    for field in EXACT + CLOSE:
        assert torch.equal(getattr(grouped, field), getattr(per_head, field)), field
    ref = _scan(chunked, kg, u, g, T, heads_per_group=2, **args)  # the PyTorch scan reads grouped keys too
    for field in EXACT:
        assert torch.equal(getattr(ref, field), getattr(per_head, field)), field
    with pytest.raises(ValueError, match="heads_per_group"):
        _scan(kernels, kg, u, g, T, heads_per_group=4, **args)


@pytest.mark.parametrize("block_size, init, dtype", [(40, False, torch.float64), (40, True, torch.float64),
                                                      (23, False, torch.float32), (5, True, torch.float64)])
def test_open_slot_state_paths(block_size, init, dtype, record):
    """The open slot's ``y`` at a chunk start by each path: a slot that started in the previous chunk (the
    cross-chunk table), two chunks back (its state built over both), three or more (moved chunk by chunk), one
    from an initial state (negative start). ``fixed`` slots of ``block_size`` tokens over 16-token chunks make each
    path happen; its scores are still computed, so ``score`` checks every token's ``y``."""
    (k, u, g, T), args = _case("fixed", T=130, chunk_size=16, block_size=block_size, init=init, dtype=dtype,
                               decay=0.05, capacity=3)
    ref = _check((k, u, g, T), args, record, f"triton scan, open slot paths (blocks of {block_size}"
                 f"{', initial state' if init else ''})")
    starts = ref.pos[ref.pos >= 0]
    assert bool(ref.merged.ge(0).any())  # capacity 3: merges happen too
    if block_size == 40 and not init:  # slots [0, 40), [40, 80), ...: starts one and two chunks back at chunk starts
        assert torch.equal(ref.boundary[0].nonzero().flatten().cpu(), torch.arange(0, T, 40))
    assert starts.numel() > 0


@pytest.mark.parametrize("chunk_size", [8, 24, 128])
def test_triton_backend_refuses_chunks_its_scan_cannot_hold(chunk_size):
    x = make_inputs(B=1, T=20, H=2, G=1, K=4, V=4, R=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="^chunk_size: the triton backend takes 16, 32 or 64"):
        chunk_dla(**{n: t.to(DEVICE) if t is not None else None for n, t in x.items()}, capacity=4,
                  chunk_size=chunk_size, backend="triton")
