"""Measure a campaign's throughput on a local Ray cluster of 1, then 2 worker nodes (1 CPU each).

    .venv/bin/python scripts/campaign_ray_scaling.py --out docs/results/campaigns_ray_scaling.json

Each run starts a fresh cluster (test/raycluster.py: a head without CPUs and N worker nodes, all
processes of this machine), runs the same `save-ros robustness campaign --ray ADDRESS` and stops the
cluster; an in-process run (no Ray) is the baseline. Every run's execution block (trials/s end
to end, and steady: after the first chunk came back, once the workers had started and prepared
the model) is kept, with the machine's load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
from raycluster import LocalRayCluster  # noqa: E402

CAMPAIGN = ["--model", "digits_cnn", "--target", "both", "--flips", "1,16", "--trials", "300",
            "--batch", "256", "--device", "cpu", "--quiet"]


def campaign(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "save_ros.cli", "robustness", "campaign", *CAMPAIGN,
               "--json", str(out), *extra]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        res = json.loads(out.read_text())
    ex = res["execution"]
    return {"executor": ex["executor"], "workers": ex["workers"], "trials": ex["trials_run"],
            "wall_s": res["wall_s"], "trials_per_s": ex["trials_per_s"],
            "first_chunk_s": ex["first_chunk_s"],
            "steady_trials_per_s": ex["steady_trials_per_s"],
            "trials_per_worker": list(ex["trials_per_worker"].values()),
            "sdc": [p["sdc"]["count"] for p in res["points"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds of (1 process, 1, 2 nodes)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs, started = [], time.time()
    for r in range(args.repeat):
        row = {"round": r, "loadavg_before": os.getloadavg()}
        row["in_process"] = campaign([])
        for n in (1, 2):
            cluster = LocalRayCluster(workers=n).start()
            try:
                row[f"ray_{n}"] = campaign(["--ray", cluster.address])
            finally:
                cluster.stop()
        row["loadavg_after"] = os.getloadavg()
        runs.append(row)
        print(json.dumps(row), flush=True)
    from save_ros.eval.record import run_record, write_json

    write_json(args.out, {**run_record("campaign_ray_scaling", started),
                          "campaign": CAMPAIGN, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
