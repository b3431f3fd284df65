#!/usr/bin/env bash
# On a lent multi-GPU machine (no Ray there: its wheel cannot be brought): the single-host path
# of `save-ros robustness campaign`, one worker process per visible GPU, against one GPU, same campaign.
#   bash scripts/device/campaign_gpus.sh $OUT [MODEL] [TRIALS]
# Writes $OUT/campaign_gpus_1.json and $OUT/campaign_gpus_all.json (execution block: workers,
# trials/s end to end and steady), $OUT/campaign_gpus_equal.txt (per-trial records of both runs
# compared: they must be equal), and $OUT/campaign_gpus.txt (the summary).
set -u
OUT=${1:-/tmp/out}; M=${2:-resnet18}; T=${3:-400}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
echo "visible GPUs: $N" | tee "$OUT/campaign_gpus.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/campaign_gpus.txt"
C=(--model "$M" --target weights --flips 1,16 --trials "$T" --batch 32 --device cuda --quiet)
# a tiny run first: a failure on CUDA shows here in seconds, with its traceback
timeout 240 python3 -m save_ros.cli robustness campaign "${C[@]}" --trials 2 --workers 1 2>&1 | tail -20
for W in 1 all; do
  n=$([ "$W" = all ] && echo 0 || echo 1)   # --workers 0 = every visible GPU
  rm -f "$OUT/campaign_gpus_$W.sqlite"*
  timeout 270 python3 -m save_ros.cli robustness campaign "${C[@]}" --workers "$n" \
    --store "$OUT/campaign_gpus_$W.sqlite" --json "$OUT/campaign_gpus_$W.json" 2>&1 | tail -8
done
python3 - "$OUT" <<'PY' | tee -a "$OUT/campaign_gpus.txt" "$OUT/campaign_gpus_equal.txt"
import json, sqlite3, sys
out = sys.argv[1]
rows = {}
for w in ("1", "all"):
    ex = json.load(open(f"{out}/campaign_gpus_{w}.json"))["execution"]
    print(w, "GPU(s):", {k: ex[k] for k in ("workers", "trials_run", "trials_per_s",
                                             "steady_trials_per_s", "first_chunk_s")})
    db = sqlite3.connect(f"{out}/campaign_gpus_{w}.sqlite")
    recs = [json.loads(r) for (r,) in db.execute("SELECT record FROM trials ORDER BY method, point, trial")]
    rows[w] = [{k: v for k, v in r.items() if k != "latency_s"} for r in recs]
print("per-trial records equal (1 GPU vs all):", rows["1"] == rows["all"], len(rows["1"]), "trials")
PY
