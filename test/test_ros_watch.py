"""`save-ros watch`: a running save_node's output, fault status and diagnostics, as a user sees.

The view's text is checked on real messages without a node; then `save-ros watch` runs as a
process next to a real `save_node` process, frames are replayed with faults injected, and every
line it printed must be what the node sent (stamp, class, verdict), checked against what a second
client received.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from rosutil import digits_frames, running_node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from save_ros.tools.watch import Screen, output_record  # noqa: E402
from save_ros.tools.watch_view import (  # noqa: E402
    DiagRecord,
    StatusRecord,
    WatchView,
    stamp_text,
)

CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn.yaml")


def test_output_line_names_the_class_and_its_probability() -> None:
    msg = JointState(name=[str(i) for i in range(3)], position=[0.5, 2.0, -1.0],
                     velocity=[0.2, 0.7, 0.1], effort=[1.0])
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 33_333_333
    rec = output_record(msg)
    assert (rec.decision, rec.probability, rec.values) == (1, pytest.approx(0.7), [0.5, 2.0, -1.0])
    line = WatchView("/n").add(rec)
    assert line == "output  1700000000.033333333  class 1 p=0.700"


def test_control_output_shows_its_values_and_names_are_kept() -> None:
    actions = JointState(name=["left", "right"], position=[0.25, -1.5])  # no argmax: continuous
    assert WatchView("/n").add(output_record(actions)).endswith("values [0.25, -1.5]")
    named = JointState(name=["none", "top"], position=[0.0, 3.0], velocity=[0.05, 0.95],
                       effort=[1.0])
    assert output_record(named).text() == "class 1 'top' p=0.950"


def test_status_line_says_what_failed_and_what_was_repaired() -> None:
    view = WatchView("/robot/save_node")
    line = view.add(StatusRecord(5, 1, "fault detected and repaired (1 failed checks)", {
        "detections": "['fc1/fc1.weight/weights']", "repaired_tensors": "['fc1.weight(1)']",
        "rerun_from": "fc1", "forward_ms": "0.5", "verify_ms": "0.25"}))
    assert line == ("status  0.000000005  WARN  fault detected and repaired (1 failed checks)  "
                    "failed: ['fc1/fc1.weight/weights']  repaired: ['fc1.weight(1)']  "
                    "re-run from fc1  forward 0.50 ms, verify 0.25 ms")
    assert view.statuses == {"WARN": 1} and list(view.faults)[0].stamp_ns == 5
    assert "fault detected and repaired" in view.panel()


def test_unchanged_diagnostics_are_not_repeated_line_by_line() -> None:
    view = WatchView("/save_node")
    ok = DiagRecord("save_node: inference", 0, "all results verified",
                    {"inferred": "3", "verified": "3", "latency_p50_ms": "1.23456"})
    first = view.add(ok)
    assert first == ("diag    save_node: inference  OK all results verified  (inferred 3  "
                     "verified 3  latency_p50_ms 1.23)")
    assert view.add(ok) is None  # same level and message: counted, not printed again
    warn = DiagRecord("save_node: inference", 1, "fault detected and repaired", {})
    assert view.add(warn) is not None and view.diagnostics == 3
    assert stamp_text(None) == "-"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_redrawn_panel_and_a_pipe_gets_lines() -> None:
    view = WatchView("/save_node", "sensor_msgs/msg/JointState")
    term, pipe = _Terminal(), io.StringIO()
    live, lines = Screen(view, term, lines=False), Screen(view, pipe, lines=False)
    for screen in (live, lines):
        screen.line("output  1.000000000  class 3")
        screen.refresh(force=True)
    view.add(StatusRecord(1, 2, "input rejected: NaN pixel", {}))
    live.refresh(force=True)
    assert pipe.getvalue() == "output  1.000000000  class 3\n"
    frames = term.getvalue().split("\x1b[H\x1b[2J")[1:]
    assert len(frames) == 2 and frames[0].startswith("watching /save_node  (")
    assert "/save_node/output (sensor_msgs/msg/JointState)" in frames[0]
    assert "ERROR 1" in frames[1] and "input rejected: NaN pixel" in frames[1]
    assert Screen(view, _Terminal(), lines=True).live is False  # --lines on a terminal


def _read_lines(stream, into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


@pytest.mark.ros
def test_watch_shows_what_a_running_node_publishes(tmp_path_factory) -> None:
    frames = digits_frames(6)
    overrides = {"fault_injection.enabled": True, "fault_injection.count": 4,
                 "publish_policy": "verified"}
    with running_node(CONFIG, f"watch_{os.getpid()}", overrides, tmp_path_factory) as (proc,
                                                                                      client):
        watch = subprocess.Popen(
            # the full name: a node of another test still shutting down may share the short one
            [sys.executable, "-m", "save_ros.cli", "watch", proc.fqn,
             "--count", "12", "--seconds", "150"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(watch.stdout, out), daemon=True)
        reader.start()
        sent_classes: dict[int, set[int]] = {}
        sent_statuses: dict[int, set[str]] = {}
        try:
            deadline = time.monotonic() + 150
            while watch.poll() is None and time.monotonic() < deadline:
                if not out:  # not subscribed yet
                    time.sleep(0.2)
                    continue
                result = client.replay(frames, pace="lockstep", inject_every=3)
                for record in result.records:
                    if record.output is not None:
                        values = record.output
                        sent_classes.setdefault(record.stamp, set()).add(
                            max(range(len(values)), key=values.__getitem__))
                    if record.status is not None:
                        sent_statuses.setdefault(record.stamp, set()).add(
                            record.status["_message"])
            code = watch.wait(timeout=30)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        reader.join(timeout=5)
        err = watch.stderr.read()
    assert code == 0, (out, err)
    assert out[0] == (f"watching {proc.fqn}: {proc.fqn}/output (sensor_msgs/msg/JointState), "
                      f"{proc.fqn}/fault_status, /diagnostics")
    outputs = [ln.split() for ln in out if ln.startswith("output ")]
    statuses = [ln for ln in out if ln.startswith("status ")]
    assert len(statuses) >= 12 and outputs
    stamps = {stamp_text(s): s for s in sent_classes | sent_statuses}
    for _, stamp, word, cls, *_ in outputs:  # "output STAMP class N p=..."
        assert word == "class" and int(cls) in sent_classes[stamps[stamp]]
    for line in statuses:
        stamp = line.split()[1]
        assert any(msg in line for msg in sent_statuses[stamps[stamp]]), line
    # a flip is injected before every third frame: the watch printed a repair
    assert any("WARN  fault detected and repaired" in ln and "repaired: " in ln
               for ln in statuses), statuses
    assert any(ln.startswith(f"diag    {proc.fqn.lstrip('/')}: inference") for ln in out), out


@pytest.mark.ros
def test_watch_gives_up_after_seconds_when_no_node_is_there() -> None:
    done = subprocess.run([sys.executable, "-m", "save_ros.cli", "watch", "/no_such/save_node",
                           "--once", "--seconds", "2"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "no node /no_such/save_node with an output topic appeared in 2 s" in done.stderr
