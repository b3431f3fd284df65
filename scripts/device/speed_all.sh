#!/usr/bin/env bash
# On the lent GPU machine: the robot-scale speed table of the three models (every vulnerable bit
# covered, and range checks only; fp32/fp16 x batch 1/8, each protected run interleaved with the
# unprotected CUDA graph in one process).
# Usage: bash scripts/device/speed_all.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
timeout 400 python3 -m save_ros.eval.bench.scale --models resnet50,vit_b_16,mobilenet_v2 \
  --what analysis,speed --redundancy full,0 --dtypes fp32,fp16 --batches 1,8 --iters 200 \
  --out "$OUT/speed_all.json" 2>&1 | grep -v -e Warning -e run_backward
