#!/usr/bin/env bash
# A refactoring or kernel change checked on one GPU against an older revision: outputs, gradients and decisions
# (scripts/compare_outputs.py), then `dla bench ops` rows timed by both, side by side.
# Usage: on the dev machine, extract the old revision's package into an ignored folder of the repo:
#     mkdir -p .rev/REV && git archive REV dla scripts | tar -x -C .rev/REV
# then on the GPU machine (carry .rev): bash scripts/gpu_compare_revision.sh .rev/REV OUT [dla bench ops args...]
# Writes OUT/{outputs_old,outputs_new}.pt, OUT/compare.txt, OUT/ops_{old,new}.json and prints both tables.
# COMPARE_ARGS: options of compare_outputs.py save (default: CUDA, T = 4096, 16,384 tokens).
set -uo pipefail
old=${1:?folder of the old revision}
out=${2:?output directory}
shift 2
mkdir -p "$out"
here=$(pwd)
read -r -a SAVE_ARGS <<< "${COMPARE_ARGS:-}"  # e.g. COMPARE_ARGS="--device cpu --T 64 --tokens 64"
if [ "${PARTS:-outputs bench}" != bench ]; then  # PARTS: "outputs", "bench" or both (the default)
  PYTHONPATH="$here/$old" python3 scripts/compare_outputs.py save "$out/outputs_old.pt" "${SAVE_ARGS[@]}" \
    > "$out/save_old.log" 2>&1 &
  PYTHONPATH="$here" python3 scripts/compare_outputs.py save "$out/outputs_new.pt" "${SAVE_ARGS[@]}" \
    > "$out/save_new.log" 2>&1 &
  wait
  python3 scripts/compare_outputs.py compare "$out/outputs_old.pt" "$out/outputs_new.pt" > "$out/compare.txt"
  tail -2 "$out/compare.txt"
fi
if [ $# -gt 0 ] && [ "${PARTS:-outputs bench}" != outputs ]; then
  (cd "$old" && python3 -m dla.cli bench ops --out "$here/$out/ops_old.json" "$@") 2>&1 | grep -v Warning | tail -12
  python3 -m dla.cli bench ops --out "$out/ops_new.json" "$@" 2>&1 | grep -v Warning | tail -12
fi
