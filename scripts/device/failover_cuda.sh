#!/usr/bin/env bash
# On the lent GPU machine, issue 18 item 6 in one call: CUDA failover (crash -> next verified
# output) with weights shared on the device (CUDA IPC, one handle per dtype), its breakdown
# (detection, standby activation, first inference, return), for the bundled digits CNN and for
# ResNet-50 at 224 (protect backend) and the CUDA failover tests.
# Usage: bash scripts/device/failover_cuda.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" test/test_failover.py \
  test/test_failover_packed.py 2>&1 | tail -4 | tee "$OUT/pytest_failover.txt"
B="python3 -m save_ros.eval.bench.failover --device cuda"
timeout 150 $B --backend protect --reps 20 --steady 20 --burst 3 \
  --modes warm_standby,cold_forkserver --json "$OUT/failover_cuda_digits.json" 2>&1 | tail -12
timeout 220 $B --model resnet50 --samples 8 --backend protect --reps 20 --steady 20 --burst 2 \
  --modes warm_standby --json "$OUT/failover_cuda_resnet50.json" 2>&1 | grep -v Fatal | tail -8
