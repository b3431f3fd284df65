#!/usr/bin/env bash
# On the lent GPU machine, issue 17 in one call: the CUDA tests of the check kinds, then where the
# overhead goes (plain eager / graph / torch.compile baselines, protect() with memory checksums,
# with DMR / ABFT, range only) for ResNet-50 and MobileNetV2 at batch 1.
# Usage: bash scripts/device/issue17.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" \
  test/test_memsum.py test/test_check_kinds.py test/test_cuda_backend.py test/test_cuda_range_check.py 2>&1 | tail -6 \
  | tee "$OUT/pytest.txt"
timeout 400 python3 scripts/device/overhead_probe.py "$OUT/overhead.json" resnet50,mobilenet_v2,vit_b_16 \
  fp32,fp16 2>&1 | grep -v -i -e warn -e run_backward
