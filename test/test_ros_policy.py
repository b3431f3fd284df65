"""save_node serving a policy of two inputs as a real process, fed over DDS: a camera image and
joint states matched in time -> a JointTrajectory action chunk; unmatched and late messages
counted on /diagnostics; a weight flip repaired with the chunk unchanged.

One node for the module (config/visuomotor_policy.yaml with the zoo's `visuomotor_tiny`: the
same two inputs at 64 px); the tests run in file order.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
pytest.importorskip("trajectory_msgs", reason="trajectory_msgs is not installed")

from policy_client import PolicyClient  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from save_ros.models import zoo  # noqa: E402
from save_ros.preprocess import ImageOptions  # noqa: E402
from save_ros.ros import convert, model_source  # noqa: E402
from save_ros.tools.process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "visuomotor_policy.yaml")
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
PERIOD = 0.04  # control_period given to the node
SLOP = 0.02
T0 = 1000  # s: the first stamp of the test's sets


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "save_ros_analysis" / "visuomotor_tiny.json"
    proc = NodeProcess(CONFIG, namespace=f"test_policy_{os.getpid()}", overrides={
        "model": "visuomotor_tiny", "input_topics": ["~/image", "~/joint_states"],
        "qos.reliability": "reliable", "qos.depth": 100, "queue_size": 10,
        "queue_order": "fifo", "control_period": PERIOD, "sync.slop": SLOP,
        "fault_injection.enabled": True, "fault_injection.count": 8,
        "fault_injection.seed": 3, "diagnostics_period": 0.2, "analysis_cache": str(cache),
    }).start()
    client = PolicyClient(proc.fqn, {"image": Image, "joint_states": JointState})
    try:
        client.wait_ready(proc)
        yield proc, client
    finally:
        client.close()
        proc.stop()


def _stamp(msg, t: float) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), round((t % 1) * 1e9)


def _image(seed: int, t: float) -> Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    msg = Image(height=64, width=64, encoding="rgb8", step=64 * 3, data=pixels.tobytes())
    _stamp(msg, t)
    msg.header.frame_id = "wrist_camera"
    return msg


def _joints(seed: int, t: float, names=None) -> JointState:
    g = np.random.default_rng(seed + 100)
    low, high = np.array(zoo.input_boxes("visuomotor_tiny")[1])
    positions = low + (high - low) * g.uniform(0.1, 0.9, 7)
    order = list(reversed(JOINTS)) if names is None else names  # the message's own order
    msg = JointState(name=order, position=[float(positions[JOINTS.index(n)]) for n in order])
    _stamp(msg, t)
    return msg


def _key(t: float) -> tuple[int, int]:
    return int(t), round((t % 1) * 1e9)


def _expected(seed: int) -> torch.Tensor:
    """The chunk the unprotected model gives for pair `seed`, decoded as the node decodes."""
    loaded = model_source.load(model_source.ModelRequest(model="visuomotor_tiny"))
    image = convert.image_to_tensor(_image(seed, 0.0), loaded.inputs[0], ImageOptions())
    joints = convert.joint_state_to_tensor(_joints(seed, 0.0), loaded.inputs[1], JOINTS)
    with torch.no_grad():
        return loaded.module(image, joints)[0].double()


CLEAN: dict[int, list[list[float]]] = {}


def test_matched_pairs_give_a_joint_trajectory_stamped_with_the_newest_input(node):
    proc, client = node
    for seed in range(4):
        t = T0 + seed
        # the joint state 5 ms after the image: the newest stamp of the set
        client.send(_image(seed, t), _joints(seed, t + 0.005))
        out = client.wait_output(_key(t + 0.005), proc)
        assert out.joint_names == JOINTS
        assert len(out.points) == 4
        for k, point in enumerate(out.points):
            ns = round((k + 1) * PERIOD * 1e9)
            assert (point.time_from_start.sec, point.time_from_start.nanosec) == divmod(ns, 10**9)
            assert len(point.positions) == 7
        chunk = [list(p.positions) for p in out.points]
        assert torch.allclose(torch.tensor(chunk, dtype=torch.float64), _expected(seed),
                              atol=1e-5)
        status = client.wait_status(_key(t + 0.005))
        assert status["verified"] == "true" and status["published"] == "true"
        CLEAN[seed] = chunk
    assert len(client.outputs) == 4


def test_unmatched_and_late_messages_are_counted_never_mixed(node):
    proc, client = node
    t = T0 + 10
    client.send(_image(0, t), None)  # no joint state within the slop: waits
    client.send(None, _joints(1, t + 1.0))  # 1 s later: no image near it
    client.send(None, _joints(2, t + 2.0))
    client.send(_image(2, t + 2.0 + SLOP / 2), None)  # matches the joints at t + 2
    client.wait_output(_key(t + 2.0 + SLOP / 2), proc)
    client.send(_image(3, t + 1.5), None)  # older than the image just served: late
    client.send(None, _joints(0, t + 3.0, names=JOINTS[:6]))  # panda_joint7 missing
    status = client.wait_status(_key(t + 3.0))
    assert status["rejected"] == "true" and status["reject_kind"] == "names"
    assert "panda_joint7" in status["_message"]
    diag = client.wait_sync(lambda d: int(d["image.late"]) >= 1)
    assert int(diag["image.unmatched"]) >= 1 and int(diag["joint_state.unmatched"]) >= 1
    assert int(diag["matched_sets"]) == 5
    for stamp in (t, t + 1.0, t + 1.5):
        assert _key(stamp) not in client.outputs  # nothing of an unmatched message went out
    proc.check_alive()


def test_an_injected_weight_flip_is_repaired_and_the_chunk_equals_the_clean_one(node):
    proc, client = node
    assert CLEAN, "runs after the matched-pairs test"
    reply = client.call_inject()
    assert reply.success, reply.message
    detected = 0
    for seed, clean in CLEAN.items():
        t = T0 + 100 + seed
        client.send(_image(seed, t), _joints(seed, t + 0.005))
        out = client.wait_output(_key(t + 0.005), proc)
        assert [list(p.positions) for p in out.points] == clean  # exactly the clean chunk
        status = client.wait_status(_key(t + 0.005))
        assert status["verified"] == "true"
        detected += int(status.get("detected", 0))
    assert detected > 0  # the flips were found (and repaired: the chunks are clean)


def test_save_ros_watch_shows_the_chunks(node):
    """What the README tells a user to run (the PyPI install has no `ros2 topic echo`)."""
    proc, client = node
    watch = subprocess.Popen([sys.executable, "-m", "save_ros.cli", "watch", proc.fqn,
                              "--once", "--seconds", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seed, deadline = 0, time.monotonic() + 60
        while watch.poll() is None and time.monotonic() < deadline:
            t = T0 + 200 + seed
            client.send(_image(seed % 4, t), _joints(seed % 4, t + 0.005))
            seed += 1
            time.sleep(0.5)
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith(f"watching {proc.fqn}: {proc.fqn}/output "
                               "(trajectory_msgs/msg/JointTrajectory)")
    assert any(ln.startswith("output ") for ln in lines), lines
