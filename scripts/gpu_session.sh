#!/usr/bin/env bash
# One GPU session's checks and timings, each part under its own time limit; results under OUT.
# Usage (CUDA machine, repo root): bash scripts/gpu_session.sh OUT [PART...]
# Parts (default: all but ncu, in this order):
#   fla        OUT/tests_fla.log: DLA's fla-compatible layers inside fla's models on the GPU (needs fla: wheels in
#              .whl/ are installed into a temporary directory first, nothing into the machine's Python)
#   tests      OUT/tests_*.log: every Triton kernel against its PyTorch reference, and chunk_dla on the GPU against
#              the float64 CPU references (outputs and every gradient; Triton 3.6 has miscompiled gated
#              backward kernels on Hopper before), one process per file (and per policy for the latter), in
#              parallel; then bf16 operands, one process per backbone (OUT/bf16ops_{False,True}.log)
#   kernels    OUT/kernels_{mamba2,gdn}.json: every CUDA kernel of one fwd+bwd, ll_mamba2 T=16K
#              (scripts/gpu_kernel_table.py)
#   ncu        OUT/ncu_*: warp-stall samples per source line of the readout kernels, ll_mamba2 T=4K
#              (scripts/gpu_ncu_source.sh; summarise with scripts/ncu_lines.py); not in the default list
#   ops        OUT/ops.{json,md,png}: dla bench ops, DLA at C=30 and the peers, T = 16K and 4K, shape h16
#              (a fresh machine spends about 2 minutes autotuning each fla op)
#   decode     OUT/decode.{json,md,png}: dla bench decode, contexts 1K, 16K, 128K, batch 1 and 64
#   generate   OUT/generate.{json,md}: dla bench generate, 125M models, 1K, 16K, 64K prompts + 256 tokens
#   dq         OUT/dq/dq_kernels.{json,log}: the readout backward's two dq forms side by side, both shapes, T = 16K
#              (scripts/gpu_dq_kernels.py; the GPU alone); not in the default list
#   profile    OUT/profile/: one training step of capacity cells (Transformer, Mamba-2, DLA-Mamba-2, DLA-GDN at
#              T = 256, 64 pairs) and of the Transformer and Mamba-2 language models (needs runs/books/tokens):
#              times, peak memory and torch.profiler's operators (scripts/gpu_lm.py profile); OUT/profile_compiled/
#              the cells with the blocks compiled (train.compile); not in the default list
# Time limits per part (seconds): T_FLA, T_TESTS, T_BF16, T_KERNELS, T_NCU, T_OPS, T_DEC, T_GEN, T_DQ, T_PROF, T_PROFC.
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
      # one pytest process per file, all at once (Triton's compiles and the CPU references run in parallel on the
      # machine's cores; the GPU has room for all), then the bf16-operand cases, one process per backbone
      pids=()
      for f in tests/ops/triton/test_backbone_mamba2.py tests/ops/triton/test_backbone_gdn.py \
               tests/ops/triton/test_readout_bwd.py tests/ops/triton/test_readout_fwd.py \
               tests/ops/triton/test_precision.py tests/ops/triton/test_step.py tests/ops/triton/test_layout.py \
               tests/ops/triton/test_readout_plan.py tests/ops/triton/test_scan.py tests/ops/test_saved.py \
               tests/ops/common/test_boundary_grad.py; do
        log="$out/tests_$(basename "$f" .py).log"
        timeout "${T_TESTS:-400}" python3 -m pytest -q -p no:cacheprovider --tb=short "$f" > "$log" 2>&1 &
        pids+=($!)
      done
      # the GPU against the float64 CPU references, one process per policy and one for the benchmarks' head dims
      for part in "dla:dla and not dla_unbounded" fenwick:fenwick single:single fixed:fixed \
                  dla_unbounded:dla_unbounded "head_dims:head_dims"; do
        log="$out/tests_cuda_${part%%:*}.log"
        timeout "${T_TESTS:-400}" python3 -m pytest -q -p no:cacheprovider --tb=short tests/ops/triton/test_cuda.py \
          -k "not bf16ops and (${part#*:})" > "$log" 2>&1 &
        pids+=($!)
      done
      wait "${pids[@]}"
      for log in "$out"/tests_*.log; do
        echo "$(basename "$log"): $(grep -E '^(FAILED|ERROR)|passed|failed' "$log" | tail -3 | tr '\n' ' ')"
      done
      for gdn in False True; do  # 16-bit operands, one process per backbone (a fault would spoil the rest)
        CUDA_LAUNCH_BLOCKING=1 timeout "${T_BF16:-240}" python3 -m pytest -q -p no:cacheprovider --tb=short \
          tests/ops/triton/test_cuda.py -k "bf16ops and $gdn" > "$out/bf16ops_$gdn.log" 2>&1 &
      done
      wait
      for gdn in False True; do
        echo "bf16ops_$gdn: $(grep -E '^(FAILED|ERROR)|passed|failed|rror' "$out/bf16ops_$gdn.log" | tail -3 | tr '\n' ' ')"
      done ;;
    fla)
      if ! python3 -c 'import fla' 2>/dev/null && ls .whl/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fla_site .whl/*.whl
        export PYTHONPATH=$PYTHONPATH:/tmp/fla_site
      fi
      run_tests "$out/tests_fla.log" "${T_FLA:-420}" fla tests/layers/test_fla_layers.py -k cuda ;;
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
    dq)
      timeout "${T_DQ:-240}" python3 scripts/gpu_dq_kernels.py "$out/dq" --T 16384 --tokens 65536 --reps 5 2>&1 \
        | grep -v Warning | tail -30 ;;
    profile)
      cells=()
      for model in transformer mamba2 dla-mamba2 dla-gdn; do
        cells+=("configs/study/capacity.yaml:T256-kv64__${model}__d64__lr3e-3__s0")
      done
      lm=()
      [ -d runs/books/tokens ] && lm=(transformer mamba2) || echo "profile: no runs/books/tokens, language models left out"
      timeout "${T_PROF:-150}" python3 scripts/gpu_lm.py profile --out "$out/profile" --reps 3 --top 30 \
        --recipes "${cells[@]}" "${lm[@]}" 2>&1 | grep -v Warning | tail -20
      # the cells' steps with the blocks compiled (train.compile): whether the study's small models should compile
      timeout "${T_PROFC:-200}" python3 scripts/gpu_lm.py profile --out "$out/profile_compiled" --compile --reps 3 \
        --top 30 --recipes "${cells[@]}" 2>&1 | grep -v Warning | tail -20 ;;
    *) echo "unknown part $part" ;;
  esac
done
exit 0
