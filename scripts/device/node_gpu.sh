#!/usr/bin/env bash
# save_node on the lent GPU: a 224x224 rgb8 stream at 30 Hz (ResNet-50 and a user-module model),
# and worker-crash failover on CUDA. Needs the ROS wheels in .whl (../shared/device/ros-on-gpu.md):
#   bash scripts/device/node_gpu.sh $OUT        (name .whl in carry)
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
SITE=$(python3 -c "import site; print(site.getsitepackages()[0])")
V=$(mktemp -d)/v && python3 -m venv --without-pip "$V"
echo "$SITE" > "$V"/lib/python3.12/site-packages/device-python.pth
python3 -m pip install -q --no-index --no-deps --no-compile --prefix "$V" .whl/*.whl
export PYTHONPATH=$PWD:$PWD/test/byom ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=7
export PYTHONUNBUFFERED=1 RMW_IMPLEMENTATION=rmw_fastrtps_cpp
PY="$V/bin/python"
timeout 60 "$PY" scripts/device/preprocess_cuda.py 2>&1 | tail -6
timeout 330 "$PY" -m save_ros.tools.bench_stream --models resnet50,robot_nets:se_backbone \
  --device cuda --frames 300 --rate 30 --passes 2 --inject-every 10 \
  --out "$OUT/stream_gpu.json" 2>&1 | grep -v -e Warning -e run_backward | tail -8
timeout 170 "$PY" -m save_ros.tools.bench_failover --crashes 20 --device cuda --gap 2 \
  --out "$OUT/failover_gpu.json" 2>&1 | tail -6
