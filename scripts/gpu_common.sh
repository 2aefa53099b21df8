# Sourced by the GPU shell scripts (gpu_session.sh): the output directory with its environment record, and one
# pytest run with its result line.

# gpu_env OUT: creates OUT, puts the repo on PYTHONPATH, writes OUT/env.txt (GPU, driver, torch, Triton, date)
gpu_env() {
  mkdir -p "$1"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
    > "$1/env.txt" 2>&1
  cat "$1/env.txt"
}

# run_tests LOG LIMIT_S NAME [pytest arguments]: pytest's output appended to LOG, its result line printed
run_tests() {
  local log=$1 limit=$2 name=$3; shift 3
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider --tb=short "$@" > "$log.part" 2>&1
  echo "tests $name: $(grep -E '^(FAILED|ERROR)|passed|failed' "$log.part" | tail -4 | tr '\n' ' ')"
  cat "$log.part" >> "$log"
  rm -f "$log.part"
}
