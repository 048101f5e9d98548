#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent and quick when done.
# torch is pinned and installed FIRST: on CPU machines an unpinned torch pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  echo "[setup] installing torch==$TORCH_VERSION"
  .venv/bin/pip install --quiet "torch==$TORCH_VERSION"
fi
echo "[setup] installing the project (editable) with test and train extras"
.venv/bin/pip install --quiet -e ".[test,train]"
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, gymnasium; print("torch", torch.__version__, "| transformers", transformers.__version__, "| gymnasium", gymnasium.__version__)')"
