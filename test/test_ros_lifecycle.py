"""save_node as a managed node, over DDS: lifecycle transitions, freshness, stale-input warning.

The node runs as a process with `autostart: false`; the test drives it through the standard
lifecycle services (`~/change_state`, `~/get_state`) as a lifecycle manager would.
"""

import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rosutil import set_parameter, string_value  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from save_ros.tools.client import ReplayClient, stamp_key  # noqa: E402
from save_ros.tools.process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
BYOM = os.path.join(os.path.dirname(__file__), "byom")


def _call(client: ReplayClient, srv_type, name: str, request, timeout: float = 120.0):
    srv = client.node.create_client(srv_type, f"{client.fqn}/{name}")
    assert srv.wait_for_service(timeout_sec=30.0), f"{name} not offered"
    done = threading.Event()
    future = srv.call_async(request)
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), f"{name} did not answer"
    return future.result()


def _state(client: ReplayClient) -> str:
    return _call(client, GetState, "get_state", GetState.Request()).current_state.label


def _change(client: ReplayClient, transition: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition
    return _call(client, ChangeState, "change_state", request).success


def _frames(count: int, base: int) -> list[Image]:
    rng = np.random.default_rng(base)
    out = []
    for i in range(count):
        msg = Image(height=16, width=16, encoding="rgb8", step=48,
                    data=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8).tobytes())
        msg.header.stamp.sec, msg.header.stamp.nanosec = base, i * 33_333_333  # 30 Hz
        out.append(msg)
    return out


@pytest.fixture(scope="module")
def managed():
    """A slow (0.1 s per inference, bare) model from the user's module, not started."""
    env = {"PYTHONPATH": os.pathsep.join([BYOM, os.environ.get("PYTHONPATH", "")])}
    proc = NodeProcess(None, namespace=f"lifecycle_{os.getpid()}", env=env, overrides={
        "autostart": False, "model": "robot_nets:SlowNet", "input_shape": [3, 16, 16],
        "protect": False, "diagnostics_period": 0.2, "diagnostics.input_timeout": 0.5}).start()
    try:
        with ReplayClient(node_fqn=proc.fqn, reliability="best_effort") as client:
            deadline = time.monotonic() + 60
            while not client.node.create_client(GetState, f"{proc.fqn}/get_state") \
                    .wait_for_service(timeout_sec=1.0):
                proc.check_alive()
                assert time.monotonic() < deadline, proc.output()
            yield proc, client
    finally:
        proc.stop()


def test_transitions_over_the_lifecycle_services(managed):
    proc, client = managed
    from lifecycle_msgs.msg import TransitionEvent
    from rclpy.qos import QoSProfile

    events: list[tuple[str, str]] = []  # (start, goal), as launch_ros's LifecycleNode reads them
    sub = client.node.create_subscription(
        TransitionEvent, f"{proc.fqn}/transition_event",
        lambda e: events.append((e.start_state.label, e.goal_state.label)), QoSProfile(depth=100))
    deadline = time.monotonic() + 30
    while not sub.get_publisher_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(client) == "unconfigured"
    assert client.pub.get_subscription_count() == 0  # nothing subscribed before activate
    assert client.call("recover").message.startswith("not configured")
    assert _change(client, Transition.TRANSITION_CONFIGURE)
    assert _state(client) == "inactive"
    deadline = time.monotonic() + 10
    while ("configuring", "inactive") not in events and time.monotonic() < deadline:
        time.sleep(0.1)
    assert events[-2:] == [("unconfigured", "configuring"), ("configuring", "inactive")], events
    time.sleep(0.5)
    assert client.pub.get_subscription_count() == 0
    assert _change(client, Transition.TRANSITION_ACTIVATE)
    assert _state(client) == "active"
    client.wait_for_node(proc, timeout=30.0)
    result = client.replay(_frames(3, 10), pace="lockstep")
    assert all(result.final_output(stamp_key(f.header)) for f in _frames(3, 10))
    assert _change(client, Transition.TRANSITION_DEACTIVATE)
    assert _state(client) == "inactive"
    deadline = time.monotonic() + 10
    while client.pub.get_subscription_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.pub.get_subscription_count() == 0  # unsubscribed while inactive
    assert _change(client, Transition.TRANSITION_CLEANUP)
    assert _state(client) == "unconfigured"
    # configure and activate again: a lifecycle manager restarts a node this way
    assert _change(client, Transition.TRANSITION_CONFIGURE)
    assert _change(client, Transition.TRANSITION_ACTIVATE)
    client.wait_for_node(proc, timeout=30.0)
    again = client.replay(_frames(2, 20), pace="lockstep")
    assert all(again.final_output(stamp_key(f.header)) for f in _frames(2, 20))
    proc.check_alive()


def test_newest_input_first_drops_stale_ones_and_answers_each(managed):
    _, client = managed
    burst = _frames(30, 30)  # 30 Hz into a 0.1 s model: about 2 of 3 must be dropped
    result = client.replay(burst, pace="rate", rate=1.0, settle=1.5)
    keys = sorted(result.sent)
    statuses = [s for k in keys if (s := result.final_status(k)) is not None]
    counters = result.diagnostics[-1]
    received = int(counters["received"]) - int(result.counters_before["received"])
    # DDS (depth 1, best effort) may drop a frame before the node; every one it got is answered
    assert len(statuses) == received > 0
    dropped = [s for s in statuses if s.get("dropped") == "true"]
    inferred = [s for s in statuses if s.get("dropped") != "true"]
    assert dropped and {s["drop_reason"] for s in dropped} == {"superseded"}
    assert len(inferred) < received  # a 0.1 s model cannot keep up with 30 Hz
    assert result.final_output(keys[-1]) is not None  # the newest is always served
    assert int(counters["dropped_superseded"]) - int(
        result.counters_before.get("dropped_superseded", 0)) == len(dropped)
    assert float(counters["rate_hz"]) >= 0.0


def test_queue_size_and_order_are_settable_at_runtime(managed):
    _, client = managed
    size = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=100)
    assert set_parameter(client, "queue_size", size).successful
    assert set_parameter(client, "queue_order", string_value("fifo")).successful
    try:
        burst = _frames(10, 40)
        # 15 Hz into a 0.1 s model: a queue of one would drop about a third, fifo 100 none
        result = client.replay(burst, pace="rate", rate=0.5, settle=2.0)
        # the node's queue is under test, not DDS: a frame the depth-1 best-effort input
        # subscription never delivered gets no status; every frame that reached the node
        # (it has a status) must be served in order, none dropped by the queue
        reached = [k for k in result.sent if result.final_status(k)]
        assert len(reached) >= 3, f"only {len(reached)} of 10 frames reached the node"
        assert all(result.final_output(k) for k in reached)
        assert not [k for k in reached if result.final_status(k).get("dropped") == "true"]
    finally:
        one = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=1)
        set_parameter(client, "queue_size", one)
        set_parameter(client, "queue_order", string_value("newest_first"))


def test_no_input_warns_stale_and_input_brings_it_back(managed):
    _, client = managed
    time.sleep(1.0)  # > diagnostics.input_timeout (0.5 s) without input
    stale = client.latest_diagnostics()
    assert stale["_level"] == "1" and "no input for" in stale["_message"]
    # the timeout is a runtime parameter; an input clears the warning
    timeout = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=5.0)
    assert set_parameter(client, "diagnostics.input_timeout", timeout).successful
    client.replay(_frames(1, 50), pace="lockstep", settle=0.2)
    fresh = client.latest_diagnostics()
    assert "no input for" not in fresh["_message"]


def test_shutdown_transition_finalizes(managed):
    proc, client = managed
    assert _change(client, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    # finalized: the process ends by itself, as a launch file would have it
    assert proc.proc.wait(60) == 0
    assert "Traceback" not in proc.output()

