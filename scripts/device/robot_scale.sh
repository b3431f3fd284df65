#!/usr/bin/env bash
# The robot-scale figures of one model on the GPU (docs/results/robot_scale.md):
#   bash scripts/device/robot_scale.sh MODEL $OUT
# analysis + speed (every vulnerable bit covered, and range checks only) at fp32/fp16 x b1/b8,
# coverage with every vulnerable bit covered (10,000 weight, 10,000 activation, 10,000 clean
# trials), and a shorter coverage run with range checks only.
set -u
M=$1; OUT=${2:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
python3 -m save_ros.eval.bench.scale --models "$M" --what analysis,speed,coverage --redundancy full \
  --dtypes fp32,fp16 --batches 1,8 --iters 200 --trials 10000 --clean 10000 --seconds 150 \
  --out "$OUT/scale_$M.json" 2>&1 | grep -v -e Warning -e run_backward
python3 -m save_ros.eval.bench.scale --models "$M" --what speed,coverage --redundancy 0 \
  --dtypes fp32,fp16 --batches 1,8 --iters 200 --trials 2000 --clean 1000 --seconds 30 \
  --out "$OUT/scale_${M}_range.json" 2>&1 | grep -v -e Warning -e run_backward
