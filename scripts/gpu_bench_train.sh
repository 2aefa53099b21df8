#!/usr/bin/env bash
# Whole-model training throughput and the training op on a trained model's activations, on one GPU; results under
# OUT, a log per part (OUT/<part>.log).
# Usage (CUDA machine, repo root): bash scripts/gpu_bench_train.sh OUT [PART...]
# Parts (default: capture train125 train340, in this order):
#   capture   trains a DLA-Mamba-2 on MQAR with Log-Linear Attention's Mamba-2 head layout (48 heads of dim 64, state
#             128, one B/C group; 2 layers of width 768, C = 30, tau = 0.6) for MQAR_STEPS steps (OUT/mqar/: its
#             log and summary.json with the validation accuracy; the weights are deleted), records layer 1's op
#             inputs on MQAR validation sequences at T = 16K and 2K (dla bench capture; the files, a few hundred
#             MB, are deleted unless KEEP_CAPTURES=1) and times DLA, fenwick, single, fla's kernels and SDPA on them,
#             the batch tiled to 65,536 tokens per call (OUT/ops_captured.{json,md,png})
#   train125  dla bench train --sizes 125m: the seven models and fla's two at T = 2K, 8K, 16K, 65,536 tokens per
#             step (OUT/train_125m.{json,md,png})
#   train340  the same at 340m (OUT/train_340m.{json,md,png})
# Each part runs under its own time limit (seconds): T_CAPTURE, T_TRAIN125, T_TRAIN340; a part cut short keeps
# the rows it wrote. STEPS, WARMUP: timed and untimed training steps per row (default 6, 2); MODELS: a subset of
# dla bench train's models. TINY=1 runs every part at toy sizes on the CPU (an end-to-end check of the script).
set -uo pipefail
out=${1:?output directory}
shift
parts=${*:-capture train125 train340}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "${TINY:-0}" = 1 ]; then
  model="model.hidden_size=32 model.num_heads=2 model.expand=2 model.head_k_dim=16 model.capacity=8"
  mqar="data.seq_len=64 data.mqar.num_kv_pairs=4 data.mqar.vocab_size=64 data.mqar.num_train=256"
  lengths=(256 64); steps=${MQAR_STEPS:-4}; tokens=1024
  train=(--lengths 32 64 --tokens-per-step 128 --steps 2 --warmup 1 --device cpu)
  device=cpu
  python3 -c 'import platform, torch; print(platform.processor() or "cpu", "torch", torch.__version__)' > "$out/env.txt"
else
  model="model.hidden_size=768 model.num_heads=48 model.expand=4 model.head_k_dim=128 model.capacity=30"
  mqar="data.seq_len=2048 data.mqar.num_kv_pairs=64 data.mqar.vocab_size=8192 data.mqar.num_train=4000"
  lengths=(16384 2048); steps=${MQAR_STEPS:-300}; tokens=65536
  train=(--lengths 2048 8192 16384 --tokens-per-step 65536 --steps "${STEPS:-6}" --warmup "${WARMUP:-2}")
  device=cuda
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
    > "$out/env.txt" 2>&1
fi
cat "$out/env.txt"
for part in $parts; do
  echo "== $part"
  log="$out/$part.log"
  case $part in
    capture)
      run="$out/mqar"
      caps=${CAPTURE_DIR:-$out/captures}
      mkdir -p "$caps"
      # shellcheck disable=SC2086 # the overrides are words
      timeout "${T_CAPTURE:-420}" bash -c "
        python3 -m dla.cli train configs/tiny-mqar.yaml $model model.num_qk_heads=1 model.tau=0.6 \
          model.max_position_embeddings=${lengths[0]} $mqar data.mqar.num_val=64 train.max_steps=$steps \
          train.global_batch_size=16 train.micro_batch_size=16 train.warmup_steps=$((steps / 4)) \
          train.eval_every=0 train.device=$device checkpoint.every=0 log.tensorboard=false log.plot=false \
          log.progress=false --out-dir '$run' &&
        for T in ${lengths[*]}; do
          python3 -m dla.cli bench capture '$run' --out '$caps/mqar_dla_mamba2_T'\$T.safetensors --layer 1 \
            --length \$T --batch 1 --device $device || exit 1
        done &&
        python3 -m dla.cli bench ops --inputs '$caps'/mqar_dla_mamba2_T*.safetensors --tile --tokens $tokens \
          --out '$out/ops_captured.json'" > "$log" 2>&1
      echo "capture: exit $? ($(grep -h -o '"val_acc": [0-9.]*' "$run/summary.json" 2>/dev/null | head -1))"
      grep -E '^\S+\.safetensors: ' "$log" | cut -c1-400
      rm -rf "$run/final" "$run/checkpoints"
      [ "${KEEP_CAPTURES:-0}" = 1 ] || rm -rf "$caps" ;;
    train125|train340)
      size=${part#train}m
      [ "${TINY:-0}" = 1 ] && size=tiny
      limit=T_TRAIN${part#train}
      # shellcheck disable=SC2086 # MODELS is a list of words
      timeout "${!limit:-540}" python3 -m dla.cli bench train "${train[@]}" --sizes "$size" ${MODELS:+--models $MODELS} \
        --out "$out/train_${part#train}m.json" > "$log" 2>&1
      echo "$part: exit $?" ;;
    *)
      echo "unknown part $part (capture, train125, train340)"; exit 2 ;;
  esac
  tail -n 30 "$log" | grep -v '^bench \|it/s\]$' | tail -n 25
done
