#!/usr/bin/env bash
# On the lent GPU machine (no ROS, no network, nothing installed): train the zoo's ResNet-18,
# MobileNetV2, ResNet-50 and ViT-B/16 on procedural scenes (save-ros maintainer train-zoo), and measure the
# trained models beside their random init with bench scale IN THE SAME CALL: a warm machine is
# kept only ~30 s after a call, and ResNet-50 / ViT-B/16 weights (51 / 173 MB in fp16) are too
# big to come back (16 MiB a file), so what needs them runs here.
#
#   bash scripts/device/train_zoo.sh $OUT                 # train: all four, ~6 min
#   bash scripts/device/train_zoo.sh $OUT all             # train 3 + analysis,speed, ~9 min
#   bash scripts/device/train_zoo.sh $OUT coverage MODEL  # train MODEL + coverage, ~9 min
#
# `train` first runs the CUDA tests of test/test_zoo_train.py (-> $OUT/pytest_cuda.txt).
# train    -> $OUT/train_zoo.log, $OUT/train_zoo.json (the four training records: held-out
#             accuracy, steps, img/s, seed, loss curve), $OUT/weights/ (resnet18 in two fp16
#             shards, mobilenet_v2 fp16, and their records: `zoo.build(name, weights=DIR)` and
#             `save-ros bench scale --trained DIR` load them on the CPU)
# all      -> the same for the three bench models (shorter budgets, no resnet18) +
#             $OUT/scale_trained.json (written after each model): bench scale --what
#             analysis,speed for resnet50, vit_b_16, mobilenet_v2, rows NAME and NAME@trained
#             (bit shares, checks per kind, ratio fp32/fp16 x b1/b8)
# coverage -> $OUT/train_zoo.log, $OUT/train_zoo.json + $OUT/coverage_trained_MODEL.json:
#             weight / activation / clean trials of MODEL, random and trained rows
# Env: SEED (0), TRIALS (4000), CLEAN (2000), COV_SECONDS (40 a section), INIT (random,trained),
# BENCH_MODELS (resnet50,vit_b_16,mobilenet_v2), TRAIN_MODELS, SECONDS_PER_MODEL (e.g.
# vit_b_16=300: train-zoo's --seconds); for a plumbing check on a CPU: DEVICE=cpu
# SIZE=32 STEPS=2 TRAIN_MODELS=resnet18 BENCH_MODELS=resnet18 DTYPES=fp32 BATCHES=1 ITERS=20
# (a smoke run of the plumbing, nothing trained).
set -u
OUT=${1:-/tmp/out}; MODE=${2:-train}; MODEL=${3:-resnet50}
SEED=${SEED:-0}; INIT=${INIT:-random,trained}; DEVICE=${DEVICE:-cuda}; SIZE=${SIZE:-224}
BENCH_MODELS=${BENCH_MODELS:-resnet50,vit_b_16,mobilenet_v2}
mkdir -p "$OUT/weights"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
W=$PWD/build/zoo_trained  # build/ is git-ignored; lost when the machine goes back
LIMIT=570  # seconds this call may use (the device's per-command limit is 600)
left() { echo $((LIMIT - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

case "$MODE" in
  train) MODELS=resnet18,mobilenet_v2,resnet50,vit_b_16
         BUDGET=resnet18=50,mobilenet_v2=70,resnet50=100,vit_b_16=120 ;;
  all)   MODELS=mobilenet_v2,resnet50,vit_b_16  # the bench's three; shorter, to leave ~4 min
         BUDGET=mobilenet_v2=50,resnet50=80,vit_b_16=100 ;;
  coverage) MODELS=$MODEL; BUDGET=resnet18=50,mobilenet_v2=70,resnet50=100,vit_b_16=120 ;;
  *) echo "train_zoo.sh: unknown mode $MODE (train, all, coverage MODEL)" >&2; exit 2 ;;
esac
MODELS=${TRAIN_MODELS:-$MODELS}; BUDGET=${SECONDS_PER_MODEL:-$BUDGET}
if [ -n "${STEPS:-}" ]; then LEN="--steps $STEPS --test-images 20"; else LEN="--seconds $BUDGET"; fi

if [ "$DEVICE" = cuda ] && [ "$MODE" = train ]; then  # the CUDA paths first: ~30 s, fail early
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda test/test_zoo_train.py 2>&1 \
    | tail -5 | tee "$OUT/pytest_cuda.txt"
fi
for m in ${MODELS//,/ }; do rm -f "$W/$m.json"; done  # no record of an earlier call survives
set -o pipefail
# shellcheck disable=SC2086  # $LEN is two options
timeout $(( $(left) - 10 )) python3 -m save_ros.models.zoo.train_cli --models "$MODELS" \
  --device "$DEVICE" --size "$SIZE" $LEN --seed "$SEED" --save-dtype fp16 --shard-mib 15 \
  --out "$W" 2>&1 | tee "$OUT/train_zoo.log"
echo "train-zoo exit $? after ${SECONDS} s"
set +o pipefail

# the records in one file; the weights that fit through the 16 MiB / 8-file return
python3 - "$W" "$OUT" "$MODELS" <<'EOF'
import json, shutil, sys
from pathlib import Path
w, out, models = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
recs = {m: json.loads((w / f"{m}.json").read_text()) for m in models if (w / f"{m}.json").is_file()}
(out / "train_zoo.json").write_text(json.dumps(recs, indent=1) + "\n")
for name in {"resnet18", "mobilenet_v2"} & set(recs):  # only this call's
    files = sorted(w.glob(f"{name}.*"))
    if sum(f.stat().st_size for f in files) < 40 * 2**20:
        for f in files:
            shutil.copy(f, out / "weights" / f.name)
for name, r in recs.items():
    t = r["test"]
    print(f"{name}: {t['accuracy']:.1%} held-out ({t['images']} scenes), {r['steps']} steps, "
          f"{r['img_per_s']:.0f} img/s, gap median {t['gap_median']:.2f}")
EOF

if ! python3 -c "import sklearn" 2>/dev/null && [ "$INIT" != trained ]; then
  # random-init rows calibrate on zoo.images (scikit-learn's photos and digits); scenes need none
  echo "no scikit-learn here: trained rows only (INIT=trained)"; INIT=trained
fi
case "$MODE" in
  all)
    timeout $(( $(left) - 5 )) python3 -m save_ros.eval.bench.scale \
      --models "$BENCH_MODELS" --trained "$W" --init "$INIT" --device "$DEVICE" --size "$SIZE" \
      --what analysis,speed --redundancy full --dtypes "${DTYPES:-fp32,fp16}" \
      --batches "${BATCHES:-1,8}" --iters "${ITERS:-100}" \
      --seed "$SEED" --out "$OUT/scale_trained.json" 2>&1 | grep -v -e Warning -e run_backward
    ;;
  coverage)
    timeout $(( $(left) - 5 )) python3 -m save_ros.eval.bench.scale --models "$MODEL" \
      --trained "$W" --init "$INIT" --device "$DEVICE" --size "$SIZE" \
      --what analysis,coverage --redundancy full \
      --trials "${TRIALS:-4000}" --clean "${CLEAN:-2000}" --seconds "${COV_SECONDS:-40}" \
      --seed "$SEED" --out "$OUT/coverage_trained_$MODEL.json" 2>&1 \
      | grep -v -e Warning -e run_backward
    ;;
esac
echo "train_zoo.sh $MODE done in ${SECONDS} s"
