"""Intake during ~/reanalyze: 30 Hz digits frames for 6 s, with and without 3 reanalyze calls.

Counts how many published inputs reached the protected digits_cnn node (its /diagnostics
`received`) and the publish -> output p50, side by side in one run.

    PYTHONPATH=$PWD python scripts/ros_reanalyze_intake.py
"""

from __future__ import annotations

import json
import os
import threading
import time

from save_ros.ros.bags import read_messages
from save_ros.tools.bench_node import _restamped
from save_ros.tools.bundled import BAGS_DIR, DIGITS_BAG
from save_ros.tools.client import ReplayClient
from save_ros.tools.process import NodeProcess


def main() -> None:
    """Print one JSON line per setting."""
    frames = [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)][:30]
    for label, calls in (("no reanalyze", 0), ("reanalyze x3", 3)):
        proc = NodeProcess(os.path.join("config", "digits_cnn.yaml"),
                           namespace=f"re_{os.getpid()}",
                           overrides={"analysis_cache": "/tmp/re_cache.json",
                                      "diagnostics.input_timeout": 0.0}).start()
        try:
            with ReplayClient(node_fqn=proc.fqn) as client:
                client.wait_for_node(proc, timeout=120)
                stream = _restamped(frames, 180, 30.0, 100)
                box: dict = {}
                t = threading.Thread(target=lambda b=box, c=client, st=stream: b.setdefault(
                    "r", c.replay(st, pace="rate", settle=2.0)))
                t.start()
                took = []
                for _ in range(calls):
                    time.sleep(1.0)
                    t0 = time.monotonic()
                    client.call("reanalyze", timeout=120)
                    took.append(round(time.monotonic() - t0, 2))
                t.join()
                s = box["r"].summary()
                print(json.dumps({"setting": label, "sent": s["inputs"],
                                  "received": s["received"], "outputs": s["outputs"],
                                  "p50_ms": round(float(s["latency_ms"]["p50"]), 1),
                                  "reanalyze_s": took}), flush=True)
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
