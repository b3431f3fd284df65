#!/usr/bin/env bash
# On the lent GPU machine: the robot-scale coverage of one model through protect() (weight,
# activation and clean trials, every vulnerable bit covered), one model per device call (one
# ViT-B/16 run takes about 5 minutes; three processes at once slowed each other past the limit).
#   bash scripts/device/coverage.sh MODEL $OUT [SEED] [SECONDS]
set -u
M=$1; OUT=${2:-/tmp/out}; SEED=${3:-0}; S=${4:-150}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 560 python3 -m save_ros.eval.bench.scale --models "$M" --what analysis,coverage \
  --redundancy full --trials 10000 --clean 10000 --seconds "$S" --seed "$SEED" \
  --out "$OUT/coverage_${M}_seed$SEED.json" 2>&1 | grep -v -e Warning -e run_backward
