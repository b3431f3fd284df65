#!/usr/bin/env bash
# On the lent GPU machine (no ROS, no network): the zoo's policies unprotected on the GPU,
# fp32 / bf16 / fp16 at batch 1 (rdt_policy is the 415M model), and their CPU tests.
# Usage (from the repo root on the device): bash scripts/device/policies.sh $OUT
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
timeout 300 python3 -m pytest -q -p no:cacheprovider test/test_zoo_policies.py test/test_loader.py \
  2>&1 | tail -5 | tee "$OUT/pytest.txt"
timeout 240 python3 -m save_ros.eval.bench.policies --device cuda --reps 50 \
  --models decision_transformer,visuomotor,rdt_policy_tiny,rdt_policy \
  --json "$OUT/zoo_policies_cuda.json" 2>&1 | tail -15
