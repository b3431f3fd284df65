#!/usr/bin/env bash
# Setup + run: install everything, then run the main job on the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${SAVE_ROS_VENV:-.venv}/bin/save-ros" demo "$@"
