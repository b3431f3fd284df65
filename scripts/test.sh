#!/usr/bin/env bash
# Setup + test: install everything, then run the test suite (fast tests; add -m slow for campaigns).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV=${SAVE_ROS_VENV:-.venv}
"$VENV/bin/ruff" check save_ros test scripts launch
exec "$VENV/bin/python" -m pytest -q "$@"
