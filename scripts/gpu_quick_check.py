"""A short GPU check: chunk_dla (Triton, float32 inputs) against the PyTorch form in float64 for the policies and
backbones, at K = V = 128 and at K = 32, V = 16, with the default products and with bf16 operands (outputs and every
gradient), then DLA-Mamba-2's fwd+bwd peak memory and time at the bench shape.

Usage (CUDA machine, repo root): python scripts/gpu_quick_check.py OUT.json
"""

import json
import sys
import time

import torch

from dla.ops import chunk_dla, num_levels
from tests.conftest import make_inputs, rel_err


def main(out):
    rows = []

    def add(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)
        with open(out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%F"),
                       "rows": rows}, f, indent=1)

    cases = [(gdn, pol, prec, K, V) for prec in (None, "bf16") for K, V in ((128, 128), (32, 16))
             for gdn in (False, True) for pol in ("dla", "fenwick", "single")]
    for gdn, policy, prec, K, V in cases:  # bf16 operands last: a fault there stops the rest
        T = 200
        R = num_levels(T) if policy == "fenwick" else 8
        x = make_inputs(B=2, T=T, H=4, G=2, K=K, V=V, R=R, gdn=gdn, seed=3)
        kw = dict(policy=policy, capacity=R, tau=0.5, block_size=16, precision=prec)
        ref_in = {n: (t.cuda().requires_grad_() if t is not None else None) for n, t in x.items()}
        got_in = {n: (t.cuda().float().requires_grad_() if t is not None else None) for n, t in x.items()}
        o_ref = chunk_dla(**ref_in, **{**kw, "precision": None}, backend="torch")[0]
        o = chunk_dla(**got_in, **kw, backend="triton")[0]
        w = torch.randn_like(o_ref)
        names = [n for n in x if x[n] is not None]
        g_ref = torch.autograd.grad((o_ref * w).sum(), [ref_in[n] for n in names])
        g = torch.autograd.grad((o.double() * w).sum(), [got_in[n] for n in names])
        errs = {f"d{n}": rel_err(a.double(), b) for n, a, b in zip(names, g, g_ref)}
        add(check="triton float32 inputs vs torch float64", precision=prec or "auto", K=K, V=V, gdn=gdn,
            policy=policy, output=rel_err(o.double(), o_ref), worst_grad=max(errs.values()), grads=errs)
    B, T, H, K, V, C = 16, 4096, 16, 128, 128, 30
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = dict(q=torch.randn(B, T, H, K, device="cuda", generator=gen).bfloat16(),
              k=torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda", generator=gen), dim=-1).bfloat16(),
              v=torch.randn(B, T, H, V, device="cuda", generator=gen).bfloat16(),
              g=torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda", generator=gen) + 4),
              lam=(torch.rand(B, T, H, C, device="cuda", generator=gen) + 0.5).bfloat16())
    xs = {n: t.requires_grad_() for n, t in xs.items()}
    for prec in ("tf32x3", "bf16"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            o = chunk_dla(**xs, policy="dla", capacity=C, tau=0.6, scale=1.0, precision=prec)[0]
            o.backward(torch.ones_like(o))
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        add(check="DLA-Mamba-2 fwd+bwd, T=4096, B=16, h16, C=30, tau=0.6", precision=prec,
            ms=sorted(times)[1], peak_mib=(torch.cuda.max_memory_allocated() - base) / 2 ** 20)


if __name__ == "__main__":
    main(sys.argv[1])
