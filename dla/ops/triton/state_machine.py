"""The state machine's scalar rules as Triton device functions, shared by the segmentation scan
(:mod:`dla.ops.triton.segmentation`) and the decode step (:mod:`dla.ops.triton.decode`): the information score, the merge
choice and the slot bookkeeping in registers, the ``lam`` index rule. Each computes what its PyTorch counterpart in
:mod:`dla.ops.common` computes, operation for operation, so that decisions agree near the threshold.

The slot bookkeeping is three register vectors of ``MB`` entries (start, count, information sum) in chronological
order; registers cannot be indexed, so reading entry ``j`` is a reduction (:func:`entry`) and a merge moves the
entries above it down by one with ``tl.gather`` (:func:`merge_at`).
"""

import triton
import triton.language as tl

from dla.ops.common.policy import POLICIES
from dla.ops.common.state import UNUSED_START

UNUSED = tl.constexpr(UNUSED_START)
POLICY_ID = {name: i for i, name in enumerate(POLICIES)}
"""The ``POLICY`` constexpr of the kernels: single, fenwick, fixed, dla_unbounded, dla -> 0 .. 4."""
SINGLE = tl.constexpr(POLICY_ID["single"])
FENWICK = tl.constexpr(POLICY_ID["fenwick"])
FIXED = tl.constexpr(POLICY_ID["fixed"])
UNBOUNDED = tl.constexpr(POLICY_ID["dla_unbounded"])
DLA = tl.constexpr(POLICY_ID["dla"])


@triton.jit
def score(x, y, z, n, eps, c_n, sqrt_n_c, USE_DRIFT: tl.constexpr, USE_RN: tl.constexpr):
    """The PyTorch scores (:mod:`dla.ops.common.score`), operation for operation, with ``v = S_open + s_t`` (drift)
    or ``v = s_t`` (write): ``w2 = ||v||^2``, ``d2 = w2 - x`` passed exactly. USE_RN: IEEE-rounded sqrt and
    division (float32 on NVIDIA: plain sqrt and / are approximate there; float64 is always rounded)."""
    x = tl.maximum(x, 0.0)
    if USE_DRIFT:
        w2 = tl.maximum(x + 2 * y + z, 0.0)
        d2 = 2 * y + z
    else:
        w2 = tl.maximum(z, 0.0)
        d2 = w2 - x
    p = tl.sqrt_rn(x) if USE_RN else tl.sqrt(x)
    w = tl.sqrt_rn(w2) if USE_RN else tl.sqrt(w2)
    rho_x = tl.sqrt_rn(tl.div_rn(x, n) + eps) if USE_RN else tl.sqrt(x / n + eps)
    rho_w = tl.sqrt_rn(tl.div_rn(w2, n) + eps) if USE_RN else tl.sqrt(w2 / n + eps)
    if USE_DRIFT:
        # p w - <S_open, v> = (z - (w - p)^2) / 2 with w - p = (2y + z) / (p + w)
        pw = tl.where(p + w > 0, p + w, 1.0)
        d = tl.where(p + w > 0, tl.div_rn(d2, pw) if USE_RN else d2 / pw, 0.0)
        angle = tl.div_rn(z - d * d, rho_w * rho_x) if USE_RN else (z - d * d) / (rho_w * rho_x)
    else:
        angle = tl.div_rn(2 * (p * w - y), rho_w * rho_x) if USE_RN else 2 * (p * w - y) / (rho_w * rho_x)
    # |N(v)| - |N(S_open)| without cancellation (as the PyTorch score)
    sp = tl.sqrt_rn(p * p + c_n) if USE_RN else tl.sqrt(p * p + c_n)
    sw = tl.sqrt_rn(w * w + c_n) if USE_RN else tl.sqrt(w * w + c_n)
    den = (w * sp + p * sw) * sw * sp
    safe = tl.where(den > 0, den, 1.0)
    gap = tl.where(den > 0, tl.div_rn(sqrt_n_c * d2, safe) if USE_RN else sqrt_n_c * d2 / safe, 0.0)
    num = tl.sqrt_rn(tl.maximum(gap * gap + angle, 0.0)) if USE_RN else tl.sqrt(tl.maximum(gap * gap + angle, 0.0))
    return tl.div_rn(num, tl.div_rn(p, rho_x) + eps) if USE_RN else num / (p / rho_x + eps)


@triton.jit
def entry(x, o_r, j):
    """Entry ``j`` of a register vector (a reduction: registers cannot be indexed)."""
    return tl.sum(tl.where(o_r == j, x, 0), 0)


@triton.jit
def merge_at(b_pos, b_cnt, b_info, i, m, o_r, MB: tl.constexpr):
    """Merge the chronological pair ``(i, i + 1)`` into ``i`` (older start, summed count and information); the
    slots above move down by one and the freed top entry ``m - 1`` is cleared."""
    nxt = tl.minimum(o_r + 1, MB - 1)
    n_pos = tl.gather(b_pos, nxt, 0)
    n_cnt = tl.gather(b_cnt, nxt, 0)
    n_info = tl.gather(b_info, nxt, 0)
    b_pos = tl.where(o_r <= i, b_pos, n_pos)
    b_cnt = tl.where(o_r < i, b_cnt, tl.where(o_r == i, b_cnt + n_cnt, n_cnt))
    b_info = tl.where(o_r < i, b_info, tl.where(o_r == i, b_info + n_info, n_info))
    m_top = o_r >= m - 1
    return tl.where(m_top, UNUSED, b_pos), tl.where(m_top, 0, b_cnt), tl.where(m_top, 0.0, b_info)


@triton.jit
def pick_pair(b_cnt, b_info, m, o_r, MB: tl.constexpr, USE_RN: tl.constexpr):
    """The chronological pair ``(i, i + 1)`` of lowest density ``(I_i + I_{i+1}) / (n_i + n_{i+1})``, ties to
    the smallest ``i`` (lexicographic (density, index), as :func:`dla.ops.common.merge.pick_merge`)."""
    nxt = tl.minimum(o_r + 1, MB - 1)
    m_valid = o_r < m - 1
    b_n = tl.where(m_valid, b_cnt + tl.gather(b_cnt, nxt, 0), 1).to(b_info.dtype)
    b_i = b_info + tl.gather(b_info, nxt, 0)
    b_dens = tl.div_rn(b_i, b_n) if USE_RN else b_i / b_n
    b_dens = tl.where(m_valid, b_dens, float("inf"))
    return tl.min(tl.where(m_valid & (b_dens == tl.min(b_dens, 0)), o_r, MB), 0)


@triton.jit
def lam_index(b_cnt, b_rank, capacity, POLICY: tl.constexpr, NBITS: tl.constexpr):
    """The ``lam`` entry each slot is read with, from its recency rank (and, for ``fenwick``, its count)."""
    if POLICY == FENWICK:
        # level of a closed slot: bit_length(count)
        b_lvl = tl.zeros_like(b_cnt)
        for i_b in tl.static_range(NBITS):
            b_lvl += ((b_cnt >> i_b) > 0).to(b_cnt.dtype)
        return tl.where(b_rank == 0, 0, b_lvl)
    elif POLICY == UNBOUNDED:
        return tl.minimum(b_rank, capacity - 1)
    elif POLICY == SINGLE:
        return b_rank * 0
    else:
        return b_rank


@triton.jit
def ranks(m, o_r, MB: tl.constexpr):
    """Recency rank of each register entry: entry ``p`` holds the chronological slot ``j = m - 1 - rank``
    (``j == p`` while ``m <= MB``; a ring ``j % MB == p`` for ``dla_unbounded``). Live: ``rank < m``."""
    d = (m - 1 - o_r) % MB  # sign conventions of % differ between the GPU and the interpreter: fold twice
    return (d + MB) % MB
