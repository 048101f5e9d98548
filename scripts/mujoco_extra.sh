#!/usr/bin/env bash
# Install the optional [mujoco] extra (mujoco 3.3.0 + metaworld 3.1.1) into the main .venv, so the
# Meta-World example's tests (tests/examples/test_metaworld.py) run instead of skipping.
#
# torch is passed pinned in the same pip call: pip then cannot replace the CPU torch (an unpinned
# resolve may pull GBs of CUDA wheels); the script checks torch's version afterwards.
# Idempotent and quick when done. Measured on a 2-core CPU machine: about 14 s for a cold install
# (~44 MB of wheels), ~1 s when already installed; the tests then add about 15 s.
# `mujoco>=3.12` breaks gymnasium-robotics and metaworld 3.1.1 is tested with mujoco 3.3.0: keep the pins.
#
# Usage: bash scripts/mujoco_extra.sh      (env: TORCH_VERSION, default 2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PINS=("mujoco==3.3.0" "metaworld==3.1.1")

if [ ! -x .venv/bin/python ]; then
  echo "[mujoco_extra] no .venv: run scripts/setup.sh first" >&2
  exit 1
fi
if .venv/bin/python - <<'EOF' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(0 if (m.version("mujoco"), m.version("metaworld")) == ("3.3.0", "3.1.1") else 1)
EOF
  echo "[mujoco_extra] mujoco 3.3.0 and metaworld 3.1.1 already installed"
else
  echo "[mujoco_extra] installing ${PINS[*]} (torch==$TORCH_VERSION kept)"
  .venv/bin/pip install --quiet "torch==$TORCH_VERSION" "${PINS[@]}"
fi
TORCH_NOW=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('torch'))")
case "$TORCH_NOW" in
  "$TORCH_VERSION"*) ;;
  *) echo "[mujoco_extra] torch is $TORCH_NOW, expected $TORCH_VERSION: something replaced it" >&2; exit 1 ;;
esac
# A headless render proves the EGL path works here (the tests render too).
MUJOCO_GL="${MUJOCO_GL:-egl}" .venv/bin/python -c "
import mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody></mujoco>')
r = mujoco.Renderer(m, 8, 8); d = mujoco.MjData(m); mujoco.mj_forward(m, d); r.update_scene(d); r.render(); r.close()
print('[mujoco_extra] ok: mujoco', mujoco.__version__, '(headless', __import__('os').environ['MUJOCO_GL'] + ')')
"
