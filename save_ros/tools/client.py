"""A client of `save_node` over DDS: publish inputs, collect results and status, call services.

`ReplayClient` owns its own rclpy context (so it works inside pytest, next to other nodes) and
spins it on a background thread; the caller's thread publishes and waits on events.

Inputs are kept by their position in the replay (`InputRecord`), never merged by stamp: a bag may
hold many messages with one stamp, and a Float32MultiArray has no stamp at all (the node stamps it
on arrival). Each `~/fault_status` is matched to the oldest input still waiting for one whose stamp
it carries (any waiting input, for header-less inputs); each `~/output` goes to the input whose
status said it was published. `ReplayResult.outputs` / `.statuses` keep every message by stamp too,
for callers that key on stamps.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

from save_ros.tools.replay_result import InputRecord, ReplayResult, compare, status_values

__all__ = ["INPUT_MSGTYPES", "PACES", "InputRecord", "NodeUnreachableError", "ReplayClient",
           "ReplayResult", "compare", "output_values", "stamp_key", "status_values"]

INPUT_MSGTYPES = {"image": "sensor_msgs/msg/Image",
                  "float32_multi_array": "std_msgs/msg/Float32MultiArray",
                  "joint_state": "sensor_msgs/msg/JointState"}
_INPUT_CLASSES = {"image": Image, "float32_multi_array": Float32MultiArray,
                  "joint_state": JointState}
# lockstep: one input at a time, each waits for its status (every input reaches the node);
# realtime: the bag's timing times `rate`; afap: no pauses. "rate" is realtime's old name.
PACES = ("lockstep", "realtime", "afap")
_PACE_ALIASES = {"rate": "realtime"}
# node parameters that explain losses, read from the node itself (not from the config file)
_EVIDENCE_PARAMETERS = ("qos.depth", "qos.reliability", "queue_size", "input_type",
                        "publish_policy", "isolation", "protect", "diagnostics_period")

_CLIENT_IDS = itertools.count()


class NodeUnreachableError(RuntimeError):
    """The node did not appear on DDS (or a service did not answer) in time."""


def stamp_key(header) -> int:
    """A header stamp as integer nanoseconds (the key that matches inputs to results)."""
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def output_values(msg) -> list[float]:
    """The numbers of one `~/output` message, whatever type the node publishes.

    JointState (today's output): `position`; Float32/64MultiArray: `data`; vision_msgs
    Classification: the hypotheses' scores.
    """
    if hasattr(msg, "position"):
        return [float(v) for v in msg.position]
    if hasattr(msg, "points"):  # JointTrajectory: the chunk, point by point
        return [float(v) for p in msg.points for v in p.positions]
    if hasattr(msg, "data"):
        return [float(v) for v in msg.data]
    if hasattr(msg, "results"):
        return [float(getattr(getattr(r, "hypothesis", r), "score", 0.0)) for r in msg.results]
    return []


def _message_class(msgtype: str) -> type:
    from save_ros.ros.bags import message_class

    return message_class(msgtype)


def _parameter_value(value) -> object:
    """The Python value of an rcl_interfaces ParameterValue (None if not set)."""
    from rcl_interfaces.msg import ParameterType as T

    return {T.PARAMETER_BOOL: lambda v: v.bool_value,
            T.PARAMETER_INTEGER: lambda v: v.integer_value,
            T.PARAMETER_DOUBLE: lambda v: v.double_value,
            T.PARAMETER_STRING: lambda v: v.string_value}.get(value.type, lambda v: None)(value)


class ReplayClient:
    """Publishes inputs to one `save_node`, records its results; a context manager.

    `reliability` is the QoS of the input publisher: "reliable" (the default) matches a
    best-effort or a reliable node subscription and, with a reliable one, is delivered;
    "best_effort" is what a camera driver would do.
    """

    def __init__(self, node_fqn: str = "/save_node", input_topic: str = "~/input",
                 input_type: str = "image", reliability: str = "reliable") -> None:
        self.fqn = node_fqn
        resolved = (node_fqn + input_topic[1:] if input_topic.startswith("~")
                    else input_topic)
        self.input_topic = resolved
        self.input_type = input_type
        self.reliability = reliability
        self.context = Context()
        # not sys.argv: rcl would read `save-ros replay -p name:=value` as a remap rule for
        # this client (and warn "Found remap rule ... deprecated"); the node gets the -p values
        rclpy.init(args=[], context=self.context)
        # unique per client: two clients in one process must not share a rosout logger name
        self.node = Node(f"save_replay_{os.getpid()}_{next(_CLIENT_IDS)}", context=self.context)
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE
                         if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT)
        self.pub = self.node.create_publisher(_INPUT_CLASSES[input_type], resolved, qos)
        self._reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.output_type = ""  # learnt from the graph in wait_for_node
        self.out_sub = None
        self.status_sub = self.node.create_subscription(
            DiagnosticArray, f"{node_fqn}/fault_status", self._on_status, self._reliable)
        self.diag_sub = self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                                      self._on_diag, self._reliable)
        self.services = {name: self.node.create_client(Trigger, f"{node_fqn}/{name}")
                         for name in ("recover", "reanalyze", "inject_faults",
                                      "inject_crash")}
        self._get_params = self.node.create_client(GetParameters, f"{node_fqn}/get_parameters")
        self.node_parameters: dict[str, object] = {}
        self.process = None
        self._settled = None  # (final counters, result, its message count) of the last replay
        self._answer_times: deque[float] = deque(maxlen=50)  # s, publish -> status (lockstep)
        self.result = ReplayResult()
        self._cond = threading.Condition()
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    # -- callbacks (executor thread) ------------------------------------------------------
    def _on_output(self, msg) -> None:
        header = getattr(msg, "header", None)
        with self._cond:
            self.result.add_output(stamp_key(header) if header is not None else None,
                                   time.monotonic(), output_values(msg))
            self.result.recorded.append((f"{self.fqn}/output", time.time_ns(), msg))
            self._cond.notify_all()

    def _on_status(self, msg: DiagnosticArray) -> None:
        with self._cond:
            self.result.add_status(stamp_key(msg.header), time.monotonic(), status_values(msg))
            self.result.status_bytes_max = max(self.result.status_bytes_max,
                                               _status_bytes(msg.status[0]))
            self.result.recorded.append((f"{self.fqn}/fault_status", time.time_ns(), msg))
            self._cond.notify_all()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        # a node may report several statuses (e.g. "<fqn>: <model>: input" and "...: inference")
        mine = [s for s in msg.status if s.name.startswith(self.fqn.lstrip("/"))
                or s.name.startswith(self.fqn)]
        if mine:
            with self._cond:
                values = {kv.key: kv.value for s in mine for kv in s.values}
                worst = max(mine, key=lambda s: s.level)
                values["_level"] = str(worst.level[0])
                values["_message"] = "; ".join(s.message for s in mine)
                self.result.diagnostics.append(values)
                self.result.diagnostics_bytes = max(self.result.diagnostics_bytes,
                                                    sum(_status_bytes(s) for s in mine))
                self.result.diagnostics_keys = max(self.result.diagnostics_keys,
                                                   sum(len(s.values) for s in mine))
                self._cond.notify_all()

    # -- node handling --------------------------------------------------------------------
    def _subscribe_output(self) -> bool:
        """Subscribe to `~/output` with the type the node advertises (once it is on the graph)."""
        if self.out_sub is not None:
            return True
        topic = f"{self.fqn}/output"
        types = dict(self.node.get_topic_names_and_types()).get(topic)
        if not types:
            return False
        self.output_type = types[0]
        self.out_sub = self.node.create_subscription(_message_class(types[0]), topic,
                                                     self._on_output, self._reliable)
        return True

    def wait_for_node(self, process=None, timeout: float = 60.0) -> None:
        """Wait until the node answers a service call and every topic is matched both ways.

        The round trip of `get_parameters` shows that the node has discovered this client too
        (a matched publisher only shows that this client has discovered the node), so the first
        input is not published into a subscription that does not know it yet.
        """
        self.process = process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None:
                process.check_alive()
            if (self.services["recover"].service_is_ready()
                    and self._get_params.service_is_ready()
                    and self.pub.get_subscription_count() > 0
                    and self._subscribe_output()
                    and self.out_sub.get_publisher_count() > 0
                    and self.status_sub.get_publisher_count() > 0
                    and self._read_node_parameters(max(0.1, deadline - time.monotonic()))):
                return
            time.sleep(0.1)
        seen = (f" (services ready {self.services['recover'].service_is_ready()}, input "
                f"subscribers {self.pub.get_subscription_count()}, output publishers "
                f"{self.out_sub.get_publisher_count() if self.out_sub else 0})")
        log = f"\nnode output:\n{process.output()[-2000:]}" if process is not None else ""
        raise NodeUnreachableError(f"{self.fqn} did not appear within {timeout:.0f} s{seen}; "
                                   f"is it running in this shell's ROS_DOMAIN_ID?{log}")

    def _read_node_parameters(self, timeout: float) -> bool:
        """Read the parameters that explain losses from the node; False if it did not answer."""
        request = GetParameters.Request(names=list(_EVIDENCE_PARAMETERS))
        future = self._get_params.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(min(timeout, 5.0)) or future.result() is None:
            return False
        values = [_parameter_value(v) for v in future.result().values]
        self.node_parameters = {name: value for name, value
                                in zip(_EVIDENCE_PARAMETERS, values, strict=False)
                                if value is not None}
        return True

    def call(self, service: str, timeout: float = 60.0) -> Trigger.Response:
        """Call a Trigger service of the node and wait for the answer."""
        client = self.services[service]
        if not client.wait_for_service(timeout_sec=min(timeout, 10.0)):
            raise NodeUnreachableError(f"{self.fqn}/{service} is not offered (for "
                                       "inject_faults: set fault_injection.enabled true)")
        future = client.call_async(Trigger.Request())
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise NodeUnreachableError(f"{self.fqn}/{service} did not answer in {timeout} s")
        return future.result()

    def latest_diagnostics(self, timeout: float = 3.0) -> dict[str, str]:
        """Wait for the next /diagnostics message of the node and return its values."""
        with self._cond:
            n = len(self.result.diagnostics)
            self._cond.wait_for(lambda: len(self.result.diagnostics) > n, timeout)
            return dict(self.result.diagnostics[-1]) if self.result.diagnostics else {}

    def _next_report(self, record: InputRecord, timeout: float) -> dict[str, str]:
        """The next /diagnostics values of the node, or {} as soon as `record` is answered."""
        with self._cond:
            n = len(self.result.diagnostics)
            self._cond.wait_for(lambda: record.answered() or len(self.result.diagnostics) > n,
                                timeout)
            if record.answered() or len(self.result.diagnostics) <= n:
                return {}
            return dict(self.result.diagnostics[-1])

    # -- replay ---------------------------------------------------------------------------
    def replay(self, inputs: Sequence, pace: str = "lockstep", rate: float = 1.0,
               inject_every: int = 0, settle: float = 2.0, status_timeout: float = 30.0,
               retries: int = 1, probe: float = 1.0) -> ReplayResult:
        """Publish bag messages (`BagMessage`s or bare messages); return what came back.

        `lockstep` (the default) publishes the next input only once the last one has its fault
        status, so every input reaches the node and is answered: an input without a status after
        `probe` seconds that the node's `received` counter did not count either never reached it
        (the node is idle in lockstep) and is published again, up to `retries` times. `realtime`
        keeps the bag's timing (times `rate`); `afap` publishes without pauses. A node process
        that exits stops the replay (`ReplayResult.node_exit_code`).
        """
        pace = _PACE_ALIASES.get(pace, pace)
        if pace not in PACES:
            raise ValueError(f"pace {pace!r}: use one of {', '.join(PACES)}")
        with self._cond:
            self.result = ReplayResult(pace=pace, rate=rate,
                                       node_parameters=dict(self.node_parameters),
                                       publisher_reliability=self.reliability)
        result = self.result
        result.counters_before = self._counters_now()
        reached = 0  # inputs the node has taken so far (lockstep)
        t_bag0 = _time_ns(inputs[0]) if len(inputs) else 0
        t0 = time.monotonic()
        for i, item in enumerate(inputs):
            if self._node_exited(result):
                break
            msg = getattr(item, "msg", item)
            if inject_every and i and i % inject_every == 0:
                resp = self.call("inject_faults")
                result.injections.append(resp.message)
            if pace == "realtime":
                due = t0 + (_time_ns(item) - t_bag0) / 1e9 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            header = getattr(msg, "header", None)
            record = InputRecord(i, stamp_key(header) if header is not None else None,
                                 matched=self.pub.get_subscription_count(),
                                 size=len(serialize_message(msg)))
            with self._cond:
                record.sent_at = time.monotonic()
                result.add_input(record)  # before publishing: the status may come at once
            if pace == "lockstep":
                reached += self._lockstep(record, msg, reached, status_timeout, retries, probe)
            else:
                record.attempts = 1
                self.pub.publish(msg)
        self._settle(settle, status_timeout)
        after = self.latest_diagnostics()  # the counters after the run
        self._settled = (after, result, len(result.recorded)) if after else None
        self._node_exited(result)
        return result

    def _counters_now(self) -> dict[str, str]:
        """The node's counters: the last replay's final ones while nothing happened since."""
        if self._settled is not None:
            values, last, recorded = self._settled
            self._settled = None
            with self._cond:
                if len(last.recorded) == recorded:  # no status or output arrived since
                    self.result.diagnostics.append(values)
                    return dict(values)
        return self.latest_diagnostics()

    def _lockstep(self, record: InputRecord, msg, reached: int, status_timeout: float,
                  retries: int, probe: float) -> int:
        """Publish one input, wait for its status, publish again what never reached the node.

        An input is published again only when two /diagnostics reports, a diagnostics period
        apart, both show that the node did not take it: a node whose executor stalls (the
        intake callback and the diagnostics timer share it) may take an input late, and a copy
        published then would be answered too (counted as `republished_duplicates`).
        Returns 1 if the input reached the node (answered, or counted by it), else 0.
        """
        base = self.result.counters_before.get("received")
        period = float(self.node_parameters.get("diagnostics_period", 1.0) or 1.0)
        if len(self._answer_times) >= 5:  # 20 times the usual answer time: a loss costs little
            probe = min(probe, max(0.25, 20 * float(np.median(self._answer_times))))
        while True:
            with self._cond:
                record.sent_at = time.monotonic()  # latency counts from the attempt that arrived
            self.pub.publish(msg)
            record.attempts += 1
            self._wait_answered(record, min(probe, status_timeout))
            if record.answered():
                self._answer_times.append(record.statuses[0][0] - record.sent_at)
                return 1
            if self._node_exited(self.result):
                return 0
            counted = None
            for _ in range(2):  # the first report may have been made just before the intake
                counted = self._next_report(record, timeout=period + 1.0).get("received")
                if (record.answered() or base is None or counted is None
                        or int(counted) > int(base) + reached):
                    break
            if record.answered():  # late, but here: a slow node, not a lost input
                self._wait_answered(record, 1.0)  # its outputs may trail
                self._answer_times.append(record.statuses[0][0] - record.sent_at)
                return 1
            if base is None or counted is None or int(counted) > int(base) + reached:
                # the node has it (or cannot say): its status is late, not lost
                self._wait_answered(record, max(0.0, status_timeout - probe))
                return 1 if counted is not None and base is not None else int(
                    record.answered())
            if record.attempts > retries:
                return 0

    def _node_exited(self, result: ReplayResult) -> bool:
        code = self.process.proc.poll() if self.process is not None and getattr(
            self.process, "proc", None) is not None else None
        if code is not None:
            result.node_exit_code = code
        return code is not None

    def _wait_answered(self, record: InputRecord, timeout: float,
                       output_grace: float = 1.0) -> None:
        """Wait for the record's status, then briefly for the outputs it announces.

        Returns early when the node process exited.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not record.answered() and time.monotonic() < deadline:
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                if self.process is not None and self.process.proc.poll() is not None:
                    return
            # an output and its status travel on two topics: either may arrive first
            self._cond.wait_for(record.complete, min(output_grace,
                                                     max(0.0, deadline - time.monotonic())))

    def _settle(self, idle: float, limit: float, output_grace: float = 0.5) -> None:
        """Wait until every input has its status, or no result arrived for `idle` seconds."""
        deadline = time.monotonic() + limit
        records = self.result.records
        with self._cond:
            while time.monotonic() < deadline:
                if all(r.answered() for r in records):
                    self._cond.wait_for(lambda: all(r.complete() for r in records),
                                        output_grace)
                    return
                seen = len(self.result.recorded)  # /diagnostics does not count as progress
                if not self._cond.wait_for(lambda n=seen: len(self.result.recorded) > n, idle):
                    return

    def close(self) -> None:
        """Stop spinning and release the context."""
        self._executor.shutdown(timeout_sec=2.0)
        # a spin thread still alive at interpreter exit aborts the process ("terminate called
        # without an active exception", exit 134), e.g. when the node died right at start
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> ReplayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _status_bytes(status) -> int:
    """Text size of a DiagnosticStatus (what a /diagnostics message grows with)."""
    return (len(status.name) + len(status.message) + len(status.hardware_id)
            + sum(len(kv.key) + len(kv.value) for kv in status.values))


def _time_ns(item) -> int:
    """Bag time of a BagMessage, else its header stamp (0 for a header-less message)."""
    if hasattr(item, "time_ns"):
        return int(item.time_ns)
    header = getattr(item, "header", None)
    return stamp_key(header) if header is not None else 0

