#!/usr/bin/env bash
# GPU session: correctness of every GPU path against the CPU float64 references, then `dla bench ops`.
# Usage (on a CUDA machine, repo root): bash scripts/gpu_check.sh OUT_DIR [bench args...]
# Writes OUT_DIR/env.txt, OUT_DIR/pytest.log and OUT_DIR/ops.{json,md,png}.
set -uo pipefail
out=${1:?output directory}; shift
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } > "$out/env.txt" 2>&1
cat "$out/env.txt"
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python3 -m pytest -q -p no:cacheprovider \
  tests/ops/dla/test_cuda.py tests/ops/dla/test_triton_readout.py tests/ops/dla/test_scan_triton.py 2>&1 | tee "$out/pytest.log" | tail -30
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python3 -m dla.cli bench ops --out "$out/ops.json" "$@" 2>&1 | tail -60
