"""The node's parameters: declared up front with descriptors, validated into a `NodeConfig`.

Parameters that shape the model or the graph (model, device, topics, QoS, preprocessing) are
read-only: rclpy refuses to change them at runtime with a reason. The rest (`RUNTIME`) are checked
by `validate_change`, which the node registers as its set-parameters callback, so a bad value is
refused, never applied. `unknown_overrides` finds parameters given that no spec declares (a typo
such as `publish_polcy` would otherwise leave the default in force without a word).
"""

from __future__ import annotations

import difflib
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType as T
from rclpy.node import Node
from rclpy.parameter import Parameter

from save_ros.errors import UserError
from save_ros.preprocess import ImageOptions, Resize
from save_ros.ros.model_source import ModelRequest


class ParameterError(UserError, ValueError):
    """A parameter value is invalid; the message names the parameter and what is allowed."""


class PublishPolicy(enum.Enum):
    """When a result is published: at once (status follows), or only once verified/repaired."""

    IMMEDIATE = "immediate"
    VERIFIED = "verified"


class Isolation(enum.Enum):
    """Where the model runs: in the node's process, or in a crash-isolated worker process."""

    NONE = "none"
    PROCESS = "process"


class QueueOrder(enum.Enum):
    """Which waiting input the inference thread takes next."""

    NEWEST_FIRST = "newest_first"  # the newest; older waiting ones are dropped as stale
    FIFO = "fifo"  # the oldest; when full, the oldest is dropped


class InputType(enum.Enum):
    """Message type of the input topic."""

    IMAGE = "image"
    FLOAT32_MULTI_ARRAY = "float32_multi_array"
    JOINT_STATE = "joint_state"
    INT32_MULTI_ARRAY = "int32_multi_array"  # an integer input of a policy (input_types only)


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: default, type, description, and whether it is read-only."""

    name: str
    default: Any
    type: int
    description: str
    read_only: bool = True
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True, T.PARAMETER_BOOL,
              "configure and activate at start (false: wait for a lifecycle manager)"),
    ParamSpec("model", "digits_cnn", T.PARAMETER_STRING,
              "a bundled model name, an import path package.module:factory (returns an "
              "nn.Module), or a torch.export file path/model.pt2"),
    ParamSpec("model_file", "", T.PARAMETER_STRING,
              "a state dict for model's architecture (bundled or import path), or a TorchScript "
              "file (served only with protect=false); empty: bundled weights"),
    ParamSpec("task", "", T.PARAMETER_STRING,
              "classification, control (continuous actions) or discrete_control (argmax "
              "action); empty: the bundled model's task, else classification",
              choices=("", "classification", "control", "discrete_control")),
    ParamSpec("input_shape", [0], T.PARAMETER_INTEGER_ARRAY,
              "input shape without batch dim (needed for an import path or TorchScript); "
              "[0]: from the model"),
    ParamSpec("input_low", [math.nan], T.PARAMETER_DOUBLE_ARRAY,
              "input box lower bound, one value per channel or one for all; [nan]: the "
              "model's, or for images the range preprocessing produces"),
    ParamSpec("input_high", [math.nan], T.PARAMETER_DOUBLE_ARRAY,
              "input box upper bound, one value per channel or one for all; [nan]: as input_low"),
    ParamSpec("output_names", [""], T.PARAMETER_STRING_ARRAY,
              "names of the outputs (class or action names), one per output; ['']: indices"),
    ParamSpec("output_type", "auto", T.PARAMETER_STRING,
              "~/output message: auto (vision_msgs/Classification for a classifier where "
              "vision_msgs is installed, else sensor_msgs/JointState), joint_state, "
              "classification, float64_multi_array; for an action chunk joint_trajectory or "
              "float32_multi_array", choices=("auto", "joint_state", "classification",
                                              "float64_multi_array", "joint_trajectory",
                                              "float32_multi_array")),
    ParamSpec("device", "cpu", T.PARAMETER_STRING, "torch device: cpu, cuda or cuda:N"),
    ParamSpec("protect", True, T.PARAMETER_BOOL,
              "false serves the bare model (a baseline for latency), without SAVE; its "
              "results go out on ~/output unverified"),
    ParamSpec("isolation", "none", T.PARAMETER_STRING,
              "none: the model runs in the node's process; process: in a worker process with a "
              "warm standby, so a crash (segfault, lost GPU context) or hang fails over instead "
              "of taking the node down", choices=tuple(i.value for i in Isolation)),
    # a flat name, not isolation.hang_timeout_s: YAML cannot hold `isolation: process` and an
    # `isolation:` mapping at once
    ParamSpec("isolation_hang_timeout_s", 2.0, T.PARAMETER_DOUBLE,
              "isolation=process: an inference unanswered this long is a hang; its worker is "
              "killed and the standby takes over", float_range=(0.05, 600.0)),
    ParamSpec("input_topic", "~/input", T.PARAMETER_STRING, "topic the node subscribes to"),
    ParamSpec("input_type", "image", T.PARAMETER_STRING, "message type of the input topic",
              choices=("image", "float32_multi_array", "joint_state")),
    ParamSpec("joint_names", [""], T.PARAMETER_STRING_ARRAY,
              "for joint_state input: joint order the policy expects; ['']: message order"),
    ParamSpec("preprocess.resize", "stretch", T.PARAMETER_STRING,
              "fit images to the model's H x W: stretch, letterbox (keep aspect, pad) or "
              "center_crop (keep aspect, crop)", choices=("stretch", "letterbox", "center_crop")),
    ParamSpec("preprocess.mean", [math.nan], T.PARAMETER_DOUBLE_ARRAY,
              "per-channel mean of [0, 1] pixels, subtracted (with std); [nan]: map pixels "
              "linearly onto the input box"),
    ParamSpec("preprocess.std", [math.nan], T.PARAMETER_DOUBLE_ARRAY,
              "per-channel std of [0, 1] pixels, divided by (with mean)"),
    ParamSpec("preprocess.channel_order", "rgb", T.PARAMETER_STRING,
              "channel order the model was trained on", choices=("rgb", "bgr")),
    ParamSpec("preprocess.pad_value", 0.0, T.PARAMETER_DOUBLE,
              "letterbox padding in [0, 1] pixel units", float_range=(0.0, 1.0)),
    ParamSpec("preprocess.dtype", "float32", T.PARAMETER_STRING, "dtype of the model input",
              choices=("float32", "float16", "bfloat16")),
    ParamSpec("calibration.file", "", T.PARAMETER_STRING,
              "calibration inputs for Selection: a .pt tensor (N, *input_shape) or .npy file; "
              "a policy: a .pt tuple of batches or dict by input name, or an .npz by name"),
    ParamSpec("calibration.bag", "", T.PARAMETER_STRING,
              "calibration inputs from a rosbag2 folder (decoded as live inputs are)"),
    ParamSpec("calibration.topic", "", T.PARAMETER_STRING,
              "topic of calibration.bag to read; empty: its only topic of the input type"),
    ParamSpec("calibration.live_samples", 0, T.PARAMETER_INTEGER,
              "record the first N live inputs, then redo Selection with them (0: off)",
              int_range=(0, 100_000)),
    ParamSpec("calibration.max_samples", 256, T.PARAMETER_INTEGER,
              "most calibration inputs read from a file or bag", int_range=(1, 100_000)),
    ParamSpec("qos.depth", 1, T.PARAMETER_INTEGER,
              "input subscription history depth (1: only the newest frame waits in DDS)",
              int_range=(1, 1000)),
    ParamSpec("qos.reliability", "best_effort", T.PARAMETER_STRING,
              "input subscription reliability", choices=("best_effort", "reliable")),
    ParamSpec("services.qos_depth", 1000, T.PARAMETER_INTEGER,
              "requests each service (~/recover, ~/reanalyze, lifecycle) keeps until taken; at "
              "least the number of clients that may call at one moment", int_range=(1, 100_000)),
    ParamSpec("max_awaiting_verdict", 8, T.PARAMETER_INTEGER,
              "inferences waiting for a verdict at most; at the bound inference pauses and "
              "newer inputs replace waiting ones (dropped, counted)", int_range=(1, 10_000)),
    ParamSpec("queue_size", 1, T.PARAMETER_INTEGER,
              "inputs waiting for inference; when full one is dropped (see queue_order) and "
              "counted", read_only=False, int_range=(1, 1000)),
    ParamSpec("queue_order", "newest_first", T.PARAMETER_STRING,
              "newest_first: infer the newest input, drop older waiting ones as stale; fifo: in "
              "order, the oldest dropped when full", read_only=False,
              choices=tuple(q.value for q in QueueOrder)),
    ParamSpec("publish_policy", "verified", T.PARAMETER_STRING,
              "verified: ~/output carries verified or repaired results only; immediate: also "
              "publish each result at once on ~/provisional_output", read_only=False,
              choices=tuple(p.value for p in PublishPolicy)),
    ParamSpec("reliable_memory_bytes", -1, T.PARAMETER_INTEGER,
              "byte budget of the reliable (bit-flip free) pool; -1: the runtime's default share "
              "of the weight bytes", int_range=(-1, 2**40)),
    ParamSpec("checksum_period", 1, T.PARAMETER_INTEGER,
              "check weight checksums every N inferences (0: never)", int_range=(0, 1_000_000)),
    ParamSpec("analysis_cache", "", T.PARAMETER_STRING,
              "path of a saved Analysis; loaded when its key (weights, graph, input box, "
              "settings, Selection code) matches, written otherwise"),
    ParamSpec("verify_timeout", 1.0, T.PARAMETER_DOUBLE,
              "seconds one verifier callback may wait for pending checks",
              float_range=(0.001, 60.0)),
    ParamSpec("shutdown_timeout", 5.0, T.PARAMETER_DOUBLE,
              "seconds to finish in-flight verification on SIGINT/SIGTERM or deactivate",
              float_range=(0.0, 600.0)),
    ParamSpec("diagnostics_period", 1.0, T.PARAMETER_DOUBLE,
              "seconds between /diagnostics messages (also sent on every level change)",
              read_only=False, float_range=(0.05, 60.0)),
    ParamSpec("diagnostics.input_timeout", 1.0, T.PARAMETER_DOUBLE,
              "WARN on /diagnostics when no input arrived for this long while active (0: off)",
              read_only=False, float_range=(0.0, 3600.0)),
    ParamSpec("diagnostics.fault_hold", 5.0, T.PARAMETER_DOUBLE,
              "seconds a detected fault keeps /diagnostics at WARN/ERROR", read_only=False,
              float_range=(0.0, 3600.0)),
    ParamSpec("fault_injection.enabled", False, T.PARAMETER_BOOL,
              "offer ~/inject_faults (tests and demos only)"),
    ParamSpec("fault_injection.count", 1, T.PARAMETER_INTEGER, "bit flips per ~/inject_faults call",
              read_only=False, int_range=(1, 1_000_000)),
    ParamSpec("fault_injection.target", "weights", T.PARAMETER_STRING,
              "weights (every normal-memory tensor) or one tensor name", read_only=False),
    ParamSpec("fault_injection.seed", 0, T.PARAMETER_INTEGER,
              "seed of the first injection; each call uses the next one", read_only=False,
              int_range=(0, 2**31 - 1)),
    ParamSpec("fault_injection.bits", [-1], T.PARAMETER_INTEGER_ARRAY,
              "bit positions to flip (0 = least significant, 31 = fp32 sign); [-1]: any",
              read_only=False),
    ParamSpec("fault_injection.crash_kind", "segfault", T.PARAMETER_STRING,
              "what ~/inject_crash does to the active worker on its next inference "
              "(isolation=process)", read_only=False, choices=("segfault", "exit", "hang")),
)
_BY_NAME = {s.name: s for s in SPECS}


def declare(node: Node, specs: tuple[ParamSpec, ...] = SPECS) -> None:
    """Declare every parameter with its descriptor (type, range, read-only, description)."""
    for spec in specs:
        choices = ", ".join(c or repr(c) for c in spec.choices)
        desc = ParameterDescriptor(
            name=spec.name, type=spec.type, read_only=spec.read_only,
            description=spec.description + (f" (one of: {choices})" if choices else ""),
        )
        if spec.int_range is not None:
            desc.integer_range = [IntegerRange(from_value=spec.int_range[0],
                                               to_value=spec.int_range[1], step=0)]
        if spec.float_range is not None:
            desc.floating_point_range = [FloatingPointRange(
                from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)]
        node.declare_parameter(spec.name, spec.default, desc)


@dataclass(frozen=True)
class FaultInjection:
    """What one `~/inject_faults` call does."""

    enabled: bool
    count: int
    target: str
    seed: int
    bits: tuple[int, ...]
    crash_kind: str = "segfault"  # what one `~/inject_crash` call does


@dataclass(frozen=True)
class NodeConfig:
    """All parameters, validated and typed."""

    model: str
    model_file: str
    task: str
    input_shape: tuple[int, ...]
    input_low: tuple[float, ...]
    input_high: tuple[float, ...]
    output_names: tuple[str, ...]
    device: str
    protect: bool
    input_topic: str
    input_type: InputType
    joint_names: tuple[str, ...]
    qos_depth: int
    qos_reliability: str
    queue_size: int
    publish_policy: PublishPolicy
    reliable_budget_bytes: int | None  # parameter reliable_memory_bytes; None: the default
    checksum_period: int
    analysis_cache: str
    verify_timeout: float
    shutdown_timeout: float
    diagnostics_period: float
    services_qos_depth: int = 1000
    max_awaiting_verdict: int = 8
    fault_injection: FaultInjection = field(
        default_factory=lambda: FaultInjection(False, 1, "weights", 0, ()))
    isolation: Isolation = Isolation.NONE
    hang_timeout_s: float = 2.0
    autostart: bool = True
    output_type: str = "auto"
    queue_order: QueueOrder = QueueOrder.NEWEST_FIRST
    image: ImageOptions = field(default_factory=ImageOptions)
    calibration_file: str = ""
    calibration_bag: str = ""
    calibration_topic: str = ""
    calibration_live: int = 0
    calibration_max: int = 256
    input_timeout: float = 1.0
    fault_hold: float = 5.0

    def model_request(self) -> ModelRequest:
        """What model_source.load needs; images default to the box preprocessing produces."""
        box = None
        if self.input_type is InputType.IMAGE:
            image = self.image

            def box(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
                return image.normalised_box(channels) if image.mean else ((0.0,), (1.0,))
        return ModelRequest(model=self.model, model_file=self.model_file, task=self.task,
                            input_shape=self.input_shape, input_low=self.input_low,
                            input_high=self.input_high, default_box=box)


def check_value(name: str, value: Any) -> None:
    """Raise ParameterError if `value` is not allowed for parameter `name`."""
    spec = _BY_NAME.get(name)
    if spec is None:
        return
    if spec.choices and value not in spec.choices:
        raise ParameterError(
            f"{name}={value!r} is not allowed; use one of {', '.join(map(repr, spec.choices))}")
    if spec.int_range is not None and not spec.int_range[0] <= value <= spec.int_range[1]:
        raise ParameterError(f"{name}={value} is outside [{spec.int_range[0]}, "
                             f"{spec.int_range[1]}]")
    if spec.float_range is not None and not spec.float_range[0] <= value <= spec.float_range[1]:
        raise ParameterError(f"{name}={value} is outside [{spec.float_range[0]}, "
                             f"{spec.float_range[1]}]")
    if name == "device":
        _check_device(value)
    if name == "fault_injection.bits":
        bad = [b for b in value if b != -1 and not 0 <= b <= 63]
        if bad or (-1 in value and len(value) > 1):
            raise ParameterError(
                f"fault_injection.bits={list(value)}: give bit positions 0..31 (fp32), or [-1]")
    if name == "input_shape" and list(value) != [0] and any(d <= 0 for d in value):
        raise ParameterError(f"input_shape={list(value)}: every dimension must be positive")
    if name in ("input_topic", "calibration.topic") and (value or name == "input_topic"):
        _check_topic(name, value)
    if name in ("preprocess.mean", "preprocess.std"):
        given = [v for v in value if not math.isnan(v)]
        if given and len(given) != len(value):
            raise ParameterError(f"{name}={list(value)} mixes numbers and nan")
        if name == "preprocess.std" and any(v <= 0 for v in given):
            raise ParameterError(f"preprocess.std={list(value)}: every value must be > 0")


def _check_topic(name: str, value: str) -> None:
    """A valid ROS topic name (relative, private ~/ or absolute), one line if not."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name

    if not value:
        raise ParameterError(f"{name} is empty; name the topic to subscribe to")
    try:
        validate_topic_name(value)
        if "//" in value:
            raise InvalidTopicNameException(value, 0, "must not contain '//'")
    except InvalidTopicNameException as exc:
        why = str(exc).splitlines()[0].split(": ", 1)[-1].rstrip(":")
        raise ParameterError(f"{name}={value!r} is not a valid ROS topic name: {why}") from None


def _check_device(device: str) -> None:
    """Accept cpu / cuda / cuda:N, and cuda only where torch sees a GPU."""
    import torch

    if device == "cpu":
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ParameterError(f"device={device!r} but torch sees no CUDA device; use cpu")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise ParameterError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA devices exist")
        return
    raise ParameterError(f"device={device!r} is not a torch device; use cpu, cuda or cuda:N")


def _strings(values: list[str]) -> tuple[str, ...]:
    """A string-array parameter, where [''] means 'not set'."""
    return tuple(v for v in values if v)


def read(node: Node) -> NodeConfig:
    """Read and validate every declared parameter; raise ParameterError on the first bad one."""
    p = {s.name: node.get_parameter(s.name).value for s in SPECS}
    for name, value in p.items():
        check_value(name, value)
    shape = tuple(int(d) for d in p["input_shape"]) if list(p["input_shape"]) != [0] else ()
    low = tuple(float(v) for v in p["input_low"] if not math.isnan(v))
    high = tuple(float(v) for v in p["input_high"] if not math.isnan(v))
    if len(low) != len(high):
        raise ParameterError(
            f"input_low has {len(low)} values, input_high {len(high)}; give both or neither")
    if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
        raise ParameterError(f"input_low {list(low)} must be below input_high {list(high)}")
    bits = tuple(b for b in p["fault_injection.bits"] if b != -1)
    mean = tuple(v for v in p["preprocess.mean"] if not math.isnan(v))
    std = tuple(v for v in p["preprocess.std"] if not math.isnan(v))
    if bool(mean) != bool(std) or (mean and len(mean) != len(std)):
        raise ParameterError(f"preprocess.mean {list(mean)} and preprocess.std {list(std)}: "
                             "give both, with as many values")
    if mean and len(shape) == 3 and len(mean) not in (1, shape[0]):
        raise ParameterError(f"preprocess.mean has {len(mean)} values; give 1 or one per "
                             f"channel ({shape[0]})")
    if p["calibration.bag"] and p["calibration.file"]:
        raise ParameterError("calibration.file and calibration.bag are both set; give one")
    image = ImageOptions(resize=Resize(p["preprocess.resize"]), mean=mean, std=std,
                         channel_order=p["preprocess.channel_order"],
                         pad_value=p["preprocess.pad_value"], dtype=p["preprocess.dtype"])
    return NodeConfig(
        model=p["model"], model_file=p["model_file"], task=p["task"], input_shape=shape,
        input_low=low, input_high=high, output_names=_strings(p["output_names"]),
        device=p["device"], protect=p["protect"], input_topic=p["input_topic"],
        input_type=InputType(p["input_type"]), joint_names=_strings(p["joint_names"]),
        qos_depth=p["qos.depth"], qos_reliability=p["qos.reliability"],
        queue_size=p["queue_size"], services_qos_depth=p["services.qos_depth"],
        max_awaiting_verdict=p["max_awaiting_verdict"],
        publish_policy=PublishPolicy(p["publish_policy"]),
        # the ROS parameter keeps its published name (users' configs); here, and only here, it
        # becomes ProtectConfig.reliable_budget_bytes (-1: the runtime's default share)
        reliable_budget_bytes=(p["reliable_memory_bytes"] if p["reliable_memory_bytes"] >= 0
                               else None),
        checksum_period=p["checksum_period"],
        analysis_cache=p["analysis_cache"], verify_timeout=p["verify_timeout"],
        shutdown_timeout=p["shutdown_timeout"], diagnostics_period=p["diagnostics_period"],
        fault_injection=FaultInjection(
            enabled=p["fault_injection.enabled"], count=p["fault_injection.count"],
            target=p["fault_injection.target"], seed=p["fault_injection.seed"], bits=bits,
            crash_kind=p["fault_injection.crash_kind"]),
        isolation=Isolation(p["isolation"]), hang_timeout_s=p["isolation_hang_timeout_s"],
        autostart=p["autostart"], output_type=p["output_type"],
        queue_order=QueueOrder(p["queue_order"]), image=image,
        calibration_file=p["calibration.file"], calibration_bag=p["calibration.bag"],
        calibration_topic=p["calibration.topic"], calibration_live=p["calibration.live_samples"],
        calibration_max=p["calibration.max_samples"],
        input_timeout=p["diagnostics.input_timeout"], fault_hold=p["diagnostics.fault_hold"],
    )


def unknown_overrides(given: list[str]) -> list[str]:
    """One warning per given parameter that no spec declares, with the nearest known name."""
    known = set(_BY_NAME) | {"use_sim_time", "start_type_description_service"}
    out = []
    for name in given:
        if name in known or name.startswith("qos_overrides."):
            continue
        near = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else "; see `ros2 param list`"
        out.append(f"unknown parameter {name!r} is ignored{hint}")
    return out


def validate_change(params: list[Parameter]) -> str:
    """Reason to refuse a runtime change, or '' to accept it (read-only ones rclpy refuses)."""
    for param in params:
        try:
            check_value(param.name, param.value)
        except ParameterError as exc:
            return str(exc)
        if param.name == "fault_injection.target" and not param.value:
            return "fault_injection.target is empty; use weights or a tensor name"
    return ""
