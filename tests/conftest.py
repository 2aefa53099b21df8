"""Shared test helpers: seeded random DLA inputs and a relative-error measure."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # without a GPU, kernels run on CPU under the interpreter


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (absolute error when ``b`` is zero), in float64 on ``b``'s device."""
    b = b.detach().double()
    a = a.detach().double().to(b.device)
    den = b.norm()
    return float((a - b).norm() / den) if den > 0 else float((a - b).norm())


def make_inputs(B=2, T=37, H=4, G=2, K=4, V=5, R=4, gdn=False, decay=0.3, dtype=torch.float64, seed=0,
                requires_grad=False):
    """Random DLA inputs; keys L2-normalised (as the models do), positive lam around 1."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, G, K, generator=gen, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(B, T, G, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype) * decay
    lam = torch.rand(B, T, H, R, generator=gen, dtype=dtype) + 0.5
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype) if gdn else None
    out = dict(q=q, k=k, v=v, g=g, lam=lam, beta=beta)
    if requires_grad:
        for x in out.values():
            if x is not None:
                x.requires_grad_(True)
    return out


@pytest.fixture
def inputs():
    return make_inputs


_WORST = {}


@pytest.fixture
def nan_empty(monkeypatch):
    """Floating ``torch.empty`` / ``Tensor.new_empty`` / ``torch.empty_like`` come back NaN (fla's conftest does the
    same), so that an output a kernel leaves unwritten shows in the comparison."""
    empty, new_empty, empty_like = torch.empty, torch.Tensor.new_empty, torch.empty_like

    def poison(out):
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **kw: poison(new_empty(self, *a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


@pytest.fixture
def record():
    """``record(check, err)``: keep the largest error each named check saw; printed at the end of the run."""
    def _record(check: str, err: float) -> float:
        _WORST[check] = max(_WORST.get(check, 0.0), err)
        return err
    return _record


def pytest_terminal_summary(terminalreporter):
    if _WORST:
        terminalreporter.section("largest relative error per check")
        for check in sorted(_WORST):
            terminalreporter.write_line(f"{check:<60s} {_WORST[check]:.1e}")
