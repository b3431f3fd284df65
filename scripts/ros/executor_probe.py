"""How many of N messages at R Hz does an rclpy subscriber get, per executor kind?

    python scripts/ros/executor_probe.py [--count 150] [--rate 30] [--depth 1]

A publisher (this process) sends `--count` 16x16 rgb8 Images at `--rate` Hz with a reliable,
keep-last `--depth` QoS to a subscriber in a child process that does nothing but count, spun by
a SingleThreadedExecutor, then by a MultiThreadedExecutor (6 threads). This is why save_node
takes its input on a helper node spun by a single-threaded executor (docs/results/ros_node.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SUB = r"""
import sys, threading, time, rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
n = Node("executor_probe_sub")
got = []
n.create_subscription(Image, "/executor_probe", lambda m: got.append(time.monotonic()),
                      QoSProfile(depth=int(sys.argv[2]), reliability=ReliabilityPolicy.RELIABLE))
ex = SingleThreadedExecutor() if sys.argv[1] == "single" else MultiThreadedExecutor(6)
ex.add_node(n)
threading.Timer(float(sys.argv[3]), lambda: ex.shutdown(timeout_sec=0)).start()
try:
    ex.spin()
except Exception:
    pass
gaps = sorted(b - a for a, b in zip(got, got[1:]))
print(len(got), round(1e3 * gaps[-1], 1) if gaps else 0.0, flush=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--depth", type=int, default=1)
    args = ap.parse_args()
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = Node("executor_probe_pub")
    pub = node.create_publisher(Image, "/executor_probe",
                                QoSProfile(depth=args.depth,
                                           reliability=ReliabilityPolicy.RELIABLE))
    msg = Image(height=16, width=16, encoding="rgb8", step=48, data=bytes(16 * 16 * 3))
    span = args.count / args.rate + 6.0
    for kind in ("single", "multi"):
        child = subprocess.Popen([sys.executable, "-c", SUB, kind, str(args.depth), str(span)],
                                 stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        while pub.get_subscription_count() == 0:
            time.sleep(0.05)
        time.sleep(1.0)  # matched both ways
        t0 = time.monotonic()
        for i in range(args.count):
            time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
            pub.publish(msg)
        got, gap = child.communicate(timeout=span + 30)[0].split()
        print(f"{kind}-threaded executor: received {got} of {args.count} at {args.rate:g} Hz "
              f"(depth {args.depth}); longest gap between callbacks {gap} ms", flush=True)
        while pub.get_subscription_count() > 0:
            time.sleep(0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
