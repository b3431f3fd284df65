"""`save-ros serve` is save_node: started as a process, it serves the same results and exits 0."""

import os
import sys

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from rosutil import digits_frames  # noqa: E402

from save_ros.tools.client import ReplayClient, stamp_key  # noqa: E402
from save_ros.tools.process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn.yaml")


def test_serve_answers_every_input_and_stops_cleanly(tmp_path_factory) -> None:
    cache = tmp_path_factory.getbasetemp() / "save_ros_analysis" / "digits_cnn.json"
    proc = NodeProcess(CONFIG, namespace=f"serve_{os.getpid()}",
                       overrides={"analysis_cache": str(cache)},
                       launcher=[sys.executable, "-m", "save_ros.cli", "serve"])
    assert proc.command()[:4] == [sys.executable, "-m", "save_ros.cli", "serve"]
    frames = digits_frames(3)
    proc.start()
    try:
        with ReplayClient(node_fqn=proc.fqn, input_topic="~/input",
                          input_type="image") as client:
            client.wait_for_node(proc, timeout=90.0)
            result = client.replay(frames, pace="lockstep")
    finally:
        code = proc.stop()
    assert sorted(result.outputs) == sorted(stamp_key(f.header) for f in frames)
    assert all(s[-1][1]["verified"] == "true" for s in result.statuses.values())
    assert code == 0, proc.output()[-2000:]
    assert "Traceback" not in proc.output()
