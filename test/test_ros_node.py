"""save_node as a real process, reached only over DDS: results, bad input, faults, services.

One node per module (starting it protects the model, which takes seconds); the tests run in
file order and the last one stops it with SIGTERM.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosutil import digits_frames, running_node, set_parameter, string_value  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from save_ros import models  # noqa: E402
from save_ros.ros import convert  # noqa: E402
from save_ros.tools.client import ReplayResult, stamp_key  # noqa: E402

pytestmark = pytest.mark.ros
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn.yaml")
DIGITS = convert.InputSpec(shape=(1, 8, 8), low=(0.0,), high=(1.0,))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A protected digits_cnn node with fault injection on, in a namespace of its own."""
    with running_node(CONFIG, f"test_node_{os.getpid()}", {
        "fault_injection.enabled": True, "fault_injection.count": 64,
        "fault_injection.seed": 7, "queue_size": 2,
        "qos.depth": 100,
        "diagnostics_period": 0.2,
    }, tmp_path_factory) as started:
        yield started


@pytest.fixture(scope="module")
def frames():
    return digits_frames(12)


def _frame(stamp_sec: int, encoding: str = "mono8", size: int = 64, fill=None) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.frame_id = stamp_sec, "test_cam"
    dtype = np.float32 if encoding == "32FC1" else np.uint8
    pixels = np.full((size, size), 0 if fill is None else fill, dtype=dtype)
    msg.height = msg.width = size
    msg.encoding, msg.step = encoding, size * pixels.itemsize
    msg.data = pixels.tobytes()
    return msg


def test_outputs_carry_input_stamp_and_frame_and_match_the_model(node, frames):
    _, client = node
    result = client.replay(frames[:6], pace="lockstep")
    assert sorted(result.outputs) == sorted(stamp_key(f.header) for f in frames[:6])
    frames_out = {m.header.frame_id for topic, _, m in result.recorded if topic.endswith("output")}
    assert frames_out == {"camera"}
    model = models.load("digits_cnn")
    with torch.no_grad():
        for frame in frames[:6]:
            expected = model(convert.image_to_tensor(frame, DIGITS))[0]
            got = torch.tensor(result.final_output(stamp_key(frame.header)))
            assert torch.allclose(got, expected, atol=1e-5)
            assert result.final_status(stamp_key(frame.header))["verified"] == "true"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_frame(101, encoding="yuv422"), "unsupported image encoding"),
        (_frame(102, encoding="32FC1", size=8, fill=np.nan), "NaN"),
        # finite but huge: outside the declared [0, 1] box, an input error (it was a "fault")
        (_frame(103, encoding="32FC1", size=8, fill=3e38), "outside the declared box"),
    ],
)
def test_bad_input_is_rejected_with_a_status_and_the_node_keeps_serving(node, frames, frame,
                                                                        reason):
    proc, client = node
    result = client.replay([frame, frames[0]], pace="lockstep", settle=0.5)
    status = result.final_status(stamp_key(frame.header))
    assert status["rejected"] == "true" and reason in status["_message"]
    assert status["_level"] == "2"  # ERROR for that input
    assert stamp_key(frame.header) not in result.outputs
    assert result.final_output(stamp_key(frames[0].header)) is not None
    counters = client.latest_diagnostics()
    assert counters["faults_detected"] == "0" and counters["unrepaired"] == "0"
    proc.check_alive()


def test_8uc1_is_served_like_mono8(node, frames):
    _, client = node
    generic = Image(height=frames[2].height, width=frames[2].width, encoding="8UC1",
                    step=frames[2].step, data=frames[2].data)
    generic.header.stamp.sec = frames[2].header.stamp.sec + 7000  # a copy: frames are shared
    result = client.replay([frames[2], generic], pace="lockstep")
    assert result.final_output(stamp_key(generic.header)) == \
        result.final_output(stamp_key(frames[2].header))


def test_truncated_image_data_is_rejected(node, frames):
    proc, client = node
    bad = _frame(104)
    bad.data = bytes(100)
    result = client.replay([bad, frames[1]], pace="lockstep", settle=0.5)
    assert "step*height" in result.final_status(stamp_key(bad.header))["_message"]
    assert result.final_output(stamp_key(frames[1].header)) is not None
    proc.check_alive()


def test_a_flood_drops_oldest_inputs_counts_them_and_survives(node, frames):
    proc, client = node
    flood = []
    for i in range(300):  # 1 kHz: the intake keeps up, inference (ms per input) cannot
        msg = _frame(1000)
        msg.header.stamp.nanosec = i * 1_000_000
        msg.data = frames[i % len(frames)].data
        flood.append(msg)
    result = client.replay(flood, pace="rate", rate=1.0, settle=1.0)
    summary = result.summary()
    counters = result.diagnostics[-1]
    assert summary["dropped"] > 0  # queue_size is 2
    assert summary["outputs"] < 300
    dropped_status = [s for s in (result.final_status(k) for k in result.sent) if s
                      and s.get("dropped") == "true"]
    assert len(dropped_status) == summary["dropped"]  # each drop is reported, stamped
    # every input that reached the node was either inferred or dropped, none went missing
    received = int(counters["received"]) - int(result.counters_before["received"])
    inferred = int(counters["inferred"]) - int(result.counters_before["inferred"])
    assert received == inferred + summary["dropped"]
    after = client.replay(frames[:2], pace="lockstep")
    assert all(after.final_output(stamp_key(f.header)) is not None for f in frames[:2])
    proc.check_alive()


def test_injected_faults_are_detected_repaired_and_results_unchanged(node, frames):
    _, client = node
    clean = client.replay(frames, pace="lockstep")
    reply = client.call("inject_faults")
    assert reply.success and '"flips": 64' in reply.message
    faulty = client.replay(frames, pace="lockstep")
    statuses = [faulty.final_status(stamp_key(f.header)) for f in frames]
    assert int(statuses[0]["detected"]) > 0 and int(statuses[0]["repaired"]) > 0
    assert statuses[0]["_level"] == "1"  # WARN: detected and repaired
    assert all(s["verified"] == "true" for s in statuses)
    for f in frames:
        assert faulty.final_output(stamp_key(f.header)) == clean.final_output(stamp_key(f.header))
    levels = [d["_level"] for d in faulty.diagnostics]
    assert "1" in levels  # /diagnostics went to WARN
    assert int(faulty.diagnostics[-1]["faults_detected"]) > 0


def test_immediate_adds_a_provisional_topic_and_output_stays_once_per_input(node, frames):
    _, client = node
    provisional: list[int] = []
    sub = client.node.create_subscription(
        JointState, f"{client.fqn}/provisional_output",
        lambda m: provisional.append(stamp_key(m.header)),
        QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    assert set_parameter(client, "publish_policy", string_value("immediate")).successful
    try:
        deadline = time.monotonic() + 10
        while not sub.get_publisher_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.call("inject_faults").success
        result = client.replay(frames, pace="lockstep")
        time.sleep(0.3)
        for f in frames:
            key = stamp_key(f.header)
            # ~/output: each result once, verified or repaired (it was twice, changed class)
            assert len(result.outputs[key]) == 1
            assert result.final_status(key)["verified"] == "true"
        assert {stamp_key(f.header) for f in frames} <= set(provisional)
        assert int(result.final_status(stamp_key(frames[0].header))["detected"]) > 0
    finally:
        set_parameter(client, "publish_policy", string_value("verified"))
        client.call("recover")
        client.node.destroy_subscription(sub)


def test_recover_service_restores_injected_weights(node, frames):
    _, client = node
    assert client.call("inject_faults").success
    reply = client.call("recover")
    assert reply.success and reply.message.startswith("restored ")
    result = client.replay(frames[:3], pace="lockstep")
    assert all(result.final_status(stamp_key(f.header))["detected"] == "0" for f in frames[:3])
    assert client.call("recover").message == "all weights match their golden copies"


def test_services_answer_while_inference_runs(node, frames):
    _, client = node
    stream = threading.Thread(target=client.replay, args=(frames * 4,),
                              kwargs={"pace": "rate", "rate": 1.0, "settle": 0.5})
    stream.start()
    try:
        reply = client.call("reanalyze", timeout=60.0)
        recover = client.call("recover")
    finally:
        stream.join()
    assert reply.success and "reliable pool" in reply.message
    assert recover.success


def test_runtime_parameter_changes_are_validated(node):
    _, client = node

    bad = set_parameter(client, "publish_policy", string_value("sometimes"))
    assert not bad.successful and "publish_policy" in bad.reason and "verified" in bad.reason
    read_only = set_parameter(client, "model", string_value("digits_vit"))
    assert not read_only.successful and "read-only" in read_only.reason
    zero = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=0)
    out_of_range = set_parameter(client, "fault_injection.count", zero)
    assert not out_of_range.successful
    assert set_parameter(client, "publish_policy", string_value("verified")).successful
    assert set_parameter(client, "publish_policy", string_value("immediate")).successful


def test_sigterm_shuts_down_cleanly_and_reports_every_inference(node, frames):
    proc, client = node
    client.result = ReplayResult()
    for i in range(20):  # in flight when the signal arrives
        msg = _frame(5000 + i)
        msg.data = frames[i % len(frames)].data
        client.pub.publish(msg)
    assert proc.stop(signal.SIGTERM) == 0
    assert "shutting down" in proc.output()
    time.sleep(1.0)
    with client._cond:
        outputs, statuses = set(client.result.outputs), set(client.result.statuses)
    # every result that went out has its verdict (verified, or reported unverified at shutdown)
    assert outputs <= statuses
