#!/usr/bin/env bash
# One GPU session's checks and timings, each part under its own time limit; results under OUT.
# Usage (CUDA machine, repo root): bash scripts/gpu_session.sh OUT [PART...]
# Parts (default: all but ncu, in this order):
#   tests      OUT/tests.log: every Triton kernel against its PyTorch reference, and chunk_dla on the GPU against
#              the float64 CPU references (outputs and every gradient; Triton 3.6 has miscompiled gated
#              backward kernels on Hopper before); then bf16 operands, one process per backbone
#              (OUT/tests_bf16ops_{False,True}.log)
#   kernels    OUT/kernels_{mamba2,gdn}.json: every CUDA kernel of one fwd+bwd, ll_mamba2 T=16K
#              (scripts/gpu_kernel_table.py)
#   ncu        OUT/ncu_*: warp-stall samples per source line of the readout kernels, ll_mamba2 T=4K
#              (scripts/gpu_ncu_source.sh; summarise with scripts/ncu_lines.py); not in the default list
#   ops        OUT/ops.{json,md,png}: dla bench ops, DLA at C=30 and the peers, T = 16K and 4K, shape h16
#              (a fresh machine spends about 2 minutes autotuning each fla op)
#   decode     OUT/decode.{json,md,png}: dla bench decode, contexts 1K, 16K, 128K, batch 1 and 64
#   generate   OUT/generate.{json,md}: dla bench generate, 125M models, 1K, 16K, 64K prompts + 256 tokens
# Time limits per part (seconds): T_TESTS, T_BF16, T_KERNELS, T_NCU, T_OPS, T_DEC, T_GEN.
set -uo pipefail
out=${1:?output directory}
shift
parts=${*:-tests kernels ops decode generate}
. "$(dirname "$0")/gpu_common.sh"
gpu_env "$out"
for part in $parts; do
  echo "== $part"
  case $part in
    tests)
      timeout "${T_TESTS:-240}" python3 -m pytest -q -p no:cacheprovider --tb=short \
        tests/ops/triton/test_backbone_mamba2.py tests/ops/triton/test_backbone_gdn.py \
        tests/ops/triton/test_readout_bwd.py tests/ops/triton/test_readout_fwd.py tests/ops/triton/test_precision.py \
        tests/ops/triton/test_step.py tests/ops/triton/test_layout.py tests/ops/triton/test_readout_plan.py \
        "tests/ops/triton/test_scan.py::test_matches_reference_float32" tests/ops/triton/test_cuda.py \
        -k "not bf16ops" > "$out/tests.log" 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -15
      for gdn in False True; do  # 16-bit operands, one process per backbone (a fault would spoil the rest)
        CUDA_LAUNCH_BLOCKING=1 timeout "${T_BF16:-120}" python3 -m pytest -q -p no:cacheprovider --tb=short \
          tests/ops/triton/test_cuda.py -k "bf16ops and $gdn" > "$out/tests_bf16ops_$gdn.log" 2>&1
        grep -E "^(FAILED|ERROR)|passed|failed|rror" "$out/tests_bf16ops_$gdn.log" | tail -8
      done ;;
    kernels)
      for bb in mamba2 gdn; do
        timeout "${T_KERNELS:-150}" python3 scripts/gpu_kernel_table.py "$out/kernels_$bb.json" \
          $([ $bb = gdn ] && echo --gdn) 2>&1 | grep -E "kernel_ms_total|readout|scan" | cut -c1-120
      done ;;
    ncu)
      timeout "${T_NCU:-300}" bash scripts/gpu_ncu_source.sh "$out" \
        'readout_fwd_kernel|readout_bwd_dq_kernel|readout_bwd_key_kernel' --T 4096 --tokens 16384 ;;
    ops)
      timeout "${T_OPS:-500}" python3 -m dla.cli bench ops --out "$out/ops.json" --lengths 16384 4096 --shapes h16 \
        --capacities 30 --taus 0.6 0 --budget 0.25 --max-call-s 5 \
        --ops 'dla_*' 'single_*' 'fenwick_*' 'fla_*' sdpa_flash 2>&1 | grep -v Warning | tail -25 ;;
    decode)
      timeout "${T_DEC:-150}" python3 -m dla.cli bench decode --out "$out/decode.json" --contexts 1024 16384 131072 \
        --batches 1 64 2>&1 | grep -v Warning | tail -25 ;;
    generate)
      timeout "${T_GEN:-300}" python3 -m dla.cli bench generate --out "$out/generate.json" \
        --lengths 1024 16384 65536 --new-tokens 256 --max-call-s 60 2>&1 | grep -v Warning | tail -30 ;;
    *) echo "unknown part $part" ;;
  esac
done
exit 0
