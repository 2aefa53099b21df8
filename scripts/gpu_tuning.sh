#!/usr/bin/env bash
# The tuning knobs of the backbone, readout and scan kernels, A/B on one GPU, after checking the kernels there.
# Usage (CUDA machine, repo root): bash scripts/gpu_tuning.sh OUT
#   OUT/kernels_*.json   every CUDA kernel of one fwd+bwd (scripts/gpu_kernel_table.py), ll_mamba2 T=16K, C=30,
#                        tau=0.6, bf16: the defaults, then other values of the knobs (the tenth session's run, at
#                        commit 0c7e42f, compared the former defaults: MAX_TILE 32/64, UT_TILE 32/64, 8/4 warps)
#   OUT/scan.json        the scan's phases by state tile and warps (scripts/gpu_scan_phases.py), ll_mamba2 T=16K
#   OUT/tests_*.log      the backbone kernels (every tile knob), the 16-bit-mode readout and backbones against
#                        float64, and chunk_dla's 16-bit-operand cases, one process per backbone
set -uo pipefail
out=${1:?output directory}
. "$(dirname "$0")/gpu_common.sh"
gpu_env "$out"
t() { run_tests "$out/tests_$2.log" "$1" "$2" "${@:3}"; }
k() { kernel_table "$out" 90 "$@"; }
k mamba2
k mamba2_tile32 --max-tile 32
k mamba2_fwd8w --fwd-warps 8
k gdn --gdn
k gdn_ut64_rw8 --gdn --ut-tile 64 --recurrence-warps 8
k mamba2_copies32 --copies16 0
timeout 120 python3 scripts/gpu_scan_phases.py "$out/scan.json" --shape ll_mamba2 --lengths 16384 \
  --precisions tf32x3 --warps 4 8 --tiles default 32x32 32x16 2>&1 | grep -v Warning | cut -c1-240
t 120 backbones tests/ops/dla/test_backbone_triton.py tests/ops/dla/test_backbone_gdn_triton.py
t 70 precision tests/ops/dla/test_precision.py
for gdn in False True; do  # one process per backbone (a fault would spoil the rest)
  CUDA_LAUNCH_BLOCKING=1 t 100 "bf16ops_$gdn" tests/ops/dla/test_cuda.py -k "bf16ops and $gdn"
done
exit 0
