"""A DDS client of a policy node (several input topics): publishes the inputs, records
~/output, ~/fault_status and the `<node>: sync` status of /diagnostics (test_ros_*policy*)."""

from __future__ import annotations

import os
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from save_ros.tools.process import NodeProcess


class PolicyClient:
    """Publishes one message type per input topic of the node (`inputs`: topic name under the
    node -> message class, in the order `send` takes them); records what the node answers."""

    def __init__(self, fqn: str, inputs: dict[str, type]) -> None:
        self.fqn = fqn
        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.node = Node(f"policy_client_{os.getpid()}", context=self.context)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = [self.node.create_publisher(cls, f"{fqn}/{topic}", reliable)
                     for topic, cls in inputs.items()]
        self.outputs: dict[tuple[int, int], JointTrajectory] = {}
        self.statuses: list[DiagnosticArray] = []
        self.sync_diag: list[dict[str, str]] = []
        self.node_diag: list[dict[str, str]] = []
        self.cond = threading.Condition()
        self.node.create_subscription(JointTrajectory, f"{fqn}/output", self._on_output, reliable)
        self.node.create_subscription(DiagnosticArray, f"{fqn}/fault_status",
                                      self._on_status, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.inject = self.node.create_client(Trigger, f"{fqn}/inject_faults")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_output(self, msg: JointTrajectory) -> None:
        with self.cond:
            self.outputs[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            self.cond.notify_all()

    def _on_status(self, msg: DiagnosticArray) -> None:
        with self.cond:
            self.statuses.append(msg)
            self.cond.notify_all()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if not s.name.startswith(self.fqn.lstrip("/")):
                continue
            values = {kv.key: kv.value for kv in s.values}
            with self.cond:
                if s.name.endswith(": sync"):
                    self.sync_diag.append(values)
                elif s.name.endswith(": input"):  # received, rejected, calibration
                    self.node_diag.append(values)
                self.cond.notify_all()

    def wait_ready(self, proc: NodeProcess, timeout: float = 120.0) -> None:
        """Until the node's inputs, output and inject service are matched with this client."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.check_alive()
            if (all(p.get_subscription_count() for p in self.pubs)
                    and self.node.count_publishers(f"{self.fqn}/output")
                    and self.inject.service_is_ready()):
                time.sleep(1.0)  # the node discovers this client's publishers too
                return
            time.sleep(0.1)
        raise TimeoutError(f"the node did not come up:\n{proc.output()[-3000:]}")

    def send(self, *msgs) -> None:
        """Publish one message per input topic (in `inputs` order); None skips a topic."""
        for pub, msg in zip(self.pubs, msgs, strict=True):
            if msg is not None:
                pub.publish(msg)

    def wait_output(self, key: tuple[int, int], proc: NodeProcess,
                    timeout: float = 30.0) -> JointTrajectory:
        deadline = time.monotonic() + timeout
        with self.cond:
            while key not in self.outputs:
                proc.check_alive()
                left = deadline - time.monotonic()
                assert left > 0, f"no ~/output stamped {key}:\n{proc.output()[-2000:]}"
                self.cond.wait(min(left, 0.5))
            return self.outputs[key]

    def wait_status(self, key: tuple[int, int], timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.statuses:
                    if (msg.header.stamp.sec, msg.header.stamp.nanosec) == key:
                        return {kv.key: kv.value for kv in msg.status[0].values} | {
                            "_message": msg.status[0].message}
                left = deadline - time.monotonic()
                assert left > 0, f"no ~/fault_status stamped {key}"
                self.cond.wait(min(left, 0.5))

    def wait_sync(self, ok, timeout: float = 15.0) -> dict[str, str]:
        return self._wait_diag(self.sync_diag, ok, timeout, "sync")

    def wait_node_diag(self, ok, timeout: float = 60.0) -> dict[str, str]:
        return self._wait_diag(self.node_diag, ok, timeout, "node")

    def _wait_diag(self, seen: list, ok, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (seen and ok(seen[-1])):
                left = deadline - time.monotonic()
                assert left > 0, f"/diagnostics {what} never as expected: {seen[-1:]}"
                self.cond.wait(min(left, 0.5))
            return seen[-1]

    def call_inject(self, timeout: float = 30.0) -> Trigger.Response:
        reply = self.inject.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not reply.done():
            assert time.monotonic() < deadline, "~/inject_faults did not answer"
            time.sleep(0.05)
        return reply.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=5.0)


def stamp(msg, t: float) -> None:
    """Set msg.header.stamp to t seconds."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), round((t % 1) * 1e9)


def key(t: float) -> tuple[int, int]:
    """The (sec, nanosec) of a stamp of t seconds, as outputs and statuses are keyed."""
    return int(t), round((t % 1) * 1e9)
