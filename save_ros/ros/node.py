"""`save_node`: SAVE-protected inference on ROS 2 topics, with fault status, diagnostics, services.

Threads (a MultiThreadedExecutor, one callback group per thing it protects):
- `intake`: decodes each input message and queues it (bounded; when full the oldest input is
  dropped and counted), so a flood never blocks DDS or grows memory;
- `inference`: drains the queue through `ProtectedModel.infer(x, wait=False)`;
- `verifier`: runs the queued SAVE checks (`run_pending_checks`) on its own executor thread
  (`ProtectConfig.verifier = "external"`), so checks overlap the next inference;
- `services`: `~/recover`, `~/reanalyze`, `~/inject_faults`, `~/inject_crash`, which answer
  while inference runs;
- `diagnostics`: `/diagnostics` at `diagnostics_period` and on every level change.

Exit codes: 0 clean shutdown, 2 bad parameter, 3 model cannot be loaded or protected.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header
from std_srvs.srv import Trigger

from save_ros.ros import convert, model_source, params
from save_ros.ros.backend import Backend, BackendError, Verdict, make_backend, resolve
from save_ros.ros.health import ERROR, OK, WARN, Health, Outcome

EXIT_OK, EXIT_BAD_PARAMETER, EXIT_MODEL = 0, 2, 3
INPUT_TYPES = {
    params.InputType.IMAGE: Image,
    params.InputType.FLOAT32_MULTI_ARRAY: Float32MultiArray,
    params.InputType.JOINT_STATE: JointState,
}


@dataclass
class _Pending:
    """One queued input: its header (stamp, frame), tensor, sequence number and arrival time."""

    header: Header
    x: torch.Tensor
    seq: int
    received: float


class SaveNode(Node):
    """Serves a SAVE-protected model; raises ParameterError / ModelLoadError / BackendError."""

    def __init__(self, **kwargs) -> None:
        super().__init__("save_node", **kwargs)
        params.declare(self)
        self.cfg = params.read(self)
        self.loaded = model_source.load(self.cfg)
        self.names = convert.output_names(self.loaded.task, self.loaded.num_outputs,
                                          self.cfg.output_names)
        # diagnostic_aggregator groups by the part before ':'; the FQN keeps namespaces apart
        fqn = self.get_fully_qualified_name().lstrip("/")
        self.health = Health(f"{fqn}: {self.loaded.name}", self.loaded.name,
                             protected=self.cfg.protect)
        self._diag_gc = None  # wakes the diagnostics thread on a worker failure
        self.backend: Backend = make_backend(self.cfg, self.loaded, self.get_logger(),
                                             self._on_worker_event)
        self._queue: deque[_Pending] = deque()
        self._queue_lock = threading.Lock()
        self._seq = 0
        self._in_flight: set[Future] = set()
        self._in_flight_lock = threading.Lock()
        self._accepting = True
        self._last_level = OK
        self._inject_seed = self.cfg.fault_injection.seed

        self.intake_group = MutuallyExclusiveCallbackGroup()
        self.inference_group = MutuallyExclusiveCallbackGroup()
        self.verifier_group = MutuallyExclusiveCallbackGroup()
        self.services_group = MutuallyExclusiveCallbackGroup()
        self.diagnostics_group = MutuallyExclusiveCallbackGroup()

        # deep enough that a burst of results and statuses is not overwritten before delivery
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.output_pub = self.create_publisher(JointState, "~/output", reliable)
        self.status_pub = self.create_publisher(DiagnosticArray, "~/fault_status", reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        input_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=self.cfg.qos_depth,
            reliability=(ReliabilityPolicy.RELIABLE if self.cfg.qos_reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT))
        self.input_sub = self.create_subscription(
            INPUT_TYPES[self.cfg.input_type], self.cfg.input_topic, self._on_input, input_qos,
            callback_group=self.intake_group)
        # guard conditions wake the inference / verifier threads at once; the timers are a
        # backstop for a wake-up that coalesced with one already being handled
        self._infer_gc = self.create_guard_condition(self._drain, self.inference_group)
        self.create_timer(0.05, self._drain, callback_group=self.inference_group)
        self._verify_gc = self.create_guard_condition(self._verify, self.verifier_group)
        self.create_timer(0.05, self._verify, callback_group=self.verifier_group)
        self.create_timer(self.cfg.diagnostics_period, self._publish_diagnostics,
                          callback_group=self.diagnostics_group)
        self._diag_gc = self.create_guard_condition(self._maybe_publish_diagnostics,
                                                    self.diagnostics_group)

        self.create_service(Trigger, "~/recover", self._srv_recover,
                            callback_group=self.services_group)
        self.create_service(Trigger, "~/reanalyze", self._srv_reanalyze,
                            callback_group=self.services_group)
        if self.cfg.fault_injection.enabled:
            self.create_service(Trigger, "~/inject_faults", self._srv_inject,
                                callback_group=self.services_group)
            self.create_service(Trigger, "~/inject_crash", self._srv_inject_crash,
                                callback_group=self.services_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"serving {self.loaded.name} ({self.loaded.task}, input {self.loaded.input.shape}) "
            f"on {self.input_sub.topic_name} [{self.cfg.input_type.value}], "
            f"{self.backend.describe()}, publish policy {self.cfg.publish_policy.value}")

    # -- inputs --------------------------------------------------------------------------
    def _on_input(self, msg) -> None:
        """Decode and queue one input; a bad one is rejected with a status, never raised."""
        received = time.perf_counter()
        self.health.on_received()
        if not self._accepting:
            return
        header = getattr(msg, "header", None)
        if header is None:  # Float32MultiArray has no header: stamp it on arrival
            header = Header(stamp=self.get_clock().now().to_msg())
        try:
            x = self._decode(msg)
        except convert.InputError as exc:
            self.health.on_rejected(str(exc))
            self.get_logger().warning(f"input rejected: {exc}", throttle_duration_sec=5.0)
            self._publish_status(header, ERROR, f"input rejected: {exc}",
                                 {"verified": False, "rejected": True})
            self._maybe_publish_diagnostics()
            return
        dropped = None
        with self._queue_lock:
            self._seq += 1
            if len(self._queue) >= self.cfg.queue_size:
                dropped = self._queue.popleft()
                self.health.on_dropped()
            self._queue.append(_Pending(header, x, self._seq, received))
        self._infer_gc.trigger()
        if dropped is not None:  # say so, stamped, so a controller waiting on it moves on
            self._publish_status(dropped.header, WARN, "dropped: inference queue full",
                                 {"verified": False, "dropped": True, "seq": dropped.seq,
                                  "published": False})
            self._maybe_publish_diagnostics()

    def _decode(self, msg) -> torch.Tensor:
        spec = self.loaded.input
        if self.cfg.input_type is params.InputType.IMAGE:
            return convert.image_to_tensor(msg, spec)
        if self.cfg.input_type is params.InputType.JOINT_STATE:
            return convert.joint_state_to_tensor(msg, spec, self.cfg.joint_names)
        return convert.multiarray_to_tensor(msg, spec)

    # -- inference and verification ------------------------------------------------------
    def _drain(self) -> None:
        """Run every queued input through the protected model, oldest first."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    return
                item = self._queue.popleft()
            try:
                self._infer(item)
            except Exception as exc:  # callback boundary: report, keep serving
                self.get_logger().error(f"inference failed: {exc!r}")
                self.health.on_rejected(f"inference failed: {type(exc).__name__}")
                self._publish_status(item.header, ERROR, f"inference failed: {exc}",
                                     {"verified": False, "seq": item.seq})

    def _infer(self, item: _Pending) -> None:
        output, verdict = self.backend.infer(item.x)
        self.health.on_inferred()
        immediate = self.cfg.publish_policy is params.PublishPolicy.IMMEDIATE
        if immediate:
            self._publish_output(item.header, output)
        with self._in_flight_lock:
            self._in_flight.add(verdict)
        verdict.add_done_callback(lambda f: self._on_verdict(item, output, f, immediate))
        self._verify_gc.trigger()

    def _verify(self) -> None:
        """Run the queued SAVE checks (the verifier thread of `verifier="external"`)."""
        try:
            self.backend.run_pending_checks(self.cfg.verify_timeout)
        except Exception as exc:  # callback boundary: report, keep serving
            self.get_logger().error(f"verifier failed: {exc!r}", throttle_duration_sec=5.0)

    def _on_verdict(self, item: _Pending, output: torch.Tensor, future: Future,
                    published: bool) -> None:
        """Publish the fault status of one inference (and, under `verified`, its result)."""
        with self._in_flight_lock:
            self._in_flight.discard(future)
        latency = time.perf_counter() - item.received
        try:
            verdict: Verdict = future.result()
        except Exception as exc:  # the verifier itself failed: the result is unverified
            verdict = Verdict.failed(f"verification failed: {exc!r}")
        if not published and verdict.publishable:
            self._publish_output(item.header, verdict.output if verdict.output is not None
                                 else output)
            published = True
        elif published and verdict.output is not None and verdict.publishable:
            # under `immediate` the faulty output already went out: send the repaired one with
            # the same stamp, so a subscriber that keys on stamps takes the correction
            self._publish_output(item.header, verdict.output)
            verdict.values["corrected_output_published"] = True
        self.health.on_outcome(Outcome(verified=verdict.verified, detected=verdict.detected,
                                       repaired=verdict.repaired, unrepaired=verdict.unrepaired,
                                       latency_s=latency))
        values = {"seq": item.seq, "published": published, "latency_ms": latency * 1e3}
        values.update(verdict.values)
        self._publish_status(item.header, verdict.level, verdict.message, values)
        if verdict.level != OK:
            self._maybe_publish_diagnostics()

    # -- publishing ----------------------------------------------------------------------
    def _publish_output(self, header: Header, output: torch.Tensor) -> None:
        self.output_pub.publish(convert.result_message(output, header, self.loaded.task,
                                                       self.names))
        self.health.on_published()

    def _publish_status(self, header: Header, level: bytes, message: str,
                        values: dict[str, object]) -> None:
        status = convert.diagnostic_status(f"{self.get_fully_qualified_name()}/inference",
                                           self.loaded.name, level, message, values)
        self.status_pub.publish(convert.diagnostic_array(header, [status]))

    def _publish_diagnostics(self) -> None:
        """Publish the node's health on /diagnostics (periodic, and on level changes)."""
        status = self.health.report(reset=True)
        self._last_level = status.level
        header = Header(stamp=self.get_clock().now().to_msg())
        self.diag_pub.publish(convert.diagnostic_array(header, [status]))

    def _maybe_publish_diagnostics(self) -> None:
        """Publish at once when the level changed since the last report."""
        if self.health.level() != self._last_level:
            self._publish_diagnostics()

    # -- services and parameters ----------------------------------------------------------
    def _srv_recover(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """Restore every normal-memory tensor from its golden copy."""
        try:
            resp.message = self.backend.recover()
            resp.success = True
            self.health.on_recovered()
        except BackendError as exc:
            resp.success, resp.message = False, str(exc)
        self._publish_diagnostics()
        return resp

    def _srv_reanalyze(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """Redo Selection and Allocation (and update the analysis cache)."""
        try:
            resp.message = self.backend.reanalyze()
            resp.success = True
        except BackendError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def _srv_inject(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """Flip bits in normal-memory tensors per the fault_injection.* parameters."""
        fi = params.read(self).fault_injection
        try:
            resp.message = self.backend.inject(fi.count, fi.target, self._inject_seed, fi.bits)
            resp.success = True
            self.health.on_injected(fi.count)
            self._inject_seed += 1
        except BackendError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def _srv_inject_crash(self, _req: Trigger.Request,
                          resp: Trigger.Response) -> Trigger.Response:
        """Make the active inference worker fail (fault_injection.crash_kind) on its next input."""
        kind = params.read(self).fault_injection.crash_kind
        try:
            resp.message = self.backend.inject_crash(kind)
            resp.success = True
        except BackendError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def _on_worker_event(self, event) -> None:
        """A FailoverEvent (failover reporter thread): count it; an error goes out at once."""
        if event.is_error:
            self.health.on_worker_failure(
                f"worker {event.pid} {event.kind.value}: {event.detail}")
        elif event.kind.value == "failover":
            self.health.on_failover(bool(event.warm))
        if event.is_error and self._diag_gc is not None:
            self._diag_gc.trigger()

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        reason = params.validate_change(changes)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        for p in changes:
            if p.name == "publish_policy":
                self.cfg = _replace(self.cfg, publish_policy=params.PublishPolicy(p.value))
            elif p.name == "fault_injection.seed":
                self._inject_seed = int(p.value)
        return SetParametersResult(successful=True)

    # -- shutdown -------------------------------------------------------------------------
    def finish(self, timeout: float) -> int:
        """Stop taking inputs, let in-flight verification finish; report what did not.

        Returns the number of results reported unverified because the deadline passed.
        """
        self._accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._queue_lock, self._in_flight_lock:
                if not self._queue and not self._in_flight:
                    break
            time.sleep(0.01)
        with self._queue_lock:
            left = list(self._queue)
            self._queue.clear()
        with self._in_flight_lock:
            pending = list(self._in_flight)
            self._in_flight.clear()
        for item in left:
            self._publish_status(item.header, ERROR, "shutdown: not inferred",
                                 {"verified": False, "seq": item.seq, "published": False})
        for future in pending:  # _on_verdict reports each one unverified
            resolve(future, error=TimeoutError("shutdown before verification finished"))
        self._publish_diagnostics()
        self.backend.close()
        return len(left) + len(pending)


def _replace(cfg: params.NodeConfig, **changes) -> params.NodeConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def main(argv: list[str] | None = None) -> int:
    """Entry point: build the node from --ros-args, spin until SIGINT/SIGTERM, shut down."""
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.signals import SignalHandlerOptions

    torch.set_num_threads(1)  # one inference thread; DDS and the verifier need the other cores
    argv = sys.argv if argv is None else argv
    # rcl itself would only say "Error opening YAML file"
    for flag, path in zip(argv, argv[1:], strict=False):
        if flag == "--params-file" and not os.path.isfile(path):
            print(f"save_node: params file {path} does not exist", file=sys.stderr)
            return EXIT_BAD_PARAMETER
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except rclpy_implementation.RCLError as exc:  # unparsable --ros-args or params file
        where = re.sub(r", at \S+:\d+", "", str(exc))  # drop rcl's C source locations
        print(f"save_node: bad --ros-args: {where}", file=sys.stderr)
        return EXIT_BAD_PARAMETER
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = SaveNode()
    except (params.ParameterError, rclpy.exceptions.InvalidParameterValueException,
            rclpy.exceptions.InvalidParameterTypeException) as exc:
        print(f"save_node: bad parameter: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return EXIT_BAD_PARAMETER
    except (model_source.ModelLoadError, BackendError) as exc:
        print(f"save_node: cannot serve the model: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return EXIT_MODEL
    executor = MultiThreadedExecutor(num_threads=6)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="executor", daemon=True)
    spinner.start()
    while not stop.wait(0.2):
        if not spinner.is_alive():
            break
    node.get_logger().info("shutting down: finishing in-flight verification")
    unverified = node.finish(node.cfg.shutdown_timeout)
    if unverified:
        node.get_logger().warning(f"{unverified} results reported unverified at shutdown")
    time.sleep(0.1)  # let the last status and diagnostics leave before the context goes
    # stop the executor and wait for its threads before destroying what their callbacks use:
    # destroying a node under a running callback aborts the process in rcl
    if not executor.shutdown(timeout_sec=10.0):
        node.get_logger().warning("executor did not stop within 10 s")
    spinner.join(timeout=10.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
