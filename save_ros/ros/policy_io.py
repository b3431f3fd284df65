"""A policy's topics: several inputs matched in time in, an action chunk out.

`PolicyIntake` subscribes to one topic per model input (`input_topics`, `input_types`;
`input_names` says which forward parameter each feeds, `topic_inputs`), decodes each message
with its own input's spec as it arrives (images through the node's preprocessing,
`preprocess.*`; JointState by `joint_names`; Int32MultiArray as an exact integer input; every
input checked against its box or valid values), and offers it
to an `ApproximateSync` (`sync.slop`). A bad message is rejected there with a `~/fault_status`
and counted; it never enters a set. A matched set goes to the pipeline as one input
(`MatchedInputs`), stamped with the newest stamp of the set (and that message's frame_id), so
the node's bounded newest-first queue, verdicts and publish policy apply to it unchanged.
Unmatched and late messages are counted per input on /diagnostics (`<node>: sync`).

`ChunkEncoder` builds `~/output` for an action chunk (chunk, joints): a
trajectory_msgs/JointTrajectory (joint names from `joint_names`; point k at
`time_from_start` = (k + 1) * control_period after the stamp), or a std_msgs/Float32MultiArray
(dims chunk x joints; it has no header: `~/fault_status` carries the stamp).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension

from save_ros.preprocess import InputError, InputSpec, check_in_box, int_array_to_input
from save_ros.ros import calibration, convert, params
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.outputs import OutputEncoder, OutputKind
from save_ros.ros.policy_params import PolicyConfig
from save_ros.ros.sync import ApproximateSync, SyncStats

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class PolicyConfigError(params.ParameterError):
    """The topics, types or output do not fit the policy (a parameter problem)."""


@dataclass(frozen=True)
class MatchedInputs:
    """One matched set as the pipeline takes it: the set's header and a tensor per input."""

    header: Header
    x: tuple[torch.Tensor, ...]


def topic_inputs(pcfg: PolicyConfig, loaded: LoadedModel) -> tuple[int, ...]:
    """The model input (forward position) each topic feeds: by `input_names`, else in order."""
    if not pcfg.names:
        return tuple(range(len(pcfg.topics)))
    names = list(loaded.input_names)
    unknown = [n for n in pcfg.names if n not in names]
    if unknown or len(set(pcfg.names)) != len(pcfg.names):
        raise PolicyConfigError(f"input_names {list(pcfg.names)} must name each input of "
                                f"{loaded.name} once ({', '.join(names)})")
    return tuple(names.index(n) for n in pcfg.names)


def check_fit(cfg: params.NodeConfig, pcfg: PolicyConfig, loaded: LoadedModel) -> None:
    """Raise PolicyConfigError unless the topics and types fit the model's inputs."""
    if loaded.multi and not pcfg.multi:
        raise PolicyConfigError(
            f"{loaded.name} takes {len(loaded.inputs)} inputs ({', '.join(loaded.input_names)})"
            ": set input_topics and input_types, one per input in that order")
    if not pcfg.multi:
        return
    if not loaded.multi:
        raise PolicyConfigError(f"input_topics names {len(pcfg.topics)} topics but "
                                f"{loaded.name} takes one input; use input_topic")
    if len(pcfg.topics) != len(loaded.inputs):
        raise PolicyConfigError(
            f"input_topics names {len(pcfg.topics)} topics but {loaded.name} takes "
            f"{len(loaded.inputs)} inputs ({', '.join(loaded.input_names)})")
    for topic, kind, k in zip(pcfg.topics, pcfg.types, topic_inputs(pcfg, loaded), strict=True):
        name, spec = loaded.input_names[k], loaded.inputs[k]
        where = f"input {name!r} (topic {topic}, {kind.value})"
        if spec.integer != (kind is params.InputType.INT32_MULTI_ARRAY):
            raise PolicyConfigError(
                f"{where} is an integer input: give it an int32_multi_array topic"
                if spec.integer else f"{where}: an int32_multi_array topic feeds an integer "
                "input only (input_ranges 'int:LOW,HIGH')")
        want = {params.InputType.IMAGE: 3, params.InputType.JOINT_STATE: 1}.get(kind)
        if want is not None and len(spec.shape) != want:
            raise PolicyConfigError(f"{where} has shape {list(spec.shape)}; a {kind.value} "
                                    f"topic gives a {want}-d input")


def decode(kind: params.InputType, msg, spec: InputSpec, cfg: params.NodeConfig,
           dtype: torch.dtype) -> torch.Tensor:
    """One message as one input of the policy, on cfg.device, inside its box (InputError)."""
    dev = torch.device(cfg.device)
    if kind is params.InputType.IMAGE:
        x = convert.image_to_tensor(msg, spec, cfg.image, dev)
    elif kind is params.InputType.JOINT_STATE:
        x = convert.joint_state_to_tensor(msg, spec, cfg.joint_names, dev).to(dtype)
    elif kind is params.InputType.INT32_MULTI_ARRAY:  # exact: no float conversion
        x = int_array_to_input(msg.data[msg.layout.data_offset:], spec, "Int32MultiArray", dev)
    else:
        x = convert.multiarray_to_tensor(msg, spec, dev).to(dtype)
    return check_in_box(x, spec)


def calibration_sets(cfg: params.NodeConfig, pcfg: PolicyConfig, loaded: LoadedModel,
                     resolve, msg_types: dict, warn) -> tuple[torch.Tensor, ...]:
    """One calibration batch per input (forward order) from `calibration.file` or `.bag`; a
    bag's topics are decoded per input and matched like live ones. `resolve` expands a topic
    name as the node does; `msg_types` maps an InputType to (class, type name)."""
    if cfg.calibration_topic:
        raise PolicyConfigError("calibration.topic names one topic; a policy of several inputs "
                                "takes calibration.topics, one per input topic")
    if cfg.calibration_file:
        return calibration.sets_from_file(cfg.calibration_file, loaded.input_names,
                                          loaded.inputs, cfg.calibration_max, warn)
    order = topic_inputs(pcfg, loaded)
    topics = calibration.bag_topics(cfg.calibration_bag,
                                    tuple(msg_types[kind][1] for kind in pcfg.types),
                                    tuple(resolve(t) for t in pcfg.topics),
                                    pcfg.calibration_topics)
    decoders = tuple((lambda msg, kind=kind, k=k: decode(kind, msg, loaded.inputs[k], cfg,
                                                         loaded.dtype))
                     for kind, k in zip(pcfg.types, order, strict=True))
    per_topic = calibration.sets_from_bag(
        cfg.calibration_bag, topics, decoders, tuple(loaded.input_names[k] for k in order),
        round(pcfg.slop_s * 1e9), pcfg.sync_queue, cfg.calibration_max, warn)
    return in_forward_order(order, list(per_topic))


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class PolicyIntake:
    """The input subscriptions of a policy of several inputs and their matching."""

    def __init__(self, node, cfg: params.NodeConfig, pcfg: PolicyConfig, loaded: LoadedModel,
                 pipeline, msg_types: dict) -> None:
        """`node` is the SaveNode (its `intake_node` subscribes); `msg_types` maps an
        InputType to (message class, type name)."""
        self.node, self.intake_node, self.cfg, self.pcfg = node, node.intake_node, cfg, pcfg
        self.loaded, self.pipeline = loaded, pipeline
        self.msg_types = {kind: cls for kind, (cls, _) in msg_types.items()}
        self.inputs = topic_inputs(pcfg, loaded)  # the model input each topic feeds
        self.sync: ApproximateSync = ApproximateSync(
            [loaded.input_names[k] for k in self.inputs], round(pcfg.slop_s * 1e9),
            pcfg.sync_queue)
        self.subs: list = []
        self._last = self.sync.stats()
        self._lock = threading.Lock()

    def subscribe(self, qos) -> str:
        """Subscribe to every input topic; what it took, for the log."""
        for i, (topic, kind) in enumerate(zip(self.pcfg.topics, self.pcfg.types, strict=True)):
            self.subs.append(self.intake_node.create_subscription(
                self.msg_types[kind], self.node.resolve_topic_name(topic),
                lambda msg, i=i: self.on_message(i, msg), qos))
        return " + ".join(f"{s.topic_name} [{k.value}]" for s, k in zip(
            self.subs, self.pcfg.types, strict=True)) + f" (matched within {self.pcfg.slop_s} s)"

    def unsubscribe(self) -> None:
        """Destroy the subscriptions; waiting messages are counted unmatched."""
        for sub in self.subs:
            self.intake_node.destroy_subscription(sub)
        self.subs = []
        self.sync.clear()

    def on_message(self, index: int, msg) -> None:
        """Decode one message of input `index` and offer it for matching (never raises)."""
        header = getattr(msg, "header", None)
        if header is None:  # Float32MultiArray: stamped on arrival
            header = Header(stamp=self.node.get_clock().now().to_msg())
        k = self.inputs[index]
        name = self.loaded.input_names[k]
        try:
            x = decode(self.pcfg.types[index], msg, self.loaded.inputs[k], self.cfg,
                       self.loaded.dtype)
        except InputError as exc:
            p = self.pipeline
            p.health.on_rejected(exc.kind, f"{name}: {exc}")
            p.logger.warning(f"input {name} rejected: {str(exc)[:200]}",
                             throttle_duration_sec=5.0)
            p.publish_status(header, ERROR, f"input rejected: {name}: {exc}",
                             {"verified": False, "rejected": True, "reject_kind": exc.kind,
                              "input": name, "published": False})
            p._wake_diagnostics()
            return
        except Exception as exc:  # callback boundary: report, keep serving
            self.pipeline.logger.error(f"input {name} failed: {exc!r}"[:300])
            return
        match = self.sync.add(index, _ns(header.stamp), (header, x))
        if match is None:
            return
        newest = max(range(len(match.items)), key=lambda j: match.stamps_ns[j])
        set_header = match.items[newest][0]
        self.pipeline.on_input(MatchedInputs(
            Header(stamp=set_header.stamp, frame_id=set_header.frame_id),
            in_forward_order(self.inputs, [x for _, x in match.items])))

    def status(self, health) -> DiagnosticStatus:
        """`<node>: sync` for /diagnostics: counters per input; WARN on late messages or when
        messages came but no set matched since the last report."""
        now = self.sync.stats()
        with self._lock:
            last, self._last = self._last, now
        late = now.total("late") - last.total("late")
        sets = now.matched_sets - last.matched_sets
        came = now.total("received") - last.total("received")
        level, message = OK, f"{sets} sets matched"
        if late:
            level, message = WARN, f"{late} late messages (older than a set already served)"
        elif came and not sets and all(c.received for c in now.per_input):
            level, message = WARN, (f"no set matched since the last report: stamps differ more "
                                    f"than sync.slop ({self.pcfg.slop_s} s)")
        return convert.diagnostic_status(f"{health.name}: sync", health.hardware_id, level,
                                         message,
                                         sync_values(now, self.pcfg.slop_s))


def in_forward_order(inputs: tuple[int, ...], per_topic: list) -> tuple:
    """Items given per topic, placed at the model input each topic feeds."""
    out: list = [None] * len(inputs)
    for topic, k in enumerate(inputs):
        out[k] = per_topic[topic]
    return tuple(out)


def sync_values(stats: SyncStats, slop_s: float) -> dict[str, object]:
    """The diagnostic key/values of the synchronizer's counters."""
    values: dict[str, object] = {"matched_sets": stats.matched_sets, "slop_s": slop_s,
                                 "unmatched": stats.total("unmatched"),
                                 "late": stats.total("late")}
    for name, c in zip(stats.names, stats.per_input, strict=True):
        for what in ("received", "matched", "unmatched", "late", "waiting"):
            values[f"{name}.{what}"] = getattr(c, what)
    return values


class ChunkEncoder(OutputEncoder):
    """`~/output` for an action chunk: JointTrajectory or Float32MultiArray (module docstring)."""

    def __init__(self, kind: OutputKind, task: str, names, loaded: LoadedModel,
                 joint_names: tuple[str, ...], control_period: float) -> None:
        super().__init__(kind, task, names)
        shape = loaded.output_shape or (loaded.num_outputs,)
        self.joints = int(shape[-1])
        self.chunk = loaded.num_outputs // self.joints
        self.control_period = control_period
        if kind is OutputKind.JOINT_TRAJECTORY:
            from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

            if joint_names and len(joint_names) != self.joints:
                raise PolicyConfigError(
                    f"joint_names has {len(joint_names)} names but {loaded.name}'s actions have "
                    f"{self.joints} joints; give one name per joint")
            self.joint_names = list(joint_names) or [f"joint_{i}" for i in range(self.joints)]
            self._traj = (JointTrajectory, JointTrajectoryPoint)
            self.msg_type = JointTrajectory
        else:
            self.msg_type = Float32MultiArray

    def describe(self) -> str:
        """The message type, for the start-up log."""
        what = ("trajectory_msgs/JointTrajectory" if self.kind is OutputKind.JOINT_TRAJECTORY
                else "std_msgs/Float32MultiArray")
        return f"{what} ({self.chunk} x {self.joints} action chunk)"

    def message(self, output: torch.Tensor, header: Header):
        """The message for one action chunk (a CPU tensor), stamped like the matched set."""
        actions = output.detach().reshape(self.chunk, self.joints).to(torch.float64).cpu()
        if self.kind is OutputKind.FLOAT32_MULTI_ARRAY:
            msg = Float32MultiArray()
            msg.layout.dim = [
                MultiArrayDimension(label="chunk", size=self.chunk,
                                    stride=self.chunk * self.joints),
                MultiArrayDimension(label="joints", size=self.joints, stride=self.joints)]
            msg.data = actions.to(torch.float32).reshape(-1).tolist()
            return msg
        trajectory, point = self._traj
        msg = trajectory(header=header, joint_names=self.joint_names)
        for k, row in enumerate(actions.tolist()):
            ns = round((k + 1) * self.control_period * 1e9)
            msg.points.append(point(positions=row, time_from_start=Duration(
                sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)))
        return msg


def make_encoder(kind: OutputKind, task: str, names, loaded: LoadedModel,
                 cfg: params.NodeConfig, pcfg: PolicyConfig) -> OutputEncoder:
    """The `~/output` encoder: a ChunkEncoder for the chunk kinds, else OutputEncoder."""
    if kind in (OutputKind.JOINT_TRAJECTORY, OutputKind.FLOAT32_MULTI_ARRAY):
        return ChunkEncoder(kind, task, names, loaded, cfg.joint_names, pcfg.control_period)
    return OutputEncoder(kind, task, names)
