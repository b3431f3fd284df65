#!/usr/bin/env bash
# On the lent GPU machine: the CUDA tests of the check kinds as objects (issue 17 item 5): every
# kind's eager and device checks against its own flips on CUDA tensors (the Triton range kernel
# included), each kind through the captured CUDA graph, the memory checksums and the CUDA
# backend's slow path (flags read back as Slots of their kind).
# Usage: bash scripts/device/kinds_cuda.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 400 python3 -m pytest -q -p no:cacheprovider -m cuda -rs \
  test/test_check_kinds.py test/test_memsum.py test/test_cuda_backend.py \
  test/test_cuda_range_check.py 2>&1 | tail -25 | tee "$OUT/pytest_cuda.txt"
