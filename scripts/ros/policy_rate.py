"""save_node serving a two-input policy at a robot's rates: 30 Hz camera + 100 Hz joint states.

    python scripts/ros/policy_rate.py [--seconds 5] [--model visuomotor_tiny] [--out FILE.json]

Starts save_node as a process with config/visuomotor_policy.yaml (its QoS: best-effort input),
publishes rgb8 64x64 images at 30 Hz and 7-joint JointStates at 100 Hz in real time (stamps on
a simulated clock: the nearest joint state is 0 or 3.3 ms from each image), and reports:
messages sent, sets matched (the node's `<node>: sync` status), chunks on ~/output, and the
end-to-end time from publishing the newer message of a set to its chunk's arrival (p50/p99,
ms). Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from save_ros.tools.process import NodeProcess

CONFIG = Path(__file__).resolve().parents[2] / "config" / "visuomotor_policy.yaml"
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]


def _stamp(msg, t: float) -> int:
    ns = round(t * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--model", default="visuomotor_tiny")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    proc = NodeProcess(CONFIG, namespace=f"policy_rate_{os.getpid()}", overrides={
        "model": args.model, "input_topics": ["~/image", "~/joint_states"],
        "diagnostics_period": 0.5,
        "analysis_cache": f"/tmp/policy_rate_{args.model}.analysis.json"}).start()
    ctx = Context()
    rclpy.init(args=[], context=ctx)
    node = Node("policy_rate_client", context=ctx)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    img_pub = node.create_publisher(Image, f"{proc.fqn}/image", qos)
    joint_pub = node.create_publisher(JointState, f"{proc.fqn}/joint_states", qos)
    arrived: dict[int, float] = {}
    sync: list[dict[str, str]] = []
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(JointTrajectory, f"{proc.fqn}/output", lambda m: arrived.setdefault(
        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, time.monotonic()), reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: sync.extend(
        {kv.key: kv.value for kv in s.values} for s in m.status
        if s.name == f"{proc.fqn.lstrip('/')}: sync"), reliable)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not (img_pub.get_subscription_count() and joint_pub.get_subscription_count()
                   and node.count_publishers(f"{proc.fqn}/output")):
            proc.check_alive()
            assert time.monotonic() < deadline, "the node did not come up"
            time.sleep(0.1)
        time.sleep(1.0)
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8).tobytes()
        sent: dict[int, float] = {}  # stamp (ns) -> when the newer message of the set went out
        n_img = n_joint = 0
        t0, base = time.monotonic(), 1000.0
        while time.monotonic() - t0 < args.seconds:
            now = time.monotonic() - t0
            while n_joint / 100 <= now:
                msg = JointState(name=JOINTS, position=[0.1] * 3 + [-1.0] + [0.1, 1.0, 0.1])
                ns = _stamp(msg, base + n_joint / 100)
                joint_pub.publish(msg)
                sent[ns] = time.monotonic()
                n_joint += 1
            while n_img / 30 <= now:
                msg = Image(height=64, width=64, encoding="rgb8", step=192, data=pixels)
                ns = _stamp(msg, base + n_img / 30)
                img_pub.publish(msg)
                sent[ns] = max(sent.get(ns, 0.0), time.monotonic())
                n_img += 1
            time.sleep(0.001)
        time.sleep(2.0)
        e2e = sorted((arrived[s] - sent[s]) * 1e3 for s in arrived if s in sent)
        last = sync[-1] if sync else {}
        result = {
            "model": args.model, "seconds": args.seconds, "images_sent": n_img,
            "joint_states_sent": n_joint, "chunks_on_output": len(arrived),
            "matched_sets": int(last.get("matched_sets", 0)),
            "joint_state_unmatched": int(last.get("joint_state.unmatched", 0)),
            "image_unmatched": int(last.get("image.unmatched", 0)),
            "late": int(last.get("late", 0)),
            "e2e_ms_p50": float(np.percentile(e2e, 50)) if e2e else None,
            "e2e_ms_p99": float(np.percentile(e2e, 99)) if e2e else None,
            "command": "python scripts/ros/policy_rate.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v and k != "out"),
        }
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        proc.stop()
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
