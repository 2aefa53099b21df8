#!/usr/bin/env bash
# Grouped q, k (readout_fwd.GROUPED_QK, scan_triton.GROUPED_KEYS) and the readout's dq-kernel variants, A/B on one
# GPU, then their GPU tests.
# Usage (CUDA machine, repo root): bash scripts/gpu_readout_ab.sh OUT
#   OUT/kernels_*.json   every CUDA kernel of one fwd+bwd (scripts/gpu_kernel_table.py), ll_mamba2 T=16K, C=30,
#                        tau=0.6, bf16, both backbones, grouped q, k (readout and scan) on (the default) and off
#   OUT/dq_variants.json the readout backward alone in other configurations (scripts/gpu_dq_variants.py)
#   OUT/tests.log        the readout backward (grouped q, k included), the 16-bit-mode readout against float64,
#                        the scan with grouped keys, chunk_dla's 16-bit-operand cases (one process per backbone)
set -uo pipefail
out=${1:?output directory}
. "$(dirname "$0")/gpu_common.sh"
gpu_env "$out"
k() { kernel_table "$out" 120 "$@"; }
k mamba2
k mamba2_perhead --grouped-qk 0
k gdn --gdn
k gdn_perhead --gdn --grouped-qk 0
timeout 150 python3 scripts/gpu_dq_variants.py "$out/dq_variants.json" 2>&1 | grep -v -i warn
t() { echo "== $1: ${*:3}" >> "$out/tests.log"; run_tests "$out/tests.log" "$2" "$1" "${@:3}"; }
t readout_bwd 300 tests/ops/dla/test_readout_bwd.py  # about 4 min on a fresh machine (compiles)
t precision 80 tests/ops/dla/test_precision.py -k readout_low
t scan 120 tests/ops/dla/test_scan_triton.py -k "grouped or float32"
for gdn in False True; do  # one process per backbone (a fault would spoil the rest)
  CUDA_LAUNCH_BLOCKING=1 t "bf16ops_$gdn" 100 tests/ops/dla/test_cuda.py -k "bf16ops and $gdn"
done
exit 0
