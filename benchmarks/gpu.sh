#!/usr/bin/env bash
# One-GPU benchmark: ResNet-50 training images/s at 224 px, synthetic vs the real-data
# pipeline vs `finetune run`, with and without channels_last / torch.compile.
#   bash benchmarks/gpu.sh [--batch-size 256] [--skip-compile] [--json-out FILE]
# Needs one CUDA GPU and the project's dependencies (pip install -e .). Where the
# machine has no network, put wheels of anything missing in .whl/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import albumentations" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 FINETUNE_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_bench.py "$@"
