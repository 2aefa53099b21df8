# Sourced by the GPU A/B scripts (gpu_tuning.sh, gpu_readout_ab.sh): the output directory and its environment record,
# one kernel table with its summary line, one pytest run with its result line.

# gpu_env OUT: creates OUT, puts the repo on PYTHONPATH, writes OUT/env.txt (GPU, driver, torch, Triton, date)
gpu_env() {
  mkdir -p "$1"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
    > "$1/env.txt" 2>&1
  cat "$1/env.txt"
}

# kernel_table OUT LIMIT_S NAME [gpu_kernel_table.py options]: OUT/kernels_NAME.json, then a line with the kernels'
# total ms, the unprofiled wall ms and the six largest kernels
kernel_table() {
  local out=$1 limit=$2 name=$3; shift 3
  timeout "$limit" python3 scripts/gpu_kernel_table.py "$out/kernels_$name.json" "$@" > /dev/null 2>&1
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); m = d['meta']; top = d['rows'][:6]
print(sys.argv[2], round(m['kernel_ms_total'], 1), round(m['wall_ms_unprofiled'], 1),
      ', '.join(f\"{r['kernel'][:18]} {r['ms']:.1f}\" for r in top))" "$out/kernels_$name.json" "$name" \
    2>/dev/null || echo "$name: no table"
}

# run_tests LOG LIMIT_S NAME [pytest arguments]: pytest's output appended to LOG, its result line printed
run_tests() {
  local log=$1 limit=$2 name=$3; shift 3
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider --tb=short "$@" > "$log.part" 2>&1
  echo "tests $name: $(grep -E '^(FAILED|ERROR)|passed|failed' "$log.part" | tail -4 | tr '\n' ' ')"
  cat "$log.part" >> "$log"
  rm -f "$log.part"
}
