"""`SaveNode`: the managed (lifecycle) node that serves a SAVE-protected model.

Transitions (lifecycle_msgs services `~/change_state`, `~/get_state`, ...; `autostart: true`
runs configure + activate at start for users without a lifecycle manager):
- configure: load the model, protect it (Selection, or the cached Analysis), build publishers;
- activate: subscribe to the input, publish (`~/label_info` once, transient local);
- deactivate: unsubscribe, finish the input in inference and the open verdicts;
- cleanup: close the protected model, drop publishers; shutdown: deactivate + cleanup.

Callback groups, one per thing it protects: `intake` (the subscription), `inference` (the
drain), `verifier` (`run_pending_checks`), `services` (recover, reanalyze, inject), `diagnostics`
(/diagnostics), `lifecycle` (the transition services). The data path is `pipeline.Pipeline`.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header, Int32MultiArray

from save_ros.preprocess import DTYPES
from save_ros.ros import (
    calibration,
    convert,
    lifecycle_iface,
    model_source,
    params,
    policy_io,
    policy_params,
)
from save_ros.ros.backend import Backend, BackendError, hardware_id, make_backend
from save_ros.ros.health import Health
from save_ros.ros.outputs import (
    OutputTypeError,
    choose_output,
    vision_msgs_available,
)
from save_ros.ros.pipeline import Pipeline, Publishers, decode_input
from save_ros.ros.services import NodeServices

INPUT_TYPES = {
    params.InputType.IMAGE: (Image, "sensor_msgs/msg/Image"),
    params.InputType.FLOAT32_MULTI_ARRAY: (Float32MultiArray, "std_msgs/msg/Float32MultiArray"),
    params.InputType.JOINT_STATE: (JointState, "sensor_msgs/msg/JointState"),
    params.InputType.INT32_MULTI_ARRAY: (Int32MultiArray, "std_msgs/msg/Int32MultiArray"),
}
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class ConfigureError(RuntimeError):
    """configure failed; `exit_code` says how (2: a parameter, 3: the model)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _check_output_names(cfg: params.NodeConfig) -> None:
    """A bundled model's output count is known without loading it: check names at once."""
    from save_ros import models

    if cfg.output_names and cfg.model in models.available() and not cfg.model_file:
        n = models.get_spec(cfg.model).num_outputs
        if len(cfg.output_names) != n:
            raise params.ParameterError(
                f"output_names has {len(cfg.output_names)} names but {cfg.model} has {n} "
                "outputs; give one name per output or leave it unset")


class SaveNode(LifecycleNode):
    """Serves a SAVE-protected model; raises ParameterError for bad parameters at construction."""

    def __init__(self, **kwargs) -> None:
        # rclpy's lifecycle services keep 10 requests: lifecycle_iface offers them deeper
        super().__init__("save_node", enable_communication_interface=False, **kwargs)
        # the lifecycle (and parameter) services use the node's default group
        self.lifecycle_group = self.default_callback_group
        params.declare(self)
        self.cfg = params.read(self)
        self.policy_cfg = policy_params.declare_and_read(self)  # input_topics, sync.*, ...
        lifecycle_iface.attach(self, self.cfg.services_qos_depth, self.lifecycle_group)
        _check_output_names(self.cfg)
        for warning in params.unknown_overrides(policy_params.others(self._parameter_overrides)):
            self.get_logger().warning(warning)
        # The input subscription lives on a helper node of its own, spun by a single-threaded
        # executor (`node.py`): rclpy's MultiThreadedExecutor (Kilted) delivered 15-36 of 150
        # messages at 30 Hz to a subscriber that did nothing, where a SingleThreadedExecutor got
        # all 150 (docs/results/ros_node.md, scripts/ros/executor_probe.py). No global
        # arguments (a `__node:=` remap would give it the node's own name); the topic is
        # resolved, remapped and expanded by this node.
        self.intake_node = Node(f"{self.get_name()}_intake", namespace=self.get_namespace(),
                                context=self.context, use_global_arguments=False,
                                start_parameter_services=False, enable_rosout=False)
        self.inference_group = MutuallyExclusiveCallbackGroup()
        self.verifier_group = MutuallyExclusiveCallbackGroup()
        self.services_group = MutuallyExclusiveCallbackGroup()
        # reentrant: while one re-analysis runs, a second request is refused at once
        self.reanalysis_group = ReentrantCallbackGroup()
        self.diagnostics_group = MutuallyExclusiveCallbackGroup()
        self.configure_error: ConfigureError | None = None
        self.loaded: model_source.LoadedModel | None = None
        self.backend: Backend | None = None
        self.pipeline: Pipeline | None = None
        self.names: list[str] = []
        self._sub, self._policy_intake = None, None  # one input topic, or several (policy_io)
        self._pubs: list = []
        self._timers: list = []
        self.on_finalized = None  # called after the shutdown transition (main: end the process)
        fqn = self.get_fully_qualified_name().lstrip("/")
        # diagnostic_aggregator groups by the part before ':'; the FQN keeps namespaces apart
        self.health = Health(fqn, hardware_id(self.cfg.device), self.cfg.protect,
                             self.cfg.fault_hold, self.cfg.input_timeout)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self._infer_gc = self.create_guard_condition(self._drain, self.inference_group)
        self._verify_gc = self.create_guard_condition(self._verify, self.verifier_group)
        self._diag_gc = self.create_guard_condition(self._maybe_publish_diagnostics,
                                                    self.diagnostics_group)
        # the timers are a backstop for a wake-up that coalesced with one being handled
        self.create_timer(0.05, self._drain, callback_group=self.inference_group)
        self.create_timer(0.05, self._verify, callback_group=self.verifier_group)
        self._diag_timer = self.create_timer(self.cfg.diagnostics_period,
                                             self.publish_diagnostics,
                                             callback_group=self.diagnostics_group)
        self._last_level = None
        self.trigger_services = NodeServices(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and protect the model (or load its cached Analysis); create the publishers."""
        self.configure_error = None
        try:
            try:
                self._configure()
            except ConfigureError:
                raise
            except Exception as exc:  # a bug or a model's own error: one line, not silence
                raise ConfigureError(f"{type(exc).__name__}: {exc}", 3) from exc
        except ConfigureError as exc:
            self.configure_error = exc
            if not self.cfg.autostart:  # with autostart, main prints it as the one exit line
                self.get_logger().error(f"configure failed: {exc}")
            self._release()
            return FAILURE
        return super().on_configure(state)

    def _configure(self) -> None:
        cfg = self.cfg
        try:
            loaded = model_source.load(policy_params.model_request(cfg, self.policy_cfg))
            names = convert.output_names(loaded.task, loaded.num_outputs, cfg.output_names)
            kind, note = choose_output(loaded.task, cfg.output_type, vision_msgs_available())
            policy_io.check_fit(cfg, self.policy_cfg, loaded)
            encoder = policy_io.make_encoder(kind, loaded.task, names, loaded, cfg,
                                             self.policy_cfg)
        except (ValueError, OutputTypeError) as exc:  # output_names / output_type: a parameter
            raise ConfigureError(str(exc), 2) from exc
        except model_source.ModelLoadError as exc:
            raise ConfigureError(str(exc), 3) from exc
        if note:
            self.get_logger().warning(note)
        loaded.to_dtype(DTYPES[cfg.image.dtype])
        self.loaded, self.names = loaded, names
        self.encoder = encoder
        try:
            self._load_calibration()
            self.backend = make_backend(cfg, loaded, self.get_logger(), self._on_worker_event)
        except (calibration.CalibrationError, params.ParameterError) as exc:
            raise ConfigureError(str(exc), 2) from exc
        except BackendError as exc:
            raise ConfigureError(str(exc), 3) from exc
        self.health = Health(self.health.name, self.health.hardware_id, cfg.protect,
                             cfg.fault_hold, cfg.input_timeout,
                             unprotected_reason=(f"UNPROTECTED: {loaded.why_unprotectable}"
                                                 if loaded.why_unprotectable else ""))
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        out = self.create_lifecycle_publisher(self.encoder.msg_type, "~/output", reliable)
        provisional = self.create_lifecycle_publisher(self.encoder.msg_type,
                                                      "~/provisional_output", reliable)
        status = self.create_lifecycle_publisher(DiagnosticArray, "~/fault_status", reliable)
        self._pubs = [out, provisional, status]
        self._label_pub = None
        if self.encoder.label_info(Header()) is not None:
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._label_pub = self.create_lifecycle_publisher(
                type(self.encoder.label_info(Header())), "~/label_info", latched)
            self._pubs.append(self._label_pub)
        self.pipeline = Pipeline(
            cfg, loaded, self.backend, self.encoder, self.health,
            Publishers(self._guarded(out), self._guarded(provisional), self._guarded(status)),
            self.get_logger(),
            f"{self.get_fully_qualified_name()}/inference",
            lambda: self.get_clock().now().to_msg(), self._wake(self._infer_gc),
            self._wake(self._verify_gc), self._wake(self._diag_gc))
        self.pipeline.on_live_calibration = self._start_live_calibration
        if self.policy_cfg.multi:
            self._policy_intake = policy_io.PolicyIntake(self, cfg, self.policy_cfg, loaded,
                                                         self.pipeline, INPUT_TYPES)
        self.get_logger().info(
            f"configured {loaded.name} ({loaded.task}, input "
            f"{[s.shape for s in loaded.inputs] if loaded.multi else loaded.input.shape}, "
            f"{loaded.source}) on {cfg.device}: {self.backend.describe()}; ~/output is "
            f"{self.encoder.describe()}")

    @staticmethod
    def _wake(guard):
        """guard.trigger that does nothing once the guard condition is destroyed: verdict
        callbacks and the failover reporter run on threads of their own and may outlive it
        (an InvalidHandle traceback at shutdown, issue 19)."""
        from rclpy.impl.implementation_singleton import rclpy_implementation

        def trigger() -> None:
            try:
                guard.trigger()
            except rclpy_implementation.InvalidHandle:
                pass

        return trigger

    def _guarded(self, pub):
        """pub.publish that logs, not raises, if the publisher is already destroyed (a verdict
        racing cleanup must not become an exception in an executor thread)."""
        from rclpy.impl.implementation_singleton import rclpy_implementation

        def publish(msg) -> None:
            try:
                pub.publish(msg)
            except rclpy_implementation.InvalidHandle:
                self.get_logger().warning(f"{pub.topic_name}: publisher already released; a "
                                          "message was not sent", throttle_duration_sec=5.0)

        return publish

    def _load_calibration(self) -> None:
        cfg, loaded = self.cfg, self.loaded
        if loaded.multi and (cfg.calibration_file or cfg.calibration_bag):  # a batch per input
            loaded.calibration = policy_io.calibration_sets(
                cfg, self.policy_cfg, loaded, self.resolve_topic_name, INPUT_TYPES, self._warn)
        elif cfg.calibration_file:
            loaded.calibration = calibration.from_file(cfg.calibration_file, loaded.input,
                                                       cfg.calibration_max, self._warn)
        elif cfg.calibration_bag:
            loaded.calibration = calibration.from_bag(
                cfg.calibration_bag, cfg.calibration_topic, INPUT_TYPES[cfg.input_type][1],
                lambda msg: decode_input(cfg, loaded, msg), loaded.input, cfg.calibration_max,
                self._warn)
        else:
            return
        count = len(loaded.calibration[0] if loaded.multi else loaded.calibration)
        self.get_logger().info(f"calibration: {count} inputs")

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the input; publishers go live."""
        cfg = self.cfg
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.qos_depth,
                         reliability=(ReliabilityPolicy.RELIABLE if cfg.qos_reliability ==
                                      "reliable" else ReliabilityPolicy.BEST_EFFORT))
        self.pipeline.unseal()
        ret = super().on_activate(state)
        if self._policy_intake is not None:  # several inputs, matched in time
            inputs = self._policy_intake.subscribe(qos)
        else:
            self._sub = self.intake_node.create_subscription(
                INPUT_TYPES[cfg.input_type][0], self.resolve_topic_name(cfg.input_topic),
                self.pipeline.on_input, qos)
            inputs = f"{self._sub.topic_name} [{cfg.input_type.value}]"
        if self._label_pub is not None:
            self._label_pub.publish(self.encoder.label_info(
                Header(stamp=self.get_clock().now().to_msg())))
        self.health.set_active(True)
        self.get_logger().info(
            f"active: {inputs} -> "
            f"{self.get_fully_qualified_name()}/output, publish policy "
            f"{cfg.publish_policy.value}, queue {cfg.queue_order.value} x{cfg.queue_size}")
        self.publish_diagnostics()
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking inputs; answer what is in flight (within shutdown_timeout)."""
        self._stop_serving()
        return super().on_deactivate(state)

    def quiesce(self) -> None:
        """Stop inferring and answer what is in flight, without destroying anything (the
        process shutdown does this while the executor still runs the verifier)."""
        self.health.set_active(False)
        if self.pipeline is not None:
            self.pipeline.finish(self.cfg.shutdown_timeout)

    def _stop_serving(self) -> None:
        """In order: no new inference; the one running and open verdicts finish (or are
        answered unverified); unsubscribe; wait for intake callbacks still running (each input
        they took is answered as dropped); only then may the publishers go."""
        self.health.set_active(False)
        pipeline = self.pipeline
        if pipeline is not None:
            unverified = pipeline.finish(self.cfg.shutdown_timeout)
            if unverified:
                self.get_logger().warning(f"{unverified} inputs answered unverified/not "
                                          "inferred while stopping")
        if self._sub is not None:
            self.intake_node.destroy_subscription(self._sub)
            self._sub = None
        if self._policy_intake is not None:
            self._policy_intake.unsubscribe()
        if pipeline is not None:
            pipeline.seal(timeout=2.0)
        self.publish_diagnostics()

    def destroy_node(self) -> None:
        """The node and its intake helper (once no executor spins either)."""
        intake = getattr(self, "intake_node", None)  # absent when __init__ refused a parameter
        if intake is not None:
            intake.destroy_node()
        super().destroy_node()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Close the protected model and drop the publishers."""
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop serving and release."""
        if self._sub is not None or (self._policy_intake and self._policy_intake.subs):
            self._stop_serving()
        self._release()
        if self.on_finalized is not None:
            self.on_finalized()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: release, back to unconfigured."""
        self._release()
        return SUCCESS

    def _release(self) -> None:
        if self.backend is not None:
            self.backend.close()
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        self._pubs, self.backend, self.pipeline = [], None, None
        self._policy_intake = None

    # -- threads --------------------------------------------------------------------------
    def _drain(self) -> None:
        if self.pipeline is not None:
            self.pipeline.drain()

    def _verify(self) -> None:
        """Run the queued SAVE checks (the verifier thread of `verifier="external"`)."""
        backend = self.backend
        if backend is None:
            return
        try:
            backend.run_pending_checks(self.cfg.verify_timeout)
        except Exception as exc:  # callback boundary: report, keep serving
            self.get_logger().error(f"verifier failed: {exc!r}", throttle_duration_sec=5.0)

    def publish_diagnostics(self) -> None:
        """The node's health on /diagnostics (periodic, and on level changes)."""
        statuses = self.health.report(reset=True)
        statuses += [self._policy_intake.status(self.health)] if self._policy_intake else []
        self._last_level = max(s.level for s in statuses)
        msg = convert.diagnostic_array(Header(stamp=self.get_clock().now().to_msg()), statuses)
        self.diag_pub.publish(msg)

    def _maybe_publish_diagnostics(self) -> None:
        if self.health.level() != self._last_level:
            self.publish_diagnostics()

    # -- services (ros/services.py) and parameters ----------------------------------------
    def _start_live_calibration(self, samples: torch.Tensor) -> None:
        """The first N live inputs are in: redo Selection with them, off the intake thread."""
        threading.Thread(target=self.trigger_services.live_calibration, args=(samples,),
                         name="live_calibration", daemon=True).start()

    def _on_worker_event(self, event) -> None:
        """A FailoverEvent (failover reporter thread): count it; an error goes out at once."""
        if event.is_error:
            self.health.on_worker_failure(f"worker {event.pid} {event.kind.value}: "
                                          f"{event.detail}")
            self._wake(self._diag_gc)()
        elif event.kind.value == "failover":
            self.health.on_failover(bool(event.warm))

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        reason = params.validate_change(changes)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        for p in changes:
            self._apply(p.name, p.value)
        return SetParametersResult(successful=True)

    def _apply(self, name: str, value) -> None:
        cfg = self.cfg
        if name == "publish_policy":
            cfg = replace(cfg, publish_policy=params.PublishPolicy(value))
        elif name == "fault_injection.seed":
            self.trigger_services.inject_seed = int(value)
        elif name in ("queue_size", "queue_order"):
            cfg = (replace(cfg, queue_size=int(value)) if name == "queue_size"
                   else replace(cfg, queue_order=params.QueueOrder(value)))
            if self.pipeline is not None:
                dropped = self.pipeline.queue.configure(
                    cfg.queue_size, cfg.queue_order is params.QueueOrder.NEWEST_FIRST)
                self.pipeline._report_dropped(dropped, "queue_full")
        elif name == "diagnostics_period":
            cfg = replace(cfg, diagnostics_period=float(value))
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(float(value), self.publish_diagnostics,
                                                 callback_group=self.diagnostics_group)
        elif name == "diagnostics.input_timeout":
            cfg = replace(cfg, input_timeout=float(value))
            self.health.input_timeout = float(value)
        elif name == "diagnostics.fault_hold":
            cfg = replace(cfg, fault_hold=float(value))
            self.health.fault_hold = float(value)
        self.cfg = cfg
        if self.pipeline is not None:
            self.pipeline.cfg = cfg
