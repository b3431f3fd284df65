#!/usr/bin/env bash
# On the lent GPU machine (no ROS, no network): protect() with several inputs on the CUDA backend.
# Runs the multi-input tests (the @pytest.mark.cuda one included: two inputs in one CUDA graph,
# a weight flip repaired, NaN refused as an InputError and the graph's gate released) and the
# CUDA backend's own tests (the input flag now per input).
# Usage (from the repo root on the device): bash scripts/device/multi_input.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt"
timeout 500 python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" -rs \
  test/test_multi_input.py test/test_cuda_backend.py 2>&1 | tail -30 | tee "$OUT/pytest.txt"
