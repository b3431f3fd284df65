#!/usr/bin/env bash
# On the lent GPU machine, issue 17's "Done when" rows in one call: the cuda-marked tests of every
# check kind, then the verified protect().infer() latency of ResNet-50, MobileNetV2 and ViT-B/16
# at 224, fp32 and fp16, against the fastest unprotected configuration (CUDA graph, or
# torch.compile with CUDA graphs), interleaved in one process. BATCHES=1,8 adds batch 8
# (longer: one more compile per row).
# Usage: bash scripts/device/issue17_table.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
BATCHES=${BATCHES:-1}; MODELS=${MODELS:-resnet50,mobilenet_v2,vit_b_16}
BASELINES=${BASELINES:-graph,compile-graph}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
timeout 140 python3 -m pytest -q -p no:cacheprovider -m cuda -rs test/test_check_kinds.py \
  test/test_memsum.py test/test_cuda_backend.py test/test_cuda_range_check.py 2>&1 | tail -8 \
  | tee "$OUT/pytest_cuda.txt"
timeout 430 python3 -m save_ros.eval.bench.scale --models "$MODELS" --what analysis,speed \
  --redundancy full --dtypes fp32,fp16 --batches "$BATCHES" --iters 200 \
  --baselines "$BASELINES" --out "$OUT/speed_table.json" 2>&1 \
  | grep -v -e Warning -e run_backward -e "^ *warn"
