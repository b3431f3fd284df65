#!/usr/bin/env bash
# On the lent GPU machine: the CUDA tests, then the robot-scale coverage of the three models at
# once (each its own process: the trials are host-bound, one process per model keeps the GPU
# busy; no timing is taken here). Usage: bash scripts/device/coverage_all.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" \
  test/test_cuda_backend.py test/test_cuda_range_check.py test/test_zoo.py 2>&1 | tail -6 \
  | tee "$OUT/pytest_cuda.txt"
for M in resnet50 vit_b_16 mobilenet_v2; do
  timeout 470 python3 -m save_ros.eval.bench.scale --models "$M" --what analysis,coverage \
    --redundancy full --trials 10000 --clean 10000 --seconds 140 \
    --out "$OUT/coverage_$M.json" > "$OUT/coverage_$M.log" 2>&1 &
done
wait
for M in resnet50 vit_b_16 mobilenet_v2; do grep -v -e Warning -e run_backward "$OUT/coverage_$M.log" | tail -8; done
