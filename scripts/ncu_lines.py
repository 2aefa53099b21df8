"""The source lines of a Triton kernel where its warps stall most, from ``scripts/gpu_ncu_source.sh``'s CSV.

Usage (any machine): python scripts/ncu_lines.py OUT/ncu_source_<kernel>.csv [--top 20]

Prints, per Python source line (the kernel's own lines and the Triton library lines it inlines), the share of the
kernel's warp-stall samples, the warp-level instructions executed there and the three largest stall reasons, sorted
by samples: the first lines are where the kernel's time goes.
"""

from __future__ import annotations

import argparse
import csv


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    header, fname, lines = None, "?", []
    with open(args.csv, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "File Path":
                fname = row[1].rsplit("/", 1)[-1]
            elif row[0] == "Line No":
                header = row
            elif header and row[0].isdigit():
                num = lambda i: int(row[i]) if row[i].isdigit() else 0  # noqa: E731
                stalls = sorted(((num(i), name) for i, name in enumerate(header)
                                 if name.startswith("stall_") and "Not Issued" not in name), reverse=True)
                lines.append((num(4), num(7), f"{fname}:{row[0]}", row[1].strip(), stalls[:3]))
    if header is None:
        raise SystemExit(f"{args.csv}: no source table (expected ncu --page source --csv output)")
    samples = sum(x[0] for x in lines) or 1
    instr = sum(x[1] for x in lines)
    print(f"{args.csv}: {samples} stall samples, {instr:.3g} warp instructions")
    print(f"{'samples':>8} {'instr':>9}  line  source  | top stall reasons")
    for s, n, where, src, stalls in sorted(lines, key=lambda x: -x[0])[:args.top]:
        why = ", ".join(f"{name[6:]} {100 * v / max(s, 1):.0f}%" for v, name in stalls if v)
        print(f"{100 * s / samples:7.1f}% {n:9.3g}  {where}  {src[:90]}  | {why}")


if __name__ == "__main__":
    main()
