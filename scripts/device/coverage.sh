#!/usr/bin/env bash
# On the lent GPU machine: the robot-scale coverage of one model through protect() (weight,
# activation and clean trials, every vulnerable bit covered), spread over every visible GPU (one
# worker process per GPU; with one GPU the chunks run in this process), kept chunk by chunk in a
# store so that a call cut by its time limit is continued by the next call.
#   bash scripts/device/coverage.sh MODEL $OUT [SEED=0] [TRIALS=10000] [CLEAN=10000]
# The store is coverage_MODEL_seedSEED.sqlite in the repository root (STORE=... overrides); when
# it is there the run resumes it (--resume: only the chunks it lacks run). Python is stopped at
# LIMIT=520 s; the script then folds the store's write-ahead log into it and copies it to $OUT.
# To continue: put that file back in the repository root (*.sqlite is not git-ignored, so it
# travels with the working tree) and call again, until coverage_MODEL_seedSEED.json says every
# section is complete. The chunks' seeds depend on (SEED, section, chunk) only, so the counts
# are those of one uninterrupted run on one device, however many GPUs and calls it took.
# EXTRA="..." adds bench options (e.g. EXTRA="--device cpu --size 32 --calibration 8" to try
# the script on a CPU).
set -u
M=$1; OUT=${2:-/tmp/out}; SEED=${3:-0}; N=${4:-10000}; C=${5:-10000}
STORE=${STORE:-coverage_${M}_seed$SEED.sqlite}; LIMIT=${LIMIT:-520}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"
RESUME=(); [ -f "$STORE" ] && RESUME=(--resume) && echo "resuming $STORE"
# --workers 0: every visible GPU; --seconds: no per-section budget (the limit and --resume
# split the run instead; a multi-GPU run ignores --seconds anyway and says so)
timeout "$LIMIT" python3 -m save_ros.eval.bench.scale --models "$M" --what analysis,coverage \
  --redundancy full --trials "$N" --clean "$C" --seconds 1e9 --seed "$SEED" --workers 0 \
  --store "$STORE" "${RESUME[@]}" ${EXTRA:-} --out "$OUT/coverage_${M}_seed$SEED.json" 2>&1 \
  | grep -v -e Warning -e run_backward
echo "bench exit ${PIPESTATUS[0]} (124: stopped at $LIMIT s; call again with the store to resume)"
python3 - "$STORE" <<'PY'
import collections, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # one self-contained file to carry back
per = collections.Counter()
for (rec,) in db.execute("SELECT record FROM trials"):
    r = json.loads(rec)
    per[r["method"].rsplit("/", 1)[1]] += r["trials"]
print("stored trials per section:", dict(per))
db.close()
PY
cp "$STORE" "$OUT/"
