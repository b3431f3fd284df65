#!/usr/bin/env bash
# On the lent GPU machine, issue 18 item 3: task-control fault campaigns on the zoo's policies
# through protect() on CUDA: SAVE's verified action chunks against the clean ones (tolerance
# 1e-3 relative + 1e-5 absolute), weight and activation flips, uniform bits and a
# sign/exponent half (--bits 23-31), each figure with its 95 % bound in the JSON.
# Usage: TRIALS=10000 POLICIES=decision_transformer,visuomotor,rdt_policy \
#          bash scripts/device/policy_coverage.sh $OUT
# (the trials of one call are bounded by its 10 minutes: split by --seed across calls, as the
# ViT coverage run did, or use fewer TRIALS per call)
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
TRIALS=${TRIALS:-1000}; POLICIES=${POLICIES:-decision_transformer,visuomotor,rdt_policy}
SECONDS_EACH=${SECONDS_EACH:-90}; BITS=${BITS:-all,23-31}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
for policy in ${POLICIES//,/ }; do
  for target in weights activations; do
    for bits in ${BITS//,/ }; do
      extra=(); [ "$bits" != all ] && extra=(--bits "$bits")
      timeout "$SECONDS_EACH" python3 -m save_ros.cli robustness campaign --model "$policy" \
        --device cuda --method save --target "$target" --flips 1 --trials "$TRIALS" \
        --batch 4 --seed 0 "${extra[@]}" --quiet \
        --store "$OUT/${policy}_${target}_${bits}.sqlite" \
        --json "$OUT/${policy}_${target}_${bits}.json" 2>&1 | grep -E "^save|wall|rror" | tail -3
    done
  done
done
