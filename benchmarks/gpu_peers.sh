#!/usr/bin/env bash
# One-GPU comparison with timm's train.py: EfficientNet-Lite0 (the packaged weights) at
# 224 px, full fine-tune, the same split of 10,000 glyphs, bf16; wall time, time to a
# validation accuracy, training images/s, test accuracy (benchmarks/peers/gpu_peers.py).
#   bash benchmarks/gpu_peers.sh --train-py .peers/timm_train.py [--epochs 6] [--target 0.95]
# About 5-8 minutes on one H200 at the defaults. timm's train.py is not in the pip package
# and not in this repository: put it in an ignored folder (.peers/) and carry it, e.g.
#   mkdir -p .peers && git --git-dir=<pytorch-image-models mirror> show HEAD:train.py > .peers/timm_train.py
# Needs the project's dependencies (pip install -e .); where the machine has no network,
# put wheels of anything missing in .whl/ first, as for gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import albumentations" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 FINETUNE_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/peers/gpu_peers.py --json-out "${OUT:-/tmp}/gpu_peers.json" "$@"
