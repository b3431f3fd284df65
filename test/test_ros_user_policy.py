"""save_node serving a policy from the user's own package (examples/user_policy.py, an import
path) on three topics, as a real process fed over DDS: a camera image, JointState and an
Int32MultiArray task id (an integer input, exact), bound to forward(image, state, task) by
`input_names` though the topics come in another order.

Two nodes: in the node's process (its first sets redo Selection as live calibration; bad
messages rejected with the input named; weight flips repaired), and `isolation: process`
calibrated from a rosbag of matched sets (the same chunks and verdicts from its worker; a worker
crash fails over with the three tensors re-run on the standby). Bad parameters exit with one
line. The tests of a module run in file order.
"""

import os
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
pytest.importorskip("trajectory_msgs", reason="trajectory_msgs is not installed")

from policy_client import PolicyClient, key, stamp  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Int32MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from save_ros.preprocess import ImageOptions  # noqa: E402
from save_ros.ros import convert  # noqa: E402
from save_ros.ros.bags import BagWriter  # noqa: E402
from save_ros.tools.process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
sys.path.insert(0, EXAMPLES)
import user_policy  # noqa: E402

CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "user_policy.yaml")
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
JOINT_RANGE = ",".join(f"{lo}:{hi}" for lo, hi in zip(user_policy.LOW, user_policy.HIGH,
                                                      strict=True))
# the topics in another order than forward(image, state, task): input_names binds them
TOPICS = {"joints": JointState, "task": Int32MultiArray, "image": Image}


def _quoted(values: list[str]) -> list[str]:
    """Strings as YAML flow items for `-p NAME:=[...]` (a ',' or ':' inside would split)."""
    return [f"'{v}'" for v in values]


OVERRIDES = {
    "input_topics": ["~/joints", "~/task", "~/image"],
    "input_types": ["joint_state", "int32_multi_array", "image"],
    "input_names": ["state", "task", "image"], "input_shapes": _quoted(["7", "1", "3,32,32"]),
    "input_ranges": _quoted([JOINT_RANGE, "int:0,3", ""]),
    # an Int32MultiArray has no header: the node stamps it on arrival, so the test stamps the
    # image and joint state ahead of their sending time and matches within a wide slop
    "sync.slop": 2.0, "qos.reliability": "reliable", "qos.depth": 100, "queue_size": 10,
    "queue_order": "fifo", "fault_injection.enabled": True, "fault_injection.count": 8,
    "fault_injection.seed": 3, "diagnostics_period": 0.2, "diagnostics.input_timeout": 0.0,
}
AHEAD = 1.0  # s: the image's stamp ahead of now (the newest of a set: the output's stamp)


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")])}


def _image(seed: int) -> Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image(height=32, width=32, encoding="rgb8", step=32 * 3, data=pixels.tobytes())


def _joints(seed: int, names=None) -> JointState:
    g = np.random.default_rng(seed + 100)
    low, high = np.array(user_policy.LOW), np.array(user_policy.HIGH)
    positions = low + (high - low) * g.uniform(0.1, 0.9, 7)
    order = list(reversed(JOINTS)) if names is None else names  # the message's own order
    return JointState(name=order, position=[float(positions[JOINTS.index(n)]) for n in order])


def _task(seed: int) -> Int32MultiArray:
    return Int32MultiArray(data=[seed % 4])


def _set(seed: int, t: float) -> tuple[JointState, Int32MultiArray, Image]:
    """The messages of one set (in TOPICS order), image stamped t, joints t - 0.05."""
    joints, image = _joints(seed), _image(seed)
    stamp(joints, t - 0.05)
    stamp(image, t)
    image.header.frame_id = "wrist_camera"
    return joints, _task(seed), image


def _send(client: PolicyClient, seed: int) -> tuple[int, int]:
    """Publish set `seed` now; the key its output and status carry."""
    t = time.time() + AHEAD
    joints, task, image = _set(seed, t)
    client.send(None, task, None)  # first: stamped on arrival, before the others' stamps
    client.send(joints, None, image)
    return key(t)


def _expected(seed: int) -> list[list[float]]:
    """The chunk of the plain policy on set `seed`, decoded as the node decodes (1 thread)."""
    from save_ros.preprocess import InputSpec

    image = convert.image_to_tensor(_image(seed), InputSpec((3, 32, 32), (0.0,) * 3,
                                                            (1.0,) * 3), ImageOptions())
    state = convert.joint_state_to_tensor(_joints(seed), InputSpec((7,), user_policy.LOW,
                                                                   user_policy.HIGH), JOINTS)
    task = torch.tensor([[seed % 4]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return user_policy.make_policy().eval()(image, state, task)[0].double().tolist()
    finally:
        torch.set_num_threads(threads)


def _chunk(msg) -> list[list[float]]:
    return [list(p.positions) for p in msg.points]


def _start(namespace: str, overrides: dict) -> tuple[NodeProcess, PolicyClient]:
    proc = NodeProcess(CONFIG, namespace=namespace, env=_env(),
                       overrides={**OVERRIDES, **overrides}).start()
    client = PolicyClient(proc.fqn, TOPICS)
    try:
        client.wait_ready(proc, timeout=180.0)
    except BaseException:
        client.close()
        proc.stop()
        raise
    return proc, client


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc, client = _start(f"user_policy_{os.getpid()}", {
        "calibration.live_samples": 3,
        "analysis_cache": str(tmp_path_factory.mktemp("up") / "user_policy.json")})
    try:
        yield proc, client
    finally:
        client.close()
        proc.stop()


def _wait_status(client: PolicyClient, ok, timeout: float = 30.0) -> dict[str, str]:
    """The first ~/fault_status whose key/values satisfy `ok` (a task id has no stamp)."""
    deadline = time.monotonic() + timeout
    with client.cond:
        while True:
            for msg in client.statuses:
                values = {kv.key: kv.value for kv in msg.status[0].values} | {
                    "_message": msg.status[0].message}
                if ok(values):
                    return values
            left = deadline - time.monotonic()
            assert left > 0, "no such ~/fault_status"
            client.cond.wait(min(left, 0.5))


CLEAN: dict[int, list[list[float]]] = {}


def test_three_topics_feed_the_forward_by_name_and_redo_selection_with_live_sets(node):
    proc, client = node
    for seed in range(4):
        k = _send(client, seed)
        out = client.wait_output(k, proc)
        assert out.joint_names == JOINTS and out.header.frame_id == "wrist_camera"
        assert _chunk(out) == _expected(seed)  # bit for bit: the policy on the decoded set
        status = client.wait_status(k)
        assert status["verified"] == "true" and status["published"] == "true", status
        CLEAN[seed] = _chunk(out)
    diag = client.wait_node_diag(lambda d: "redone" in d.get("calibration", ""))
    assert diag["calibration"] == "Selection redone with 3 live inputs"
    k = _send(client, 5)  # served under the plan of the live calibration
    assert _chunk(client.wait_output(k, proc)) == _expected(5)
    assert client.wait_status(k)["verified"] == "true"


def test_a_bad_message_is_rejected_with_its_input_named(node):
    proc, client = node
    client.send(None, Int32MultiArray(data=[7]), None)  # task ids are 0..3
    status = _wait_status(client, lambda v: "task: " in v["_message"])
    assert status["rejected"] == "true" and status["reject_kind"] == "out_of_range"
    assert "holds 7, outside its valid values [0, 3]" in status["_message"]
    client.send(None, Int32MultiArray(data=[1, 2]), None)
    status = _wait_status(client, lambda v: "Int32MultiArray has 2 values" in v["_message"])
    assert status["input"] == "task" and status["reject_kind"] == "shape"
    joints = _joints(0, names=JOINTS[:6])  # panda_joint7 missing
    t = time.time() + AHEAD
    stamp(joints, t)
    client.send(joints, None, None)
    status = client.wait_status(key(t))
    assert status["input"] == "state" and status["reject_kind"] == "names"
    assert "panda_joint7" in status["_message"]
    time.sleep(0.5)
    assert key(t) not in client.outputs
    proc.check_alive()


def test_weight_flips_are_repaired_and_the_chunks_equal_the_clean_ones(node):
    proc, client = node
    assert CLEAN, "runs after the first test"
    reply = client.call_inject()
    assert reply.success, reply.message
    detected = 0
    for seed, clean in CLEAN.items():
        k = _send(client, seed)
        assert _chunk(client.wait_output(k, proc)) == clean
        status = client.wait_status(k)
        assert status["verified"] == "true"
        detected += int(status.get("detected", 0))
    assert detected > 0


# -- isolation: process, calibrated from a bag -----------------------------------------------
BAG_SETS = 6


def _write_bag(path) -> None:
    """Matched sets under other topic names, one lone image, and one set whose joint state
    lacks a joint (rejected: its image and task never match)."""
    with BagWriter(path) as bag:
        for seed in range(BAG_SETS + 1):
            t = 100.0 + seed
            joints, task, image = _set(seed, t)
            if seed == BAG_SETS:
                joints = _joints(seed, names=JOINTS[:6])
                stamp(joints, t - 0.05)
            ns = round(t * 1e9)
            bag.write("/rec/task", task, ns - 10_000_000)  # no header: its bag time is its stamp
            bag.write("/rec/joint_states", joints, ns - 5_000_000)
            bag.write("/rec/wrist/image_raw", image, ns)
        lone = _image(50)
        stamp(lone, 200.0)
        bag.write("/rec/wrist/image_raw", lone, round(200e9))


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up_iso")
    _write_bag(tmp / "calib_bag")
    proc, client = _start(f"user_policy_iso_{os.getpid()}", {
        "isolation": "process", "isolation_hang_timeout_s": 5.0,
        "calibration.bag": str(tmp / "calib_bag"),
        # the joint states by name; the task id and image: the bag's only topic of their type
        "calibration.topics": ["/rec/joint_states", "", ""],
        "analysis_cache": str(tmp / "user_policy.json")})
    try:
        yield proc, client
    finally:
        client.close()
        proc.stop()


def test_isolated_workers_calibrated_from_a_bag_serve_the_same_chunks(isolated):
    proc, client = isolated
    log = proc.output()
    assert f"calibration: {BAG_SETS} inputs" in log, log[-3000:]
    assert "rejected 1 messages: 1 state (names); calibrating with 6 matched sets" in log, \
        log[:1500]
    for seed in range(2):
        k = _send(client, seed)
        assert _chunk(client.wait_output(k, proc, timeout=60.0)) == _expected(seed)
        status = client.wait_status(k)
        assert status["verified"] == "true" and "worker_pid" in status, status


def test_isolated_flips_are_repaired_and_a_crash_fails_over_with_the_set(isolated):
    proc, client = isolated
    assert client.call_inject().success
    k = _send(client, 2)
    assert _chunk(client.wait_output(k, proc, timeout=60.0)) == _expected(2)
    status = client.wait_status(k)
    assert status["verified"] == "true" and int(status["detected"]) > 0, status
    crash = client.node.create_client(Trigger, f"{proc.fqn}/inject_crash")
    assert crash.wait_for_service(timeout_sec=10.0)
    reply = crash.call_async(Trigger.Request())
    deadline = time.monotonic() + 30.0
    while not reply.done():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert reply.result().success, reply.result().message
    k = _send(client, 3)  # the crash takes it down; the standby re-runs the three tensors
    assert _chunk(client.wait_output(k, proc, timeout=90.0)) == _expected(3)
    status = client.wait_status(k)
    assert status["failover"] == "true" and status["verified"] == "true", status
    proc.check_alive()


# -- bad parameters: one line, the exit code, no traceback ----------------------------------
@pytest.mark.parametrize("change, code, line", [
    ({"input_names": ["state", "task", "camera"]}, 3,
     "input_names ['camera'] name no parameter of user_policy:make_policy.forward "
     "(image, state, task)"),
    ({"input_ranges": _quoted(["", "int:0,3", ""])}, 3,
     "input 'state' needs a range in input_ranges"),
    ({"input_shapes": _quoted(["6", "1", "3,32,32"]),
      "input_ranges": _quoted(["-1,1", "int:0,3", ""])}, 3,
     "fails on inputs of shapes (1, 3, 32, 32), (1, 6), (1, 1)"),
    ({"input_shapes": _quoted(["7", "3,32,32"])}, 2,
     "input_shapes has 2 entries for 3 input_topics"),
    ({"input_types": ["joint_state", "float32_multi_array", "image"]}, 2,
     "input 'task' (topic ~/task, float32_multi_array) is an integer input: give it an "
     "int32_multi_array topic"),
])
def test_bad_policy_parameters_exit_with_one_line(change, code, line):
    proc = NodeProcess(CONFIG, namespace=f"up_bad_{os.getpid()}", env=_env(),
                       overrides={**OVERRIDES, **change, "analysis_cache": ""}).start()
    try:
        assert proc.proc.wait(timeout=120) == code, proc.output()[-2000:]
    finally:
        proc.stop()
    out = proc.output()
    assert line in out, out[-2000:]
    assert "Traceback" not in out
