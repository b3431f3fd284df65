"""Measure `save-ros bench scale --what coverage` in one process, in 2 worker processes, and on a
local Ray cluster of 2 worker nodes (1 CPU each); check that all three give the same counts.

    .venv/bin/python scripts/coverage_scaling.py --out docs/results/coverage_scaling.json

The cluster is test/raycluster.py's (a head without CPUs and 2 worker nodes, processes of this
machine). Every run's execution block (trials/s end to end and steady: after the first chunk came
back, once the workers had started and protected the model) is kept with the load average, since
the machine may be shared.
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

MODEL = "mobilenet_v2"
BENCH = ["--models", MODEL, "--device", "cpu", "--size", "64", "--what", "coverage",
         "--calibration", "64", "--trials", "400", "--clean", "200", "--chunk", "25",
         "--threads", "1"]
SECTIONS = ("weights_uniform", "activations_uniform", "weights_high", "activations_high", "clean")
COUNTS = ("trials", "raw_changed", "detected", "sdc", "not_exact", "unverified", "notes")


def bench(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        t = time.time()
        subprocess.run([sys.executable, "-m", "save_ros.cli", "bench", "scale", *BENCH,
                        "--out", str(out), *extra], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.time() - t
        row = json.loads(out.read_text())["models"][MODEL]["coverage"]["full"]
    ex = row["execution"]
    return {"executor": ex["executor"], "workers": ex["workers"], "command_wall_s": wall,
            "trials": ex["trials_run"], "chunks": ex["chunks_run"],
            "trials_per_s": ex["trials_per_s"], "first_chunk_s": ex["first_chunk_s"],
            "steady_trials_per_s": ex["steady_trials_per_s"],
            "chunks_per_worker": list(ex["store_chunks_per_worker"].values()),
            "counts": {s: {k: row[s][k] for k in COUNTS} for s in SECTIONS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs, started = [], time.time()
    for r in range(args.repeat):
        row = {"round": r, "loadavg_before": os.getloadavg()}
        row["in_process"] = bench(["--seconds", "1e9"])
        row["processes_2"] = bench(["--workers", "2"])
        cluster = LocalRayCluster(workers=2).start()
        try:
            row["ray_2"] = bench(["--ray", cluster.address])
        finally:
            cluster.stop()
        row["loadavg_after"] = os.getloadavg()
        row["counts_equal"] = (row["in_process"]["counts"] == row["processes_2"]["counts"]
                               == row["ray_2"]["counts"])
        runs.append(row)
        print(json.dumps({k: v for k, v in row.items()}, default=str)[:2000], flush=True)
    res = {"kind": "save_ros.coverage_scaling", "command": " ".join(sys.argv),
           "bench": BENCH, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
           "rounds": runs}
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
