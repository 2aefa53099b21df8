"""The information scores equal their matrix definitions, and their cancellation-free form holds in float32."""

import pytest
import torch

from dla.ops.common.score import EPS, SCORES, expanded_score


def _rms(X):
    return X / torch.sqrt((X * X).mean() + EPS)


def _definition(kind, S, s):
    target = S + s if kind == "drift" else s
    return torch.linalg.norm(_rms(target) - _rms(S)) / (torch.linalg.norm(_rms(S)) + EPS)


@pytest.mark.parametrize("kind", ["drift", "write"])
@pytest.mark.parametrize("magnitude", [1e-3, 1.0, 1e3])
def test_score_equals_matrix_definition(kind, magnitude):
    gen = torch.Generator().manual_seed(1)
    K, V = 6, 5
    worst = 0.0
    for _ in range(50):
        S = torch.randn(K, V, generator=gen, dtype=torch.float64) * magnitude
        k, u = torch.randn(K, generator=gen, dtype=torch.float64), torch.randn(V, generator=gen, dtype=torch.float64)
        s = torch.outer(k, u)
        x, y, z = (S * S).sum(), (S * s).sum(), (k @ k) * (u @ u)
        got = SCORES[kind](x, y, z, K * V)
        ref = _definition(kind, S, s)
        worst = max(worst, float((got - ref).abs() / ref))
        assert float((expanded_score(kind, x, y, z, K * V) - ref).abs() / ref) < 1e-8
    assert worst < 1e-10, worst


@pytest.mark.parametrize("kind", ["drift", "write"])
def test_score_float32_matches_float64(kind):
    """The rewrite keeps float32 close to float64 where the literal expansion cancels (tiny writes)."""
    gen = torch.Generator().manual_seed(2)
    K, V = 16, 16
    S = torch.randn(200, K, V, generator=gen, dtype=torch.float64)
    k = torch.randn(200, K, generator=gen, dtype=torch.float64)
    u = torch.randn(200, V, generator=gen, dtype=torch.float64) * torch.logspace(-4, 0, 200, dtype=torch.float64)[:, None]
    s = k[:, :, None] * u[:, None, :]
    x, y, z = (S * S).sum((1, 2)), (S * s).sum((1, 2)), (k * k).sum(1) * (u * u).sum(1)
    ref = SCORES[kind](x, y, z, K * V)
    got = SCORES[kind](x.float(), y.float(), z.float(), K * V).double()
    literal = expanded_score(kind, x.float(), y.float(), z.float(), K * V).double()
    err = ((got - ref).abs() / ref).max().item()
    assert err < 1e-4, err
    if kind == "drift":  # the literal expansion loses the small scores entirely in float32
        assert ((literal - ref).abs() / ref).max().item() > 10 * err


def test_score_degenerate_cases():
    zero = torch.zeros((), dtype=torch.float64)
    for fn in SCORES.values():
        assert fn(zero, zero, zero, 12) == 0  # no state, no write
        assert fn(zero, zero, torch.ones((), dtype=torch.float64), 12) > 1e5  # empty open slot: any write is news
        x = torch.tensor(4.0, dtype=torch.float64)
        assert torch.isfinite(fn(x, zero, zero, 12))


def test_drift_is_angle_for_small_eps():
    """For eps_n -> 0 the drift score is sqrt(2 - 2 cos) of the angle before/after the write."""
    gen = torch.Generator().manual_seed(3)
    S = torch.randn(8, 8, generator=gen, dtype=torch.float64) * 100
    s = torch.outer(torch.randn(8, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)) * 50
    x, y, z = (S * S).sum(), (S * s).sum(), (s * s).sum()
    cos = (S * (S + s)).sum() / (S.norm() * (S + s).norm())
    assert abs(float(SCORES["drift"](x, y, z, 64)) - float(torch.sqrt(2 - 2 * cos))) < 1e-6
