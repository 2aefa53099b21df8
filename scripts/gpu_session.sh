#!/usr/bin/env bash
# One GPU session's checks and timings (each part under its own time limit; results under OUT).
# Usage (CUDA machine, repo root): bash scripts/gpu_session.sh OUT [PART...]
# Parts (default: all but ncu, in this order):
#   quick      OUT/quick.json: scripts/gpu_quick_check.py (chunk_dla vs float64 in float32 and bf16 operands, at
#              two shapes; then fwd+bwd time and peak memory at the bench shape)
#   tests      OUT/tests.log: every Triton kernel against its PyTorch reference, and chunk_dla on the GPU against
#              the float64 CPU references (outputs and every gradient; Triton 3.6 has miscompiled gated
#              backward kernels on Hopper before); then bf16 operands, one process per backbone
#              (OUT/tests_bf16ops_{False,True}.log)
#   scan       OUT/scan_phases.json: the scan's phases by warps per program (scripts/gpu_scan_phases.py)
#   profile    OUT/profile.json: chunk_dla's stages at T=4096 (scripts/gpu_profile.py)
#   kernels    OUT/kernels_{mamba2,gdn}.json: every CUDA kernel of one fwd+bwd, ll_mamba2 T=16K
#              (scripts/gpu_kernel_table.py)
#   ncu        OUT/ncu_*: warp-stall samples per source line of the readout kernels, ll_mamba2 T=4K
#              (scripts/gpu_ncu_source.sh; summarise with scripts/ncu_lines.py); not in the default list
#   ops        OUT/ops.{json,md,png}: dla bench ops, DLA at C=30 and the peers, T = 16K and 4K, shape h16
#              (a fresh machine spends about 2 minutes autotuning each fla op)
#   decode     OUT/decode.{json,md,png}: dla bench decode, contexts 1K, 16K, 128K, batch 1 and 64
#   generate   OUT/generate.{json,md}: dla bench generate, 125M models, 1K, 16K, 64K prompts + 256 tokens
# Time limits per part (seconds): T_QUICK, T_TESTS, T_BF16, T_SCAN, T_PROFILE, T_KERNELS, T_NCU, T_OPS, T_DEC,
# T_GEN.
set -uo pipefail
out=${1:?output directory}
shift
parts=${*:-quick tests scan profile kernels ops decode generate}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
  > "$out/env.txt" 2>&1
cat "$out/env.txt"
for part in $parts; do
  echo "== $part"
  case $part in
    quick)
      timeout "${T_QUICK:-150}" python3 scripts/gpu_quick_check.py "$out/quick.json" > "$out/quick.log" 2>&1
      python3 -c "import json, sys; [print({k: v for k, v in r.items() if k != 'grads'}) for r in
        json.load(open(sys.argv[1]))['rows']]" "$out/quick.json" ;;
    tests)
      timeout "${T_TESTS:-240}" python3 -m pytest -q -p no:cacheprovider --tb=short \
        tests/ops/dla/test_backbone_triton.py tests/ops/dla/test_backbone_gdn_triton.py \
        tests/ops/dla/test_readout_bwd.py tests/ops/dla/test_triton_readout.py tests/ops/dla/test_precision.py \
        tests/ops/dla/test_step_triton.py \
        "tests/ops/dla/test_scan_triton.py::test_matches_reference_float32" tests/ops/dla/test_cuda.py \
        -k "not bf16ops" > "$out/tests.log" 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -15
      for gdn in False True; do  # 16-bit operands, one process per backbone (a fault would spoil the rest)
        CUDA_LAUNCH_BLOCKING=1 timeout "${T_BF16:-120}" python3 -m pytest -q -p no:cacheprovider --tb=short \
          tests/ops/dla/test_cuda.py -k "bf16ops and $gdn" > "$out/tests_bf16ops_$gdn.log" 2>&1
        grep -E "^(FAILED|ERROR)|passed|failed|rror" "$out/tests_bf16ops_$gdn.log" | tail -8
      done ;;
    scan)
      timeout "${T_SCAN:-90}" python3 scripts/gpu_scan_phases.py "$out/scan_phases.json" --lengths 4096 \
        --warps 1 2 4 --precisions tf32x3 2>&1 | grep -v Warning | tail -5 ;;
    profile)
      timeout "${T_PROFILE:-200}" python3 scripts/gpu_profile.py "$out/profile.json" --lengths 4096 --warps 4 \
        --precisions tf32x3 --op-precisions tf32x3 bf16 --budget 0.3 2>&1 | grep "^|" ;;
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
