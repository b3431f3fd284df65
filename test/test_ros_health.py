"""The node's Health (/diagnostics) and its input queue, without a node process.

Time-dependent rules (a fault level held, a stale input) run on a clock the test moves: they
are asserted on the clock's events, never on how long a sleep took on a loaded machine.
"""

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from save_ros.ros import health as health_module  # noqa: E402
from save_ros.ros.health import ERROR, OK, WARN, Health, Outcome  # noqa: E402


class _Clock:
    """Stands in for the `time` module inside health.py: `monotonic` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(health_module, "time", c)
    return c
from save_ros.ros.intake import InputQueue  # noqa: E402


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def test_20000_distinct_reject_reasons_keep_the_report_small():
    health = Health("ns/save_node", "cpu")
    for width in range(20_000):
        health.on_rejected("size", f"image {width}x8 is smaller than ... " + "x" * 500)
    inputs, inference = health.report()
    values = _values(inputs)
    assert values["rejected"] == "20000" and values["rejected_size"] == "20000"
    assert len(inputs.values) + len(inference.values) < 40
    size = sum(len(kv.key) + len(kv.value) for s in (inputs, inference) for kv in s.values)
    assert size < 2000  # it was one key per reason: ~1.2 MB per message


def test_kinds_are_bounded_too():
    health = Health("n", "cpu")
    for i in range(100):
        health.on_rejected(f"kind_{i}", "r")
    assert len([k for k in _values(health.report()[0]) if k.startswith("rejected_")]) <= 17


def test_drops_are_not_faults_and_faults_are_not_input_warnings():
    health = Health("n", "cpu", input_timeout=0.0)
    health.set_active(True)
    health.on_dropped("superseded", 5)
    inputs, inference = health.report()
    assert inputs.level == OK and inference.level == OK
    assert _values(inputs)["dropped_superseded"] == "5"
    health.on_outcome(Outcome(verified=True, detected=2, repaired=1, unrepaired=0,
                              latency_s=0.01))
    inputs, inference = health.report()
    assert inputs.level == OK and inference.level == WARN
    assert "fault detected" in inference.message and "drop" not in inference.message


def test_a_fault_level_is_held_for_fault_hold_seconds(clock):
    health = Health("n", "cpu", fault_hold=0.5, input_timeout=0.0)
    health.on_outcome(Outcome(verified=False, detected=1, repaired=0, unrepaired=1,
                              latency_s=0.01))
    assert health.report()[1].level == ERROR
    held = health.report()[1]  # a new window with nothing new: still shown
    assert held.level == ERROR and "(held)" in held.message
    clock.now += 0.49
    assert health.report()[1].level == ERROR  # still within fault_hold
    clock.now += 0.02
    assert health.report()[1].level == OK


def test_no_input_while_active_is_stale(clock):
    health = Health("n", "cuda:0 (test)", input_timeout=0.05)
    assert health.report()[0].level == OK  # inactive: no input expected
    health.set_active(True)
    assert health.report()[0].level == OK  # active, but not yet input_timeout without input
    clock.now += 0.1
    inputs, _ = health.report()
    assert inputs.level == WARN and "no input yet" in inputs.message
    assert inputs.hardware_id == "cuda:0 (test)"
    health.on_received()
    assert health.report()[0].level == OK


def test_nonfinite_output_is_a_model_problem_not_a_fault():
    health = Health("n", "cpu", input_timeout=0.0)
    health.on_outcome(Outcome(verified=False, detected=0, repaired=0, unrepaired=0,
                              latency_s=0.01, nonfinite=True))
    _, inference = health.report()
    values = _values(inference)
    assert inference.level == ERROR and "model/input problem" in inference.message
    assert values["faults_detected"] == "0" and values["nonfinite_outputs"] == "1"


def test_queue_newest_first_supersedes_and_fifo_keeps_order():
    q: InputQueue[int] = InputQueue(size=3, newest_first=True)
    for i in range(3):
        assert q.put(i) == ([], "superseded")
    assert q.put(3) == ([0], "superseded")  # full: the oldest goes
    assert q.take() == (3, [1, 2])  # the newest, the older ones are stale
    q.done()
    fifo: InputQueue[int] = InputQueue(size=2, newest_first=False)
    fifo.put(1), fifo.put(2)
    assert fifo.put(3) == ([1], "queue_full")
    assert fifo.take() == (2, [])
    fifo.done()
    assert fifo.close() == [3]
    assert fifo.put(4) == ([4], "shutdown") and fifo.take() == (None, [])
    assert fifo.wait_idle(0.1)
