"""Invariants of the DLA state machine (docs/design.md sections 2-3), as hypothesis properties of the slot form.

Every property runs ``naive_dla(..., return_segmentation=True, output_final_state=True)`` on small random float64
inputs drawn from a seed and strategies for the shapes, ``tau``, ``capacity``, policy, score, backbone (``beta``)
and decay scale, and checks the per-token record (:class:`dla.ops.Segmentation`) and the final state.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dla.ops import POLICIES, SCORES, chunk_dla, naive_dla, num_levels
from dla.ops.common.state import UNUSED_START
from tests.conftest import rel_err

SETTINGS = settings(max_examples=25, deadline=None)
TOL = 1e-12


@dataclass(frozen=True)
class Case:
    B: int
    T: int
    G: int
    H: int
    K: int
    V: int
    policy: str
    capacity: int
    tau: float
    score: str
    gdn: bool
    decay: float
    block_size: int
    slot_transition: str
    seed: int

    @property
    def R(self) -> int:
        """Entries of ``lam``: capacity, Fenwick levels or 1."""
        return {"single": 1, "fenwick": num_levels(self.T)}.get(self.policy, self.capacity)

    def inputs(self, lam: Optional[torch.Tensor] = None):
        gen = torch.Generator().manual_seed(self.seed)
        f64 = dict(generator=gen, dtype=torch.float64)
        q = torch.randn(self.B, self.T, self.G, self.K, **f64)
        k = torch.nn.functional.normalize(torch.randn(self.B, self.T, self.G, self.K, **f64), dim=-1)
        v = torch.randn(self.B, self.T, self.H, self.V, **f64)
        g = -torch.rand(self.B, self.T, self.H, **f64) * self.decay
        beta = torch.rand(self.B, self.T, self.H, **f64) if self.gdn else None
        if lam is None:
            lam = torch.rand(self.B, self.T, self.H, self.R, **f64) + 0.5
        return q, k, v, g, lam, beta

    def kwargs(self, **over):
        kw = dict(tau=self.tau, capacity=self.capacity, policy=self.policy, block_size=self.block_size,
                  score=self.score, slot_transition=self.slot_transition)
        kw.update(over)
        return kw

    def run(self, lam: Optional[torch.Tensor] = None, **over):
        q, k, v, g, lam, beta = self.inputs(lam)
        return naive_dla(q, k, v, g, lam, beta, return_segmentation=True, output_final_state=True,
                         **self.kwargs(**over))


@st.composite
def cases(draw, policies=POLICIES, capacities=st.integers(1, 6), taus=st.floats(0.0, 2.0),
          transitions=("additive", "per_slot")) -> Case:
    H = draw(st.sampled_from([1, 2]))
    gdn = draw(st.booleans())
    return Case(
        B=draw(st.integers(1, 2)), T=draw(st.integers(1, 40) | st.integers(24, 40)), H=H,
        G=draw(st.sampled_from([d for d in (1, 2) if H % d == 0])),
        K=draw(st.integers(2, 5)), V=draw(st.integers(2, 5)),
        policy=draw(st.sampled_from(policies)), capacity=draw(capacities), tau=draw(taus),
        score=draw(st.sampled_from(sorted(SCORES))), gdn=gdn,
        decay=draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.0])), block_size=draw(st.integers(1, 8)),
        slot_transition=draw(st.sampled_from(transitions)) if gdn else "additive",
        seed=draw(st.integers(0, 2 ** 31 - 1)),
    )


# ---------------------------------------------------------------- (a) capacity bounds

@SETTINGS
@given(case=cases())
def test_live_slots_bounded(case):
    _, state, seg = case.run()
    m = seg.num_slots
    assert bool((m >= 1).all())
    if case.policy in ("dla", "fixed"):
        assert int(m.max()) <= case.capacity
    elif case.policy == "fenwick":
        assert int(m.max()) <= num_levels(case.T)
    elif case.policy == "single":
        assert bool((m == 1).all())
    else:  # dla_unbounded never merges: one slot per boundary so far
        assert torch.equal(m, seg.boundary.long().cumsum(1))
    assert torch.equal(state.num_slots, m[:, -1])


# ---------------------------------------------------------------- (b) contiguous, ordered, minimal changes

def _check_record(case: Case, seg) -> None:
    """Per (batch, head): starts strictly decreasing and ending at the newest boundary; between two tokens the
    live set gains only ``t`` (at a boundary) and loses only the start(s) the merge record names."""
    R = case.R
    for b in range(case.B):
        for h in range(case.H):
            starts = seg.starts[b, :, h].tolist()
            lam_index = seg.lam_index[b, :, h].tolist()
            boundary = seg.boundary[b, :, h].tolist()
            merged = seg.merged[b, :, h].tolist()
            num = seg.num_slots[b, :, h].tolist()
            assert boundary[0] and merged[0] == -1 and num[0] == 1
            prev = None  # chronological live starts after token t - 1 (complete when m <= R)
            last_boundary = None
            for t in range(case.T):
                m = num[t]
                shown = min(m, R)
                live, unused = starts[t][:shown], starts[t][shown:]
                assert all(s == UNUSED_START for s in unused), (t, starts[t])
                assert all(s > UNUSED_START for s in live), (t, starts[t])
                assert all(a > c for a, c in zip(live, live[1:])), f"starts not strictly decreasing at {t}: {live}"
                if boundary[t]:
                    last_boundary = t
                assert live[0] == last_boundary, (t, live, last_boundary)
                assert all(0 <= s <= t for s in live)
                if m <= R:
                    assert live[-1] == 0, f"slots do not cover the sequence from token 0 at {t}: {live}"
                    # a slot holds the tokens from its start to the next start: ranks >= 1 are boundaries too
                    assert all(boundary[s] for s in live)
                _check_lam_index(case, t, live, lam_index[t])
                chrono = live[::-1]
                if t == 0:
                    assert chrono == [0]
                    prev = chrono
                    continue
                if case.policy == "single":
                    assert not boundary[t] and merged[t] == -1
                if case.policy == "fixed" and case.capacity >= 2:
                    assert boundary[t] == (t % case.block_size == 0)
                if case.policy == "dla" and case.capacity >= 2 or case.policy == "dla_unbounded":
                    assert boundary[t] == (float(seg.score[b, t, h]) >= case.tau)
                if case.policy in ("dla", "fixed") and case.capacity == 1:
                    assert not boundary[t]
                if not boundary[t]:
                    assert merged[t] == -1 and m == num[t - 1]
                    assert chrono == prev, (t, prev, chrono)
                    prev = chrono
                    continue
                if case.policy == "dla_unbounded":
                    assert merged[t] == -1 and m == num[t - 1] + 1
                    assert chrono == (prev + [t])[-R:], (t, prev, chrono)
                    prev = chrono
                    continue
                if case.policy == "fenwick":  # a carry chain: every slot after ``merged`` folds into it
                    expect = prev if merged[t] < 0 else prev[:merged[t] + 1]
                else:  # dla / fixed: at most one adjacent pair (i, i+1) merges, keeping the start of i
                    assert (merged[t] >= 0) == (num[t - 1] == case.capacity)
                    if merged[t] >= 0:
                        assert 0 <= merged[t] <= case.capacity - 2
                        assert m == num[t - 1]
                    expect = prev if merged[t] < 0 else prev[:merged[t] + 1] + prev[merged[t] + 2:]
                assert chrono == expect + [t], (t, prev, merged[t], chrono)
                prev = chrono


def _check_lam_index(case: Case, t: int, live, lam_index) -> None:
    shown = len(live)
    assert all(i == -1 for i in lam_index[shown:])
    idx = lam_index[:shown]
    if case.policy in ("dla", "fixed"):
        assert idx == list(range(shown))
    elif case.policy == "dla_unbounded":
        assert idx == [min(r, case.capacity - 1) for r in range(shown)]
    elif case.policy == "single":
        assert idx == [0]
    else:  # fenwick: open slot level 0, a closed slot of n tokens level bit_length(n)
        ends = [t + 1] + live[:-1]
        assert idx == [0] + [(e - s).bit_length() for s, e in zip(live[1:], ends[1:])]


@SETTINGS
@given(case=cases())
def test_slots_contiguous_and_ordered(case):
    _check_record(case, case.run()[2])


# ---------------------------------------------------------------- (c) the slots sum to the backbone state

@SETTINGS
@given(case=cases())
def test_slots_sum_to_backbone_state(case):
    _, state, _ = case.run()
    _, backbone, _ = case.run(policy="single", lam=torch.ones(case.B, case.T, case.H, 1, dtype=torch.float64),
                              slot_transition="additive")
    assert backbone.slots.shape[2] == 1
    assert rel_err(state.slots.sum(2), backbone.slots[:, :, 0]) <= TOL
    assert rel_err(state.backbone_state, backbone.backbone_state) <= TOL


# ---------------------------------------------------------------- (d) lam == 1 gives the backbone's output

@SETTINGS
@given(case=cases())
def test_unit_lam_equals_backbone(case):
    q, k, v, g, _, beta = case.inputs()
    ref, _ = naive_dla(q, k, v, g, None, beta, policy="single")
    o = case.run(lam=torch.ones(case.B, case.T, case.H, case.R, dtype=torch.float64))[0]
    assert rel_err(o, ref) <= TOL
    o_default = naive_dla(q, k, v, g, None, beta, **case.kwargs())[0]  # lam=None means all ones
    assert rel_err(o_default, ref) <= TOL


# ---------------------------------------------------------------- (e) capacity 1 is the backbone

@SETTINGS
@given(case=cases(policies=("dla", "fixed"), capacities=st.just(1)))
def test_capacity_one_equals_backbone(case):
    o, state, seg = case.run()
    _, _, _, _, lam, _ = case.inputs()
    assert lam.shape[-1] == 1
    ref, ref_state, _ = case.run(policy="single", lam=lam)
    assert rel_err(o, ref) <= TOL
    assert rel_err(state.slots, ref_state.slots) <= TOL
    assert bool((seg.num_slots == 1).all()) and bool(seg.boundary[:, 1:].logical_not().all())
    assert bool((seg.merged == -1).all())


# ---------------------------------------------------------------- (f) the merged pair is the documented one

def _check_merges(case: Case, seg, state) -> int:
    """Replay the cache from the record; at every merge check the lexicographic (density, index) arg-min.

    Returns the number of merges checked."""
    merges = 0
    for b in range(case.B):
        for h in range(case.H):
            score = seg.score[b, :, h].tolist()
            starts = seg.starts[b, :, h].tolist()
            boundary, merged = seg.boundary[b, :, h].tolist(), seg.merged[b, :, h].tolist()
            assert score[0] == 0.0  # the first token meets an empty cache
            cache = []  # chronological [start, n, I], summed in the state machine's order
            for t in range(case.T):
                if t > 0 and merged[t] >= 0:
                    assert boundary[t] and len(cache) == case.capacity
                    # the cache before the merge, rebuilt from the record of token t - 1 only
                    chrono = [s for s in starts[t - 1] if s != UNUSED_START][::-1]
                    assert chrono == [c[0] for c in cache]
                    n = [e - s for s, e in zip(chrono, chrono[1:] + [t])]
                    info = [sum(score[s:e]) for s, e in zip(chrono, chrono[1:] + [t])]
                    assert n == [c[1] for c in cache]
                    for I_rebuilt, c in zip(info, cache):
                        assert abs(I_rebuilt - c[2]) <= TOL * max(1.0, abs(c[2]))
                    dens = [(cache[i][2] + cache[i + 1][2]) / (cache[i][1] + cache[i + 1][1])
                            for i in range(len(cache) - 1)]
                    best = min(range(len(dens)), key=lambda i: (dens[i], i))
                    assert merged[t] == best, (t, dens, merged[t])
                    # the same choice from the rebuilt sums, up to rounding ties
                    dens_rebuilt = [(info[i] + info[i + 1]) / (n[i] + n[i + 1]) for i in range(len(n) - 1)]
                    assert dens_rebuilt[merged[t]] <= min(dens_rebuilt) + 1e-12 * max(1.0, min(dens_rebuilt))
                    i = merged[t]
                    cache[i] = [cache[i][0], cache[i][1] + cache[i + 1][1], cache[i][2] + cache[i + 1][2]]
                    del cache[i + 1]
                    merges += 1
                if boundary[t]:
                    cache.append([t, 1, score[t]])
                else:
                    cache[-1][1] += 1
                    cache[-1][2] += score[t]
            m = int(state.num_slots[b, h])
            assert m == len(cache)
            assert state.counts[b, h, :m].tolist() == [c[1] for c in cache]
            assert torch.allclose(state.info[b, h, :m], torch.tensor([c[2] for c in cache], dtype=torch.float64),
                                  rtol=TOL, atol=0)
    return merges


@SETTINGS
@given(case=cases(policies=("dla", "fixed"), capacities=st.integers(2, 6), taus=st.floats(0.0, 1.0)))
def test_merge_picks_lowest_density_pair(case):
    _, state, seg = case.run()
    merges = _check_merges(case, seg, state)
    boundaries_past_full = int((seg.merged >= 0).sum())
    assert merges == boundaries_past_full


def test_merge_replay_is_exercised():
    """tau = 0 fills the cache at once: every later token merges, so the replay above checks T - C merges."""
    case = Case(B=1, T=30, G=1, H=2, K=3, V=4, policy="dla", capacity=4, tau=0.0, score="drift", gdn=True,
                decay=0.3, block_size=1, slot_transition="additive", seed=3)
    _, state, seg = case.run()
    assert _check_merges(case, seg, state) == case.H * (case.T - case.capacity)
    assert len(set(seg.merged[0, case.capacity:].flatten().tolist())) > 1  # not always the same pair


def test_merge_ties_go_to_the_smallest_index():
    """Zero writes score exactly 0: with slots [0, a, 0, 0, 0] the pairs (2, 3) and (3, 4) tie at density 0,
    and the lexicographic rule picks 2 (then 2 again: the merged slot still has density 0)."""
    T, K, V, C = 12, 3, 2, 5
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, T, 1, K, generator=gen, dtype=torch.float64)
    k = torch.zeros(1, T, 1, K, dtype=torch.float64)
    k[0, :2, 0] = torch.nn.functional.normalize(torch.randn(2, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(1, T, 1, V, generator=gen, dtype=torch.float64)
    g = torch.zeros(1, T, 1, dtype=torch.float64)
    lam = torch.rand(1, T, 1, C, generator=gen, dtype=torch.float64) + 0.5
    for fn in (naive_dla, lambda *a, **kw: chunk_dla(*a, chunk_size=4, **kw)):
        _, state, seg = fn(q, k, v, g, lam, tau=0.0, capacity=C, score="drift", return_segmentation=True,
                           output_final_state=True)
        assert seg.score[0, 1, 0] > 0 and bool((seg.score[0, 2:, 0] == 0).all())
        assert seg.merged[0, :, 0].tolist() == [-1] * C + [2] * (T - C)
        assert state.counts[0, 0].tolist() == [1, 1, T - 4, 1, 1]


# ---------------------------------------------------------------- (g) counts sum to T

@SETTINGS
@given(case=cases())
def test_counts_sum_to_length(case):
    _, state, seg = case.run()
    m = state.num_slots
    width = state.counts.shape[-1]
    live = torch.arange(width) < m[..., None]
    assert bool((state.counts.sum(-1) == case.T).all())
    assert bool((state.counts[live] >= 1).all()) and bool((state.counts[~live] == 0).all())
    assert bool((state.slots[~live] == 0).all())
    if case.policy in ("dla", "fixed"):
        assert width == case.capacity


# ---------------------------------------------------------------- (h) tau extremes for dla_unbounded

@SETTINGS
@given(case=cases(policies=("dla_unbounded",), taus=st.just(0.0)))
def test_tau_extremes(case):
    _, _, seg = case.run(tau=0.0)
    assert bool((seg.boundary.sum(1) == case.T).all())
    assert bool((seg.num_slots[:, -1] == case.T).all())
    _, state, seg = case.run(tau=1e9)
    assert bool((seg.boundary.sum(1) == 1).all()) and bool(seg.boundary[:, 0].all())
    assert bool((state.num_slots == 1).all())
    # tau = 0 with dla: a boundary at every token too, the cache full from token C - 1 on
    _, _, seg = case.run(tau=0.0, policy="dla")
    if case.capacity >= 2:
        assert bool(seg.boundary.all())
        assert bool((seg.num_slots == torch.arange(1, case.T + 1).clamp_max(case.capacity)[None, :, None]).all())


# ---------------------------------------------------------------- (i) chunk_dla reproduces the slot form

@SETTINGS
@given(case=cases(transitions=("additive",)), chunk_size=st.sampled_from([1, 3, 8, 64]))
def test_chunk_equals_naive(case, chunk_size):
    o, state, seg = case.run()
    q, k, v, g, lam, beta = case.inputs()
    kw = case.kwargs()
    del kw["slot_transition"]
    o_c, state_c, seg_c = chunk_dla(q, k, v, g, lam, beta, return_segmentation=True, output_final_state=True,
                                    chunk_size=chunk_size, **kw)
    for field in ("boundary", "num_slots", "merged", "starts", "lam_index"):
        assert torch.equal(getattr(seg_c, field), getattr(seg, field)), field
    assert rel_err(seg_c.score, seg.score) <= 1e-10
    assert rel_err(o_c, o) <= TOL
    assert torch.equal(state_c.num_slots, state.num_slots) and torch.equal(state_c.counts, state.counts)
    assert rel_err(state_c.slots, state.slots) <= 1e-10
