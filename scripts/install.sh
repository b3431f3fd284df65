#!/usr/bin/env bash
# Install save_ros and everything it needs into a virtual environment (default: .venv).
#
# - torch: the CPU build torch==2.13.0 unless torch already imports (SAVE_ROS_TORCH overrides).
# - ROS 2: where a ROS 2 distribution is sourced ($ROS_DISTRO set and rclpy importable), the venv
#   sees its packages (--system-site-packages) and nothing from PyPI replaces them; elsewhere
#   ROS 2 Kilted's core comes from PyPI as wheels (extra "ros-pypi").
# - Ray (extra "cluster", for `save-ros robustness campaign --ray`): installed too, as the tests
#   start a local Ray cluster; SAVE_ROS_EXTRAS replaces the extras list (e.g. test,plot without it).
# Only package registries are used; nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SAVE_ROS_VENV:-.venv}
PY=${SAVE_ROS_PYTHON:-$(command -v python3.11 || command -v python3)}

have_distro_rclpy() { [ -n "${ROS_DISTRO:-}" ] && "$PY" -c "import rclpy" >/dev/null 2>&1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $("$PY" --version)"
  if have_distro_rclpy; then
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[install] ${SAVE_ROS_TORCH:-torch==2.13.0} (CPU build on this machine)"
  "${PIP[@]}" "${SAVE_ROS_TORCH:-torch==2.13.0}"
fi

extras=${SAVE_ROS_EXTRAS:-test,plot,cluster}
if have_distro_rclpy; then
  echo "[install] using ROS 2 $ROS_DISTRO from the sourced distribution"
else
  echo "[install] no ROS 2 distribution sourced: ROS 2 Kilted core from PyPI wheels"
  extras="$extras,ros-pypi"
fi
echo "[install] save_ros[$extras] (editable)"
"${PIP[@]}" -e ".[$extras]"
echo "[install] done: $VENV"
