"""save_node with isolation=process, a real process over DDS: a worker crash does not stop it.

The model runs in a worker process with a warm standby; `~/inject_crash` makes the active worker
really crash (SIGSEGV, or a hang the watchdog catches) on its next inference while inputs keep
arriving. The node must stay up, answer every input it was sent with the fault-free output under
the input's stamp, and say on /diagnostics that a worker crashed.
"""

import os
import threading
import time

import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

import rclpy.context  # noqa: E402
from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosutil import digits_frames, running_node, set_parameter, string_value  # noqa: E402

from save_ros import models  # noqa: E402
from save_ros.ros import convert  # noqa: E402
from save_ros.ros.backend import BackendError  # noqa: E402
from save_ros.ros.node import SaveNode  # noqa: E402
from save_ros.ros.params import ParameterError  # noqa: E402
from save_ros.tools.bench_node import _restamped  # noqa: E402
from save_ros.tools.client import ReplayClient, stamp_key  # noqa: E402

pytestmark = pytest.mark.ros
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn_isolated.yaml")
DIGITS = convert.InputSpec(shape=(1, 8, 8), low=(0.0,), high=(1.0,))
FRAMES = 12


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """An isolated (isolation=process) protected digits_cnn node with fault injection on."""
    with running_node(CONFIG, f"test_failover_{os.getpid()}", {
        "fault_injection.enabled": True, "fault_injection.crash_kind": "segfault",
        "queue_size": 100, "queue_order": "fifo", "qos.depth": 100,
        "qos.reliability": "reliable", "diagnostics_period": 0.2,
        "isolation_hang_timeout_s": 1.0,
    }, tmp_path_factory, reliability="reliable") as started:
        yield started


@pytest.fixture(scope="module")
def frames():
    return digits_frames(FRAMES)


@pytest.fixture(scope="module")
def clean(node, frames):
    """Fault-free outputs through the node, by frame index."""
    _, client = node
    result = client.replay(_restamped(frames, FRAMES, 50.0, 100), pace="lockstep")
    outputs = [result.final_output(s) for s in sorted(result.sent)]
    assert all(o is not None for o in outputs)
    return outputs


def _stream_with_crash(client: ReplayClient, frames, base_sec: int, count: int = 36):
    """Publish `count` inputs at 25 Hz; a third of the way in, call ~/inject_crash."""
    stream = _restamped(frames, count, 25.0, base_sec)
    box: dict = {}
    publisher = threading.Thread(target=lambda: box.setdefault(
        "result", client.replay(stream, pace="rate", settle=3.0, status_timeout=30.0)))
    publisher.start()
    time.sleep(count / 25.0 / 3)
    reply = client.call("inject_crash", timeout=10.0)
    publisher.join(60.0)
    return reply, box["result"], stream


def _set(client: ReplayClient, name: str, value: str) -> None:
    assert set_parameter(client, name, string_value(value)).successful


@pytest.mark.parametrize("kind", ["segfault", "hang"])
def test_worker_crash_fails_over_and_every_input_gets_the_fault_free_output(node, frames,
                                                                             clean, kind):
    proc, client = node
    _set(client, "fault_injection.crash_kind", kind)
    reply, result, stream = _stream_with_crash(client, frames, 200 if kind == "segfault" else 300)
    proc.check_alive()  # the node process survived the crash of its inference worker
    assert reply.success and "armed" in reply.message and kind in reply.message

    # every input published after the node was ready got exactly its output, under its stamp
    stamps = [stamp_key(m.header) for m in stream]
    answered = [s for s in stamps if result.outputs.get(s)]
    assert len(answered) == len(stamps), f"{len(stamps) - len(answered)} inputs got no output"
    model = models.load("digits_cnn")
    for i, (msg, stamp) in enumerate(zip(stream, stamps, strict=True)):
        # the fault-free output: bit-equal to the clean run through the node, and the model's
        assert result.final_output(stamp) == clean[i % FRAMES]
        with torch.no_grad():
            expected = model(convert.image_to_tensor(msg, DIGITS))[0]
        assert torch.allclose(torch.tensor(result.final_output(stamp)), expected, atol=1e-5)
        assert result.final_status(stamp)["verified"] == "true"

    # the input the crashed worker held was re-run on the standby, and its status says so
    failed_over = [s for s in stamps if result.final_status(s).get("failover") == "true"]
    assert len(failed_over) == 1
    status = result.final_status(failed_over[0])
    assert status["attempts"] == "2" and status["_level"] == "1"  # WARN: re-run, verified
    assert "after the worker holding it failed" in status["_message"]
    # where its time went: an injected crash has all four phases, each a duration in ms
    phases = dict(p.split("=") for p in status["failover_phases_ms"].split())
    assert set(phases) == {"detection", "activation", "inference", "return"}
    assert all(float(v) >= 0 for v in phases.values())

    # /diagnostics went to ERROR, naming the crash; the counters show one failover
    errors = [d for d in result.diagnostics if d["_level"] == "2"]
    assert errors, "no ERROR on /diagnostics after the worker crash"
    assert "worker crashed or hung" in errors[0]["_message"]
    expected_detail = "SIGSEGV" if kind == "segfault" else "watchdog"
    # the first ERROR may still be the previous test's crash, held for diagnostics.fault_hold
    assert any(expected_detail in d.get("last_problem", "") for d in errors)
    last, before = result.diagnostics[-1], result.counters_before
    assert int(last["worker_failures"]) - int(before["worker_failures"]) == 1
    assert int(last["failovers"]) - int(before["failovers"]) == 1
    assert int(last["dropped"]) == int(before["dropped"])  # nothing dropped in the node either


@pytest.fixture
def context():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _build(context, **overrides) -> SaveNode:
    """The node, configured (a managed node builds its backend in configure)."""
    params = [Parameter(k, value=v) for k, v in ({"protect": False} | overrides).items()]
    node = SaveNode(context=context, parameter_overrides=params,
                    namespace=f"failover_startup_{os.getpid()}")
    node.trigger_configure()
    if node.configure_error is not None:
        node.destroy_node()
        raise node.configure_error.__cause__ or node.configure_error
    return node


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"isolation": "thread"}, ParameterError, "isolation='thread' is not allowed"),
        ({"isolation_hang_timeout_s": 0.0}, InvalidParameterValueException,
         "isolation_hang_timeout_s"),
        ({"fault_injection.crash_kind": "melt"}, ParameterError, "crash_kind='melt'"),
    ],
)
def test_bad_isolation_settings_are_refused_with_a_reason(context, overrides, error, message):
    with pytest.raises(error, match=message):
        _build(context, **overrides)


def test_inject_crash_is_refused_without_isolation(context):
    node = _build(context, isolation="none")
    try:
        with pytest.raises(BackendError, match="needs isolation=process"):
            node.backend.inject_crash("segfault")
    finally:
        node.backend.close()
        node.destroy_node()


def test_isolated_torchscript_model_is_served_from_its_file_and_survives_a_crash(context,
                                                                                tmp_path):
    path = tmp_path / "policy.ts"
    module = torch.jit.script(models.load("cartpole_policy"))
    module.save(str(path))
    node = _build(context, model_file=str(path), input_shape=[4], input_low=[-3.0],
                  input_high=[3.0], task="control", input_type="float32_multi_array",
                  isolation="process")
    try:
        x = torch.tensor([[0.1, -0.2, 0.03, 0.4]])
        with torch.no_grad():
            expected = module(x)
        output, verdict = node.backend.infer(x)
        assert torch.equal(output, expected)
        assert verdict.result(10.0).values == {"verified": False, "protected": False,
                                               "worker_pid": node.backend.pm.active_pid}
        node.backend.pm.wait_ready(60.0)  # a warm standby
        assert "armed" in node.backend.inject_crash("exit")
        output, verdict = node.backend.infer(x)  # the worker exits on it; the standby answers
        assert torch.equal(output, expected)
        assert verdict.result(10.0).values["attempts"] == 2
    finally:
        node.backend.close()
        node.destroy_node()
