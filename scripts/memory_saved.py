"""What chunk_dla keeps for its backward: every tensor saved by autograd, by shape and dtype, in bytes per
token x head (the GPU's peak also holds the transient buffers of the backward; this is the part that scales).

Usage: python scripts/memory_saved.py [--backend triton] [--T 256] [--K 128] [--V 128] [--capacity 30] [--gdn]
CPU: add TRITON_INTERPRET=1 for the Triton backend (its saved tensors are those of the GPU path).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from dla.ops import chunk_dla, num_levels


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="torch", choices=["torch", "triton"])
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--V", type=int, default=128)
    ap.add_argument("--capacity", type=int, default=30)
    ap.add_argument("--policy", default="dla")
    ap.add_argument("--gdn", action="store_true")
    args = ap.parse_args(argv)
    B, T, H, K, V = args.B, args.T, args.H, args.K, args.V
    R = num_levels(T) if args.policy == "fenwick" else args.capacity
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    x = dict(q=torch.randn(B, T, H, K, generator=gen), k=torch.nn.functional.normalize(torch.randn(B, T, H, K,
             generator=gen), dim=-1), v=torch.randn(B, T, H, V, generator=gen),
             g=torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=gen) + 4),
             lam=torch.rand(B, T, H, R, generator=gen) + 0.5,
             beta=torch.rand(B, T, H, generator=gen) if args.gdn else None)
    x = {n: (t.to(dev).requires_grad_(True) if t is not None else None) for n, t in x.items()}
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), tuple(t.shape), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o = chunk_dla(**x, policy=args.policy, capacity=R, tau=0.6, backend=args.backend)[0]
    inputs = {t.untyped_storage().data_ptr() for t in x.values() if t is not None}
    first = {}  # storage -> (bytes, shape and dtype of the first view saved)
    for (ptr, shape, dtype), nbytes in saved.items():
        if ptr not in inputs:
            first.setdefault(ptr, (nbytes, shape, str(dtype).replace("torch.", "")))
    groups = defaultdict(lambda: [0, 0])
    for nbytes, shape, dtype in first.values():
        groups[(shape, dtype)][0] += nbytes
        groups[(shape, dtype)][1] += 1
    per = B * T * H
    print(f"chunk_dla {args.policy} C={R} backend={args.backend} {'GDN' if args.gdn else 'Mamba-2'} "
          f"B={B} T={T} H={H} K={K} V={V}: saved for backward (inputs excluded), bytes per token x head")
    print("| shape (first view) | dtype | tensors | bytes / token x head |\n| --- | --- | --- | --- |")
    for (shape, dtype), (nbytes, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"| {list(shape)} | {dtype} | {n} | {nbytes / per:,.0f} |")
    total = sum(nbytes for nbytes, _, _ in first.values())
    print(f"\ntotal (distinct storages): {total / per:,.0f} bytes per token x head; "
          f"the inputs q, k, v in bf16: {2 * (2 * K + V):,} bytes; o in bf16: {2 * V:,} bytes")
    del o


if __name__ == "__main__":
    main()
