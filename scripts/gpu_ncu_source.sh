#!/usr/bin/env bash
# Where inside the readout kernels the time goes: ncu's per-instruction warp-stall samples (SourceCounters) and
# stall reasons (WarpStateStats) for one forward + backward of chunk_dla (scripts/gpu_kernel_table.py --ncu).
# Usage (CUDA machine with ncu, repo root): bash scripts/gpu_ncu_source.sh OUT [KERNEL_REGEX] [gpu_kernel_table args]
# Writes OUT/ncu_details.txt (sections per kernel) and OUT/ncu_source_<kernel>.csv (per-SASS-instruction samples,
# with the Python line where ncu can correlate it).
set -uo pipefail
out=${1:?output directory}
regex=${2:-readout_fwd_kernel|readout_bwd_dq_kernel|readout_bwd_key_kernel}
shift $(( $# >= 2 ? 2 : $# ))
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
rep=$(mktemp -d)/rep
ncu --clock-control none --profile-from-start off --import-source yes -k "regex:$regex" \
  --section SourceCounters --section WarpStateStats --section InstructionStats --section Occupancy \
  --section LaunchStats --section SpeedOfLight -o "$rep" \
  python3 scripts/gpu_kernel_table.py "$(dirname "$rep")/x.json" --ncu "$@" > "$out/ncu_run.log" 2>&1
echo "ncu exit $?"
tail -5 "$out/ncu_run.log"
ncu -i "$rep.ncu-rep" --page details --print-details all > "$out/ncu_details.txt" 2>&1 \
  || ncu -i "$rep.ncu-rep" --page details > "$out/ncu_details.txt" 2>&1
for k in ${regex//|/ }; do
  ncu -i "$rep.ncu-rep" -k "$k" --page source --csv --print-source cuda,sass > "$out/ncu_source_$k.csv" 2>&1 \
    || ncu -i "$rep.ncu-rep" -k "$k" --page source --csv > "$out/ncu_source_$k.csv" 2>&1
  echo "$k: $(wc -l < "$out/ncu_source_$k.csv") lines"; head -3 "$out/ncu_source_$k.csv" | cut -c1-400
done
