"""Which forms of ``tl.dot(tl.trans(A), Z)`` (and of ``tl.dot(A, Z)``) give right results, where ``A`` is itself a
``tl.dot`` result.

fla traced wrong Hopper gradients on Triton 3.4-3.6 (its issue #640) to a transposed 16-bit tensor-core result
stored to shared memory. Our backward kernels take such products in several places (``dk += dA^T q``,
``du += A^T do``) and untransposed ones (``dv += mask(k q^T) do``). This script times nothing: it checks, for each
operand form, tile shape and warp count, the relative error of ``mask(X Y) Z`` or ``(mask(X Y))^T Z`` against
float64, and prints one table. On an H200 (2026-12-03) every 16-bit form was wrong at chunk 64, 16 output columns,
4 warps, and right elsewhere; the float32 forms were right everywhere (docs/benchmarks.md, tuning decisions).

Forms: ``bf16-plain`` (``A Z``, not transposed), ``bf16-after`` (transpose, then round to bf16), ``bf16-before``
(round, then transpose), ``tf32`` (float32 operands, one TF32 pass: ``prec_dot_tc``'s form), ``tf32x3``.

Usage (CUDA machine, repo root): python scripts/gpu_trans_repro.py OUT.json
"""

import json
import sys
import time

import torch
import triton
import triton.language as tl


@triton.jit
def trans_dot_kernel(x, y, z, out, BT: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, FORM: tl.constexpr):
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_n = tl.arange(0, BN)
    b_x = tl.load(x + o_t[:, None] * BK + o_k[None, :])  # [BT, BK]
    b_y = tl.load(y + o_k[:, None] * BT + o_t[None, :])  # [BK, BT]
    b_z = tl.load(z + o_t[:, None] * BN + o_n[None, :])  # [BT, BN]
    b_A = tl.dot(b_x, b_y, input_precision="tf32x3")  # [BT, BT], tensor-core layout
    b_A = tl.where(o_t[:, None] >= o_t[None, :], b_A * 0.5, 0.)
    if FORM == "bf16-plain":  # not transposed: the backbones' dv / dU kernels
        b_o = tl.dot(b_A.to(tl.bfloat16), b_z.to(tl.bfloat16))
    elif FORM == "bf16-after":
        b_o = tl.dot(tl.trans(b_A).to(tl.bfloat16), b_z.to(tl.bfloat16))
    elif FORM == "bf16-before":
        b_o = tl.dot(tl.trans(b_A.to(tl.bfloat16)), b_z.to(tl.bfloat16))
    elif FORM == "tf32":
        b_o = tl.dot(tl.trans(b_A), b_z, input_precision="tf32")
    else:
        b_o = tl.dot(tl.trans(b_A), b_z, input_precision="tf32x3")
    tl.store(out + o_t[:, None] * BN + o_n[None, :], b_o)


def main(out):
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for form in ("bf16-plain", "bf16-after", "bf16-before", "tf32", "tf32x3"):
        for BT in (16, 32, 64):
            for BK in (32,):
                for BN in (16, 64, 128):
                    for warps in (2, 4, 8):
                        x = torch.randn(BT, BK, device="cuda", generator=gen)
                        y = torch.randn(BK, BT, device="cuda", generator=gen)
                        z = torch.randn(BT, BN, device="cuda", generator=gen)
                        o = torch.full((BT, BN), float("nan"), device="cuda")
                        err = None
                        try:
                            trans_dot_kernel[(1,)](x, y, z, o, BT=BT, BK=BK, BN=BN, FORM=form, num_warps=warps)
                            torch.cuda.synchronize()
                            A = torch.tril(x.double() @ y.double()) * 0.5
                            ref = (A if form == "bf16-plain" else A.T) @ z.double()
                            err = float((o.double() - ref).norm() / ref.norm())
                        except Exception as e:  # noqa: BLE001 - a compile failure is a result here
                            err = f"{type(e).__name__}: {str(e)[:80]}"
                        rows.append(dict(form=form, BT=BT, BK=BK, BN=BN, num_warps=warps, rel_err=err))
    bad = [r for r in rows if not isinstance(r["rel_err"], float) or not r["rel_err"] < 2e-2]
    summary = {}
    for r in rows:
        s = summary.setdefault(r["form"], {"cases": 0, "wrong": 0, "worst": 0.0})
        s["cases"] += 1
        if r in bad:
            s["wrong"] += 1
        elif isinstance(r["rel_err"], float):
            s["worst"] = max(s["worst"], r["rel_err"])
    with open(out, "w") as fh:
        json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                   "date": time.strftime("%F"), "summary": summary, "rows": rows}, fh, indent=1)
    print("| form | cases | wrong (rel err >= 2e-2 or error) | worst right rel err |")
    print("| --- | --- | --- | --- |")
    for f, s in summary.items():
        print(f"| {f} | {s['cases']} | {s['wrong']} | {s['worst']:.1e} |")
    for r in bad[:40]:
        print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1])
