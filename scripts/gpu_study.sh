#!/usr/bin/env bash
# The recall study on one GPU: `dla study run` of a sweep for at most MINUTES, then everything under OUT.
# Usage (repository root, CUDA machine): bash scripts/gpu_study.sh SWEEP OUT MINUTES [dla study run options...]
#   bash scripts/gpu_study.sh configs/study/capacity.yaml "$OUT" 8 --measure
#        step times of every model shape of the sweep and the minutes its cells need (results/<study>/measure.json,
#        which later pieces plan with: commit it with the results)
#   JOBS=4 bash scripts/gpu_study.sh configs/study/calibration.yaml "$OUT" 20
#        a piece of the sweep: finished cells (docs/results/<study>/*.json in the tree) are skipped; a cell is
#        started only if its estimated time fits; on a warm machine a rerun resumes an interrupted cell. JOBS
#        processes (default 1) share the GPU, each training its own shard of the pending cells (`--shard I/N`); no
#        more than fit in its memory at the peaks in measure.json (the capacity sweep on an 80 GB GPU: 6 at
#        T = 256, 3 at T = 512); a process that runs out of memory all the same stops, leaving its cells pending.
# Writes OUT/env.txt (GPU, driver, torch, Triton, date), OUT/study.log (the run's output), OUT/status.txt (every
# cell's status afterwards), OUT/results/<study>/*.json (every result of the study and measure.json: copy them into
# docs/results/<study>/ and run `dla study report`) and OUT/logs/<cell>.jsonl (each cell's training log).
# Installs nothing: torch, triton, transformers, tokenizers, safetensors, PyYAML, tqdm and matplotlib come with the
# machine. The commit recorded in the results is DLA_COMMIT when set (the machine's copy of the tree may
# have no .git), else git's. STUDY_ROOT (default runs/study) and STUDY_RESULTS (default docs/results) move the run
# directories and the result JSONs.
# A cell longer than one call resumes in the next call from its checkpoint only where the run directories
# survive: keep STUDY_ROOT on the machine, out of the paths a call replaces (not under a carried folder); with
# STUDY_RESULTS there too, the cells earlier calls finished stay done (the tree's docs/results is copied in first,
# never over a result already there). Pass --allow-pause for cells longer than a piece: they start all the same,
# pause with a checkpoint at the limit and resume in the next piece.
set -uo pipefail
sweep=${1:?sweep file}
out=${2:?output directory}
minutes=${3:?minutes}
shift 3
root=${STUDY_ROOT:-runs/study}
results=${STUDY_RESULTS:-docs/results}
. scripts/gpu_common.sh
gpu_env "$out"
if [ "$(realpath -m "$results")" != "$(realpath -m docs/results)" ] && [ -d docs/results ]; then
  mkdir -p "$results" && cp -rn docs/results/. "$results"/
fi
study=$(python3 -c 'import sys; from dla.study.sweep import load_sweep
print(load_sweep(sys.argv[1], validate=False).study)' "$sweep") \
  || { echo "cannot read $sweep" | tee "$out/study.log"; exit 2; }
# the limit of the run itself is MINUTES; the outer timeout only guards against a hang
limit=$((${minutes%.*} * 60 + 180))
jobs=${JOBS:-1}
# no more processes than the GPU holds: its memory over the largest peak in measure.json among the shapes of the
# next 4 x JOBS pending cells (what one piece reaches), times 1.5 for what a process holds beyond its tensors
# (CUDA context, cached blocks: 10.8 GiB per process at a 7.2 GiB peak on an H100), 10% kept free
fit=$(python3 - "$sweep" "$results" "$jobs" <<'EOF' 2>/dev/null
import json, sys
import torch
from dla.study.runner import measure_path, result_path
from dla.study.sweep import load_sweep
sweep = load_sweep(sys.argv[1])
pending = [c for c in sweep.select(None) if not result_path(sys.argv[2], c).is_file()]
shapes = {(c.model, c.setting, c.config("-").data.seq_len) for c in pending[:4 * int(sys.argv[3])]}
rows = json.loads(measure_path(sys.argv[2], sweep.study).read_text())["rows"]
peak = 1.5 * max((r.get("peak_mem_gib") or 0 for r in rows if (r["model"], r["setting"], r["seq_len"]) in shapes),
                 default=0)
print(int(0.9 * torch.cuda.get_device_properties(0).total_memory / 2**30 // peak) if peak else 0)
EOF
)
if [ "${fit:-0}" -ge 1 ] && [ "$jobs" -gt "$fit" ]; then
  echo "JOBS=$jobs processes would not fit in GPU memory (measure.json's peaks): running $fit"
  jobs=$fit
fi
if [ "$jobs" -le 1 ] || [[ " $* " == *" --measure "* ]]; then
  timeout $limit python3 -m dla.cli study run "$sweep" --root "$root" --results "$results" \
    --max-minutes "$minutes" --no-progress "$@" 2>&1 | tee "$out/study.log"
else
  # JOBS processes share the GPU, each training its own shard of the pending cells
  export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
  for ((i = 0; i < jobs; i++)); do
    OMP_NUM_THREADS=2 timeout $limit python3 -m dla.cli study run "$sweep" --root "$root" --results "$results" \
      --max-minutes "$minutes" --no-progress --shard "$i/$jobs" "$@" > "$out/study.$i.log" 2>&1 &
  done
  wait
  for ((i = 0; i < jobs; i++)); do echo "== shard $i/$jobs"; cat "$out/study.$i.log"; done > "$out/study.log"
  rm -f "$out"/study.*.log
  tail -n 3 "$out/study.log"
fi
python3 -m dla.cli study run "$sweep" --root "$root" --results "$results" --list > "$out/status.txt" 2>&1
if [ -d "$results/$study" ]; then
  mkdir -p "$out/results/$study"
  cp "$results/$study"/*.json "$out/results/$study/" 2>/dev/null
fi
mkdir -p "$out/logs"
for log in "$root/$study"/*/log.jsonl; do
  [ -f "$log" ] && cp "$log" "$out/logs/$(basename "$(dirname "$log")").jsonl"
done
grep -c "done$" "$out/status.txt" | sed 's/^/cells done: /'
exit 0
