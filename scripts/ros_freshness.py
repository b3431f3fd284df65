"""Freshness of save_node's results: input published -> result received, a slow model at 30 Hz.

Side by side in one run, alternating: the old defaults (input QoS depth 5, queue 4, oldest
first) against the new ones (depth 1, queue 1, newest first). The model is the 140 ms
`robot_nets:SlowNet` of test/byom (a sleep in forward, so its time does not depend on the load
of the machine; served unprotected because an fx trace would drop the sleep: freshness is a
property of the queueing, not of SAVE). Prints a table and writes JSON.

    PYTHONPATH=$PWD python scripts/ros_freshness.py --json docs/results/ros_node_freshness.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BYOM = ROOT / "test" / "byom"
SETTINGS = {
    "before (depth 5, queue 4, oldest first)": {"qos.depth": 5, "queue_size": 4,
                                                "queue_order": "fifo"},
    "now (depth 1, queue 1, newest first)": {"qos.depth": 1, "queue_size": 1,
                                             "queue_order": "newest_first"},
}


def _frames(count: int, rate: float):
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        msg = Image(height=48, width=64, encoding="rgb8", step=192,
                    data=rng.integers(0, 256, (48, 64, 3), dtype=np.uint8).tobytes())
        t = int(i * 1e9 / rate)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 500 + t // 10**9, t % 10**9
        out.append(msg)
    return out


def run_once(name: str, overrides: dict, frames, model_s: float) -> dict:
    """One node, one stream; latencies of the inputs that got a result."""
    from save_ros.tools.client import ReplayClient
    from save_ros.tools.process import NodeProcess

    env = {"PYTHONPATH": os.pathsep.join([str(BYOM), os.environ.get("PYTHONPATH", "")]),
           "ROBOT_NETS_SLOW_S": str(model_s)}
    proc = NodeProcess(None, namespace=f"fresh_{os.getpid()}", env=env, overrides={
        "model": "robot_nets:SlowNet", "input_shape": [3, 16, 16], "protect": False,
        "diagnostics.input_timeout": 0.0, **overrides}).start()
    try:
        with ReplayClient(node_fqn=proc.fqn) as client:
            client.wait_for_node(proc, timeout=120.0)
            client.replay(frames[:5], pace="lockstep")  # warm-up
            result = client.replay(frames[5:], pace="rate", rate=1.0, settle=2.0)
    finally:
        proc.stop()
    lat = result.latencies_ms()
    summary = result.summary()
    return {"setting": name, "inputs": summary["inputs"], "outputs": summary["outputs"],
            "received": summary["received"], "dropped_in_node": summary["dropped"],
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "max_ms": float(lat.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=30.0, help="input rate, Hz")
    parser.add_argument("--seconds", type=float, default=4.0, help="stream length")
    parser.add_argument("--model-ms", type=float, default=140.0, help="model time per input")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per setting")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    frames = _frames(5 + int(args.rate * args.seconds), args.rate)
    runs = []
    for _ in range(args.repeats):
        for name, overrides in SETTINGS.items():
            runs.append(run_once(name, overrides, frames, args.model_ms / 1e3))
            print(json.dumps(runs[-1]), flush=True)
    table = {}
    for name in SETTINGS:
        mine = [r for r in runs if r["setting"] == name]
        table[name] = {k: float(np.median([r[k] for r in mine]))
                       for k in ("p50_ms", "p90_ms", "max_ms", "outputs", "received")}
    before, now = (table[n]["p50_ms"] for n in SETTINGS)
    print(f"\n{'setting':45s} {'p50 ms':>8s} {'p90 ms':>8s} {'outputs':>8s}")
    for name, row in table.items():
        print(f"{name:45s} {row['p50_ms']:8.1f} {row['p90_ms']:8.1f} {row['outputs']:8.0f}")
    print(f"publish -> output p50, before / now: {before / now:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "command": "PYTHONPATH=$PWD python scripts/ros_freshness.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores (CPU)",
            "date": time.strftime("%Y-%m-%d"), "rate_hz": args.rate,
            "model_ms": args.model_ms, "runs": runs, "median": table,
            "p50_ratio_before_over_now": before / now}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
