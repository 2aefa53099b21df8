#!/usr/bin/env bash
# One GPU session's checks and timings in one call (each part under its own time limit; results under OUT).
# Usage (CUDA machine, repo root): bash scripts/gpu_session.sh OUT
#   OUT/env.txt               GPU, driver, torch, Triton, date
#   OUT/tests.log             the Triton scan (float32 cases) and the Triton decode step vs their PyTorch references
#   OUT/scan_phases.json      the scan's phases by warps and dot precision (scripts/gpu_scan_phases.py)
#   OUT/ops.json              dla bench ops rows (DLA, ours, peers) at T=4096, shape h16
#   OUT/generate.json         dla bench generate, 125M DLA-GDN vs GDN, 1K prompt (Triton decode step in a model)
set -uo pipefail
out=${1:?output directory}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
  > "$out/env.txt" 2>&1
cat "$out/env.txt"
timeout "${T_TESTS:-130}" python3 -m pytest -q -p no:cacheprovider tests/ops/dla/test_step_triton.py \
  "tests/ops/dla/test_scan_triton.py::test_matches_reference_float32" > "$out/tests.log" 2>&1
tail -3 "$out/tests.log"
timeout "${T_SCAN:-100}" python3 scripts/gpu_scan_phases.py "$out/scan_phases.json" --lengths 4096 \
  --warps 4 8 --precisions tf32x3 ieee 2>&1 | grep -v Warning
timeout "${T_OPS:-170}" python3 -m dla.cli bench ops --out "$out/ops.json" --lengths 4096 --shapes h16 \
  --capacities 30 --taus 0.6 --budget 0.3 --max-call-s 5 2>&1 | grep -v Warning | tail -20
timeout "${T_GEN:-60}" python3 -m dla.cli bench generate --out "$out/generate.json" --lengths 1024 --new-tokens 32 \
  --models dla single 2>&1 | grep -v Warning | tail -8
exit 0
