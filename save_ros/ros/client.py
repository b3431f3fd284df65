"""A client of `save_node` over DDS: publish inputs, collect results and status, call services.

`ReplayClient` owns its own rclpy context (so it works inside pytest, next to other nodes) and
spins it on a background thread; the caller's thread publishes and waits on events.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

INPUT_MSGTYPES = {"image": "sensor_msgs/msg/Image",
                  "float32_multi_array": "std_msgs/msg/Float32MultiArray",
                  "joint_state": "sensor_msgs/msg/JointState"}
_INPUT_CLASSES = {"image": Image, "float32_multi_array": Float32MultiArray,
                  "joint_state": JointState}


_CLIENT_IDS = itertools.count()


class NodeUnreachableError(RuntimeError):
    """The node did not appear on DDS (or a service did not answer) in time."""


def stamp_key(header) -> int:
    """A header stamp as integer nanoseconds (the key that matches inputs to results)."""
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def status_values(array: DiagnosticArray) -> dict[str, str]:
    """Key/values of the first status of a DiagnosticArray, plus its level and message."""
    status = array.status[0]
    out = {kv.key: kv.value for kv in status.values}
    out["_level"] = str(status.level[0] if isinstance(status.level, bytes) else status.level)
    out["_message"] = status.message
    return out


@dataclass
class ReplayResult:
    """What one replay saw, keyed by input stamp (ns)."""

    sent: dict[int, float] = field(default_factory=dict)  # stamp -> publish time (monotonic)
    outputs: dict[int, list[tuple[float, list[float]]]] = field(
        default_factory=lambda: defaultdict(list))
    statuses: dict[int, list[tuple[float, dict[str, str]]]] = field(
        default_factory=lambda: defaultdict(list))
    diagnostics: list[dict[str, str]] = field(default_factory=list)
    injections: list[str] = field(default_factory=list)
    recorded: list[tuple[str, int, object]] = field(default_factory=list)
    counters_before: dict[str, str] = field(default_factory=dict)

    def final_output(self, stamp: int) -> list[float] | None:
        """The last output received for a stamp (a repair re-publishes the corrected one)."""
        got = self.outputs.get(stamp)
        return got[-1][1] if got else None

    def final_status(self, stamp: int) -> dict[str, str] | None:
        """The fault status received for a stamp."""
        got = self.statuses.get(stamp)
        return got[-1][1] if got else None

    def latencies_ms(self) -> np.ndarray:
        """Input published -> first output received, per input that got an output."""
        return np.array([(self.outputs[s][0][0] - t) * 1e3 for s, t in self.sent.items()
                         if self.outputs.get(s)], dtype=np.float64)

    def verdict_latencies_ms(self) -> np.ndarray:
        """Input published -> its fault status received (the verdict), per answered input."""
        return np.array([(self.statuses[s][0][0] - t) * 1e3 for s, t in self.sent.items()
                         if self.statuses.get(s)], dtype=np.float64)

    def summary(self) -> dict[str, object]:
        """Counts and latency percentiles (JSON-ready)."""
        statuses = [self.final_status(s) for s in self.sent]
        statuses = [s for s in statuses if s is not None]
        detected = sum(int(s.get("detected", "0")) for s in statuses)
        last = self.diagnostics[-1] if self.diagnostics else {}

        def delta(key: str) -> int:
            return int(last.get(key, 0)) - int(self.counters_before.get(key, 0))

        lat = self.latencies_ms()
        out: dict[str, object] = {
            "inputs": len(self.sent),
            "outputs": sum(1 for s in self.sent if self.outputs.get(s)),
            "statuses": len(statuses),
            "received": delta("received"),  # inputs that reached the node
            "dropped": delta("dropped"),
            "rejected": sum(1 for s in statuses if s.get("rejected") == "true"),
            "verified": sum(1 for s in statuses if s.get("verified") == "true"),
            "unverified": sum(1 for s in statuses if s.get("verified") != "true"),
            "detected": detected,
            "inferences_with_detection": sum(1 for s in statuses
                                             if int(s.get("detected", "0")) > 0),
            "repaired": sum(int(s.get("repaired", "0")) for s in statuses),
            "faults_injected": delta("faults_injected"),
            "latency_ms": {},
        }
        if len(lat):
            p50, p90, p99 = np.percentile(lat, [50, 90, 99])
            out["latency_ms"] = {"p50": p50, "p90": p90, "p99": p99, "max": float(lat.max()),
                                 "mean": float(lat.mean()), "n": len(lat)}
        verdict = self.verdict_latencies_ms()
        if len(verdict):
            p50, p90, p99 = np.percentile(verdict, [50, 90, 99])
            out["verdict_latency_ms"] = {"p50": p50, "p90": p90, "p99": p99,
                                         "n": len(verdict)}
        return out


def compare(clean: ReplayResult, faulty: ReplayResult) -> dict[str, object]:
    """Compare outputs stamp by stamp: every verified faulty-run output vs the clean run's."""
    verified_compared = verified_equal = all_compared = all_equal = first_equal = 0
    mismatched: list[int] = []
    for stamp in faulty.sent:
        ref, got = clean.final_output(stamp), faulty.final_output(stamp)
        status = faulty.final_status(stamp) or {}
        if ref is None or got is None:
            continue
        same = ref == got  # exact float equality: a verified result is the fault-free one
        all_compared += 1
        all_equal += int(same)
        # what a subscriber that ignores corrections saw (under publish_policy immediate)
        first_equal += int(faulty.outputs[stamp][0][1] == ref)
        if status.get("verified") == "true":
            verified_compared += 1
            verified_equal += int(same)
            if not same:
                mismatched.append(stamp)
    return {"verified_compared": verified_compared, "verified_equal": verified_equal,
            "all_compared": all_compared, "all_equal": all_equal,
            "first_output_equal": first_equal,
            "verified_mismatches": mismatched[:20]}


class ReplayClient:
    """Publishes inputs to one `save_node`, records its results; a context manager."""

    def __init__(self, node_fqn: str = "/save_node", input_topic: str = "~/input",
                 input_type: str = "image", reliability: str = "best_effort") -> None:
        self.fqn = node_fqn
        resolved = (node_fqn + input_topic[1:] if input_topic.startswith("~")
                    else input_topic)
        self.input_topic = resolved
        self.context = Context()
        # not sys.argv: rcl would read `save-ros replay -p name:=value` as a remap rule for
        # this client (and warn "Found remap rule ... deprecated"); the node gets the -p values
        rclpy.init(args=[], context=self.context)
        # unique per client: two clients in one process must not share a rosout logger name
        self.node = Node(f"save_replay_{os.getpid()}_{next(_CLIENT_IDS)}", context=self.context)
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE
                         if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT)
        self.pub = self.node.create_publisher(_INPUT_CLASSES[input_type], resolved, qos)
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.out_sub = self.node.create_subscription(JointState, f"{node_fqn}/output",
                                                     self._on_output, reliable)
        self.status_sub = self.node.create_subscription(
            DiagnosticArray, f"{node_fqn}/fault_status", self._on_status, reliable)
        self.diag_sub = self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                                      self._on_diag, reliable)
        self.services = {name: self.node.create_client(Trigger, f"{node_fqn}/{name}")
                         for name in ("recover", "reanalyze", "inject_faults",
                                      "inject_crash")}
        self.result = ReplayResult()
        self._cond = threading.Condition()
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    # -- callbacks (executor thread) ------------------------------------------------------
    def _on_output(self, msg) -> None:
        from save_ros.ros.outputs import output_values

        # Float64MultiArray has no header: it is keyed by arrival order
        key = stamp_key(msg.header) if hasattr(msg, "header") else len(self.result.outputs)
        with self._cond:
            self.result.outputs[key].append((time.monotonic(), output_values(msg)))
            self.result.recorded.append((f"{self.fqn}/output", time.time_ns(), msg))
            self._cond.notify_all()

    def _on_status(self, msg: DiagnosticArray) -> None:
        with self._cond:
            self.result.statuses[stamp_key(msg.header)].append((time.monotonic(),
                                                                status_values(msg)))
            self.result.recorded.append((f"{self.fqn}/fault_status", time.time_ns(), msg))
            self._cond.notify_all()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        mine = [s for s in msg.status if s.name.startswith(self.fqn.lstrip("/"))
                or s.name.startswith(self.fqn)]
        if mine:
            with self._cond:
                # the node reports several statuses (input, inference): one dict of all values
                values = {kv.key: kv.value for s in mine for kv in s.values}
                worst = max(mine, key=lambda s: s.level)
                values["_level"] = str(worst.level[0])
                values["_message"] = "; ".join(s.message for s in mine)
                self.result.diagnostics.append(values)
                self._cond.notify_all()

    # -- node handling --------------------------------------------------------------------
    def wait_for_node(self, process=None, timeout: float = 60.0) -> None:
        """Wait until the node's services answer and both topic directions are matched."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None:
                process.check_alive()
            self._match_output_type()
            if (self.services["recover"].service_is_ready()
                    and self.pub.get_subscription_count() > 0
                    and self.out_sub.get_publisher_count() > 0
                    and self.status_sub.get_publisher_count() > 0):
                return
            time.sleep(0.1)
        seen = (f" (services ready {self.services['recover'].service_is_ready()}, input "
                f"subscribers {self.pub.get_subscription_count()}, output publishers "
                f"{self.out_sub.get_publisher_count()})")
        log = f"\nnode output:\n{process.output()[-2000:]}" if process is not None else ""
        raise NodeUnreachableError(f"{self.fqn} did not appear within {timeout:.0f} s{seen}; "
                                   f"is it running in this shell's ROS_DOMAIN_ID?{log}")

    def _match_output_type(self) -> None:
        """Subscribe to ~/output with the type the node publishes (JointState, Classification,
        Float64MultiArray: its output_type parameter decides)."""
        import importlib

        topic = f"{self.fqn}/output"
        types = dict(self.node.get_topic_names_and_types()).get(topic, [])
        if not types or types[0] == "sensor_msgs/msg/JointState" or \
                getattr(self, "_output_type", None) == types[0]:
            return
        package, _, name = types[0].split("/")
        cls = getattr(importlib.import_module(f"{package}.msg"), name)
        self.node.destroy_subscription(self.out_sub)
        self.out_sub = self.node.create_subscription(
            cls, topic, self._on_output,
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        self._output_type = types[0]

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

    # -- replay ---------------------------------------------------------------------------
    def replay(self, inputs: Sequence, pace: str = "rate", rate: float = 1.0,
               inject_every: int = 0, settle: float = 2.0, status_timeout: float = 30.0
               ) -> ReplayResult:
        """Publish bag messages (`BagMessage`s or bare messages); return what came back."""
        with self._cond:
            self.result = ReplayResult()
        self.result.counters_before = self.latest_diagnostics()
        t_bag0 = _time_ns(inputs[0]) if inputs else 0
        t0 = time.monotonic()
        for i, item in enumerate(inputs):
            msg = getattr(item, "msg", item)
            if inject_every and i and i % inject_every == 0:
                resp = self.call("inject_faults")
                self.result.injections.append(resp.message)
            if pace == "rate":
                due = t0 + (_time_ns(item) - t_bag0) / 1e9 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            stamp = stamp_key(msg.header) if hasattr(msg, "header") else i
            with self._cond:
                self.result.sent[stamp] = time.monotonic()
            self.pub.publish(msg)
            if pace == "lockstep":
                with self._cond:
                    self._cond.wait_for(lambda s=stamp: s in self.result.statuses,
                                        status_timeout)
        self._settle(settle, status_timeout)
        self.latest_diagnostics()  # the counters after the run
        return self.result

    def _settle(self, idle: float, limit: float) -> None:
        """Wait until every input has a status, or no result arrived for `idle` seconds."""
        deadline = time.monotonic() + limit
        with self._cond:
            while time.monotonic() < deadline:
                if all(s in self.result.statuses for s in self.result.sent):
                    # a repaired result's corrected output may trail its status: wait briefly
                    self._cond.wait(0.2)
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


def _time_ns(item) -> int:
    """Bag time of a BagMessage, else its header stamp."""
    if hasattr(item, "time_ns"):
        return int(item.time_ns)
    return stamp_key(item.header)
