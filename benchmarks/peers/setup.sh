#!/usr/bin/env bash
# Everything run.py needs, outside the repository; safe to run again (each step is skipped
# when its result is there).
#   TIMM_GIT=/path/to/pytorch-image-models[.git] bash benchmarks/peers/setup.sh
#
# - $PEERS_VENV: timm + fastai. It reuses the project venv's torch 2.14.1, torchvision and
#   timm through a .pth file (fastai accepts torch<3), so it adds ~300 MB, not 5.5 GB.
# - $AG_VENV: AutoGluon 1.6.3, same .pth. autogluon.multimodal pins torch<2.14 and
#   torchvision<0.29, so its four packages install with --no-deps and the rest of its
#   requirements are listed here; its own timm, pandas and pyarrow pins go into the venv
#   and shadow the project's.
# - $PEERS_DIR/timm_train.py: timm's train.py (not in the pip package), from a git
#   checkout or mirror of huggingface/pytorch-image-models ($TIMM_GIT), else cloned.
# - $PEERS_DIR/weights: the packaged Lite0 weights under timm's names (weights.py).
# - $PEERS_DIR/tasks: finetune's split of each task as train/ val/ test/ folders (tasks.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS_DIR=${PEERS_DIR:-/work/peers}
PEERS_VENV=${PEERS_VENV:-/work/peers-venv}
AG_VENV=${AG_VENV:-/work/ag-venv}
MAIN_PY=${MAIN_PY:-$PWD/.venv/bin/python}
MAIN_SITE=$("$MAIN_PY" -c "import site; print(site.getsitepackages()[0])")
mkdir -p "$PEERS_DIR"

venv_on_main() {  # a venv that sees the project venv's packages after its own
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  local site
  site=$("$1/bin/python" -c "import site; print(site.getsitepackages()[0])")
  echo "$MAIN_SITE" > "$site/main-venv.pth"
}

venv_on_main "$PEERS_VENV"
"$PEERS_VENV/bin/python" -c "import fastai" 2>/dev/null || "$PEERS_VENV/bin/pip" install -q "fastai==2.8.12"

venv_on_main "$AG_VENV"
if ! "$AG_VENV/bin/python" -c "import autogluon.multimodal" 2>/dev/null; then
  "$AG_VENV/bin/pip" install -q --no-deps autogluon.multimodal==1.6.3 autogluon.core==1.6.3 \
    autogluon.features==1.6.3 autogluon.common==1.6.3 "lightning>=2.5.1,<2.7"
  "$AG_VENV/bin/pip" install -q "transformers[sentencepiece]>=5.3,<5.15" "accelerate>=1.1,<2" \
    "jsonschema>=4.18,<4.24" "seqeval>=1.2.2,<1.3" "evaluate>=0.4,<0.5" "text-unidecode>=1.3,<1.4" \
    "omegaconf>=2.1.1,<2.4" "pytorch-metric-learning>=1.3,<2.9" "nlpaug>=1.1.10,<1.2" \
    "nltk>=3.10.3,<3.11" "openmim>=0.3.7,<0.4" "defusedxml>=0.7.1,<0.7.2" "pytesseract>=0.3.9,<0.4" \
    "nvidia-ml-py3>=7.352,<8" "pdf2image>=1.17,<1.19" "torchmetrics>=1.2,<1.8" boto3 \
    "ray[default,tune]>=2.43,<2.53" hyperopt psutil pytz "pandas>=2.0,<2.4" "pyarrow>=23.0.1,<25" \
    "timm>=0.9.5,<1.0.7" "Pillow>=10.0.1,<13" "setuptools<81"
fi

if [ ! -s "$PEERS_DIR/timm_train.py" ]; then
  if [ -n "${TIMM_GIT:-}" ]; then
    git --git-dir="$TIMM_GIT" show HEAD:train.py > "$PEERS_DIR/timm_train.py" 2>/dev/null \
      || git -C "$TIMM_GIT" show HEAD:train.py > "$PEERS_DIR/timm_train.py"
  else
    git clone -q --depth 1 https://github.com/huggingface/pytorch-image-models "$PEERS_DIR/pytorch-image-models"
    cp "$PEERS_DIR/pytorch-image-models/train.py" "$PEERS_DIR/timm_train.py"
  fi
fi

[ -s "$PEERS_DIR/weights/check.json" ] || "$MAIN_PY" benchmarks/peers/weights.py --out "$PEERS_DIR/weights"
"$MAIN_PY" benchmarks/peers/tasks.py --root "$PEERS_DIR/tasks"
echo "ready: $MAIN_PY benchmarks/peers/run.py --train-py $PEERS_DIR/timm_train.py"
