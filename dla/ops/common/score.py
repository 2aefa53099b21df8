"""Information scores: how much a token's write changes the open slot (``docs/design.md`` section 3, step 4).

Every score is a function of four values: ``x = ||S_open||_F^2`` (after decay, before the write),
``y = <S_open, s_t>_F``, ``z = ||s_t||_F^2`` and ``n = K * V`` (the number of entries of a state). Keeping the
score a function of these scalars is what lets the chunked scan and the kernels compute it without ever
materialising ``S_open + s_t``. Register a new score in :data:`SCORES` to measure alternatives.

Both built-in scores compare weight-free RMS-normalised matrices, ``N(X) = X / sqrt(mean(X^2) + eps_n)``:

- ``drift`` (default, the paper's equation): ``||N(S_open + s_t) - N(S_open)|| / (||N(S_open)|| + eps)``.
- ``write``: ``||N(s_t) - N(S_open)|| / (||N(S_open)|| + eps)``.

The expansions in ``docs/design.md`` define the values; here they are evaluated in a cancellation-free form
(derivation in ``docs/math.md``), the same in every implementation so that near-threshold decisions agree.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

EPS = 1e-6
"""``eps`` of the denominator and ``eps_n`` of the RMS normalisation (``docs/design.md``: both 1e-6)."""

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _norm_gap(p: torch.Tensor, r: torch.Tensor, d2: torch.Tensor, n: int) -> torch.Tensor:
    """``p/rho(p^2) - r/rho(r^2)``-free difference of the normalised norms, ``|N(A)| - |N(B)|``.

    With ``c = n * eps_n``: ``|N(X)| = sqrt(n) * w / sqrt(w^2 + c)`` for ``w = ||X||``, and
    ``f(r) - f(p) = c (r^2 - p^2) / ((r sqrt(p^2+c) + p sqrt(r^2+c)) sqrt(r^2+c) sqrt(p^2+c))``,
    where ``d2 = r^2 - p^2`` is passed exactly (it is a sum of the inputs, not a difference of norms).
    """
    c = n * EPS
    sp, sr = torch.sqrt(p * p + c), torch.sqrt(r * r + c)
    den = (r * sp + p * sr) * sr * sp
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, (n ** 0.5) * c * d2 / safe, torch.zeros_like(den))


def drift_score(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's score: relative change of the normalised open slot caused by the write.

    Args:
        x: ``||S_open||^2`` (any shape, float).  y: ``<S_open, s_t>``.  z: ``||s_t||^2``.  n: ``K * V``.
    Returns:
        ``I_t`` with the shape of ``x``; ``sqrt(2 - 2 cos(angle))`` between the open state before and after
        the write when ``eps_n -> 0``.
    """
    x = x.clamp_min(0)
    a = (x + 2 * y + z).clamp_min(0)  # ||S_open + s_t||^2
    p, r = torch.sqrt(x), torch.sqrt(a)
    rho_x = torch.sqrt(x / n + EPS)
    rho_a = torch.sqrt(a / n + EPS)
    # p r - <S_open, S_open + s_t> = (z - (r - p)^2) / 2, with r - p = (2y + z) / (p + r)
    pr = p + r
    d = torch.where(pr > 0, (2 * y + z) / torch.where(pr > 0, pr, torch.ones_like(pr)), torch.zeros_like(pr))
    angle = (z - d * d) / (rho_a * rho_x)
    gap = _norm_gap(p, r, 2 * y + z, n)
    num = torch.sqrt((gap * gap + angle).clamp_min(0))
    return num / (p / rho_x + EPS)


def write_score(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
    """The second reading: distance of the normalised write from the normalised open slot.

    Args and returns as :func:`drift_score`. ``p w - y`` cancels only when the write is nearly parallel to
    the open slot, where the score is small anyway; three scalars allow no better form.
    """
    x = x.clamp_min(0)
    z = z.clamp_min(0)
    p, w = torch.sqrt(x), torch.sqrt(z)
    rho_x = torch.sqrt(x / n + EPS)
    rho_z = torch.sqrt(z / n + EPS)
    angle = 2 * (p * w - y) / (rho_z * rho_x)
    gap = _norm_gap(p, w, z - x, n)
    num = torch.sqrt((gap * gap + angle).clamp_min(0))
    return num / (p / rho_x + EPS)


SCORES: Dict[str, ScoreFn] = {"drift": drift_score, "write": write_score}
"""Registry of information scores by name; every implementation looks scores up here."""


def expanded_score(kind: str, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
    """The design's literal expansions (``docs/design.md`` 3.3, with cancellation). Used only by tests, in float64."""
    rho = lambda w: torch.sqrt(w / n + EPS)  # noqa: E731
    if kind == "drift":
        a = x + 2 * y + z
        num2 = a / rho(a) ** 2 - 2 * (x + y) / (rho(a) * rho(x)) + x / rho(x) ** 2
    elif kind == "write":
        num2 = z / rho(z) ** 2 - 2 * y / (rho(z) * rho(x)) + x / rho(x) ** 2
    else:
        raise ValueError(f"score: unknown {kind!r}")
    return torch.sqrt(num2.clamp_min(0)) / (torch.sqrt(x) / rho(x) + EPS)
