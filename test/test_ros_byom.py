"""Bring your own model: save_node serves, protected, a network from the user's own module and an
exported .pt2 program, from an rgb8 stream, as a real process over DDS.

Each result on ~/output must equal, bit for bit, the plain model on the same preprocessed input
(the preprocessing is `save_ros.preprocess`, the same code the node runs).
"""

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from sensor_msgs.msg import Image  # noqa: E402

from save_ros.preprocess import ImageOptions, InputSpec, RawImage, Resize, image_to_input  # noqa: E402,I001
from save_ros.tools.client import ReplayClient, stamp_key  # noqa: E402
from save_ros.tools.process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
BYOM = os.path.join(os.path.dirname(__file__), "byom")
sys.path.insert(0, BYOM)
import robot_nets  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPTIONS = ImageOptions(resize=Resize.LETTERBOX, mean=MEAN, std=STD)
SPEC = InputSpec(shape=(3, 16, 16), low=tuple(-m / s for m, s in zip(MEAN, STD, strict=True)),
                 high=tuple((1 - m) / s for m, s in zip(MEAN, STD, strict=True)))
COMMON = {"input_type": "image", "preprocess.resize": "letterbox",
          "preprocess.mean": list(MEAN), "preprocess.std": list(STD),
          "output_names": ["red", "green", "blue", "none"], "publish_policy": "verified",
          "qos.reliability": "reliable", "qos.depth": 10, "queue_order": "fifo",
          "queue_size": 10, "diagnostics.input_timeout": 0.0}


def _frames(count: int) -> list[Image]:
    """rgb8 frames of 40 x 24 (another aspect than the model's 16 x 16), seeded."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
        msg = Image(height=24, width=40, encoding="rgb8", step=120, data=pixels.tobytes())
        msg.header.stamp.sec, msg.header.frame_id = 100 + i, "arm_cam"
        out.append(msg)
    return out


def _serve(model: str, overrides: dict, tmp_path, name: str) -> tuple[dict, str]:
    """Run the frames through a protected node; outputs and statuses by stamp, node output."""
    env = {"PYTHONPATH": os.pathsep.join([BYOM, os.environ.get("PYTHONPATH", "")])}
    proc = NodeProcess(None, namespace=f"byom_{name}_{os.getpid()}", env=env, overrides={
        **COMMON, **overrides, "model": model,
        "analysis_cache": str(tmp_path / f"{name}.analysis.json")}).start()
    frames = _frames(6)
    try:
        with ReplayClient(node_fqn=proc.fqn, reliability="reliable") as client:
            client.wait_for_node(proc, timeout=120.0)
            result = client.replay(frames, pace="lockstep")
    finally:
        code = proc.stop()
    assert code == 0, proc.output()[-2000:]
    return {"frames": frames, "result": result}, proc.output()


def _check(served: dict, module: torch.nn.Module) -> None:
    result = served["result"]
    with torch.no_grad():
        for frame in served["frames"]:
            raw = RawImage(frame.encoding, frame.height, frame.width, frame.step,
                           bytes(frame.data))
            expected = module(image_to_input(raw, SPEC, OPTIONS))[0]
            key = stamp_key(frame.header)
            status = result.final_status(key)
            assert status["verified"] == "true", status
            assert len(result.outputs[key]) == 1  # ~/output carries each result once
            got = torch.tensor(result.final_output(key), dtype=torch.float32)
            assert torch.equal(got, expected), (got - expected).abs().max()


def test_a_model_from_the_users_own_module_is_served_protected(tmp_path):
    served, log = _serve("robot_nets:tiny_color_net", {"input_shape": [3, 16, 16]}, tmp_path,
                         "module")
    assert "SAVE-protected on cpu" in log and "import" in log
    _check(served, robot_nets.tiny_color_net().eval())


def test_an_exported_pt2_program_is_served_protected(tmp_path):
    model = robot_nets.tiny_color_net().eval()
    path = tmp_path / "tiny_color_net.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 16, 16),)), path)
    served, log = _serve(str(path), {}, tmp_path, "export")
    assert "SAVE-protected on cpu" in log and "export" in log
    _check(served, model)


def test_a_non_finite_output_is_a_model_problem_not_a_fault(tmp_path):
    """log(mean) of a black frame is -inf: not published, ERROR that says so, no fault."""
    env = {"PYTHONPATH": os.pathsep.join([BYOM, os.environ.get("PYTHONPATH", "")])}
    proc = NodeProcess(None, namespace=f"byom_nan_{os.getpid()}", env=env, overrides={
        "model": "robot_nets:LogMeanNet", "input_shape": [3, 16, 16],
        "diagnostics.input_timeout": 0.0, "qos.reliability": "reliable",
        "analysis_cache": str(tmp_path / "nan.json")}).start()
    black, grey = _frames(2)
    black.data = bytes(len(black.data))
    try:
        with ReplayClient(node_fqn=proc.fqn, reliability="reliable") as client:
            client.wait_for_node(proc, timeout=120.0)
            result = client.replay([black, grey], pace="lockstep")
            counters = client.latest_diagnostics()
    finally:
        assert proc.stop() == 0
    status = result.final_status(stamp_key(black.header))
    assert status["_level"] == "2" and "model/input problem" in status["_message"]
    assert status["published"] == "false" and stamp_key(black.header) not in result.outputs
    assert result.final_output(stamp_key(grey.header)) is not None
    assert counters["faults_detected"] == "0" and counters["unrepaired"] == "0"
    assert counters["nonfinite_outputs"] == "1"


def test_results_that_stay_unverified_never_reach_output(tmp_path):
    """A fault that persists through re-runs (StuckCellNet: a memory cell of the head's
    output flips on every write, re-runs included): each input is answered ERROR, unverified,
    and nothing at all is published on ~/output."""
    served, log = _serve("robot_nets:StuckCellNet", {"input_shape": [3, 16, 16]}, tmp_path,
                         "noisy")
    result = served["result"]
    stamps = [stamp_key(f.header) for f in served["frames"]]
    for stamp in stamps:
        status = result.final_status(stamp)
        assert status is not None, stamp
        assert status["verified"] == "false" and status["published"] == "false", status
        assert status["_level"] == "2" and status.get("rejected") != "true", status
    assert not result.outputs, "an unverified result was published on ~/output"
    assert result.summary()["unverified"] == len(stamps)
