#!/usr/bin/env bash
# On the lent GPU machine (no ROS, no network): CUDA tests and a short robot-scale run.
# Usage (from the repo root on the device): bash scripts/device/smoke.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, torchvision, sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
W=$(timeout 120 python3 scripts/device/capture_probe.py 2>&1 | tee "$OUT/probe.txt" | grep -o 'WORKS=.*' | cut -d= -f2)
tail -30 "$OUT/probe.txt"
[ "$W" = "0" ] && export SAVE_ROS_SIDE_STREAMS=0
timeout 200 python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" -x \
  test/test_cuda_backend.py test/test_zoo.py test/test_cuda_range_check.py 2>&1 | tail -15 | tee "$OUT/pytest.txt"
timeout 200 python3 -m save_ros.eval.bench.scale --models resnet50 --dtypes fp32,fp16 --batches 1,8 \
  --iters 100 --trials 400 --clean 200 --seconds 40 --out "$OUT/smoke_resnet50.json" 2>&1 | tail -25
timeout 150 python3 -m save_ros.eval.bench.scale --models vit_b_16,mobilenet_v2 --what analysis,speed \
  --dtypes fp32,fp16 --batches 1 --iters 60 --out "$OUT/smoke_vit_mnv2.json" 2>&1 | tail -25
