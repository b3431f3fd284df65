#!/usr/bin/env bash
# Second look on the GPU: the redundancy budget's effect on speed and coverage.
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda -x test/test_cuda_backend.py \
  test/test_cuda_chunks.py test/test_zoo.py 2>&1 | tail -4
timeout 280 python3 -m save_ros.eval.bench.scale --models resnet50,mobilenet_v2,vit_b_16 --what analysis,speed \
  --redundancy full,0.1,0 --dtypes fp32,fp16 --batches 1,8 --iters 60 \
  --out "$OUT/speed_budget.json" 2>&1 | grep -v Warn | grep -v run_backward
timeout 150 python3 -m save_ros.eval.bench.scale --models resnet50 --what coverage \
  --redundancy 0.1,0 --trials 2000 --clean 500 --seconds 40 --out "$OUT/cov_budget.json" 2>&1 | grep -v Warn | grep -v run_backward
