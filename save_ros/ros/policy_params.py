"""The parameters of a policy of several inputs (declared beside `params.SPECS`).

One entry per input topic, in the same position of every list:
- `input_topics` / `input_types`: the topic and its message type (`image`, `joint_state`,
  `float32_multi_array`, `int32_multi_array` for an integer input); [''] (the default) serves
  the single `input_topic`;
- `input_names`: the forward parameter each topic feeds; [''] : the forward's order;
- `input_shapes` / `input_ranges` (a policy from the user's own package): each input's shape
  without the batch dim (`'3,96,96'`) and its box as text (`policy_model.range_spec`:
  `'0,1'`, per channel `'-2.9:2.9,-1.8:1.8'`, `'int:0,3'`, `''` for an image);
- `calibration.topics`: the topics of `calibration.bag` that feed each input (default: the
  input topics themselves, else the bag's only topic of that type);
- `sync.slop` (s): the most the stamps of one matched set may differ; `sync.queue_size`:
  messages kept per input while waiting for partners;
- `control_period` (s): the time between two actions of a chunk; point k of the
  `~/output` JointTrajectory has `time_from_start` = (k + 1) * control_period.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rcl_interfaces.msg import ParameterType as T
from rclpy.node import Node

from save_ros.ros import params
from save_ros.ros.model_source import ModelRequest
from save_ros.ros.params import InputType, ParameterError, ParamSpec, _check_topic
from save_ros.ros.policy_model import InputRequest

SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("input_topics", [""], T.PARAMETER_STRING_ARRAY,
              "a policy of several inputs: one topic per input (matched in time); ['']: the "
              "single input_topic"),
    ParamSpec("input_types", [""], T.PARAMETER_STRING_ARRAY,
              "the message type of each of input_topics: image, joint_state, "
              "float32_multi_array or int32_multi_array (an integer input)"),
    ParamSpec("input_names", [""], T.PARAMETER_STRING_ARRAY,
              "the forward parameter each of input_topics feeds; ['']: the forward's order"),
    ParamSpec("input_shapes", [""], T.PARAMETER_STRING_ARRAY,
              "a policy from your package: each input's shape without the batch dim, one per "
              "topic, e.g. ['3,96,96', '7']"),
    ParamSpec("input_ranges", [""], T.PARAMETER_STRING_ARRAY,
              "a policy from your package: each input's box, one per topic: 'LOW,HIGH', one "
              "'LOW:HIGH' per channel, 'int:LOW,HIGH' or 'int' (an integer input, exact), '' "
              "(an image: the preprocessing's box)"),
    ParamSpec("calibration.topics", [""], T.PARAMETER_STRING_ARRAY,
              "calibration.bag of a policy: the bag topic of each input topic; ['']: the "
              "input topics, else the bag's only topic of each type"),
    ParamSpec("sync.slop", 0.05, T.PARAMETER_DOUBLE,
              "seconds the stamps of one matched input set may differ at most",
              float_range=(0.0, 10.0)),
    ParamSpec("sync.queue_size", 10, T.PARAMETER_INTEGER,
              "messages kept per input while waiting for partners (the oldest is dropped and "
              "counted unmatched)", int_range=(1, 1000)),
    ParamSpec("control_period", 0.1, T.PARAMETER_DOUBLE,
              "seconds between the actions of a chunk: JointTrajectory point k has "
              "time_from_start (k + 1) * control_period", float_range=(1e-6, 3600.0)),
)
NAMES = frozenset(s.name for s in SPECS)


@dataclass(frozen=True)
class PolicyConfig:
    """The policy parameters, validated; every tuple has one entry per input topic."""

    topics: tuple[str, ...] = ()
    types: tuple[InputType, ...] = ()
    slop_s: float = 0.05
    sync_queue: int = 10
    control_period: float = 0.1
    names: tuple[str, ...] = ()  # () : the forward's order
    shapes: tuple[tuple[int, ...], ...] = ()  # () : from the model (a zoo policy)
    ranges: tuple[str, ...] = ()
    calibration_topics: tuple[str, ...] = ()

    @property
    def multi(self) -> bool:
        """True when several input topics are matched."""
        return len(self.topics) > 1

    def requests(self) -> tuple[InputRequest, ...]:
        """What the model loader needs of each topic (`model_source.ModelRequest.inputs`)."""
        if not self.multi:
            return ()
        n = len(self.topics)
        names, shapes, ranges = (self.names or ("",) * n, self.shapes or ((),) * n,
                                 self.ranges or ("",) * n)
        return tuple(InputRequest(name, shape, rng, kind is InputType.IMAGE) for
                     name, shape, rng, kind in zip(names, shapes, ranges, self.types,
                                                   strict=True))


def others(names) -> list[str]:
    """The given parameter names that are not policy parameters (for params.unknown_overrides)."""
    return [n for n in names if n not in NAMES]


def declare_and_read(node: Node) -> PolicyConfig:
    """Declare the policy parameters (after `params.declare`) and read them."""
    declare(node)
    return read(node)


def declare(node: Node) -> None:
    """Declare the policy parameters with their descriptors."""
    params.declare(node, SPECS)


def _shape(i: int, text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace(" ", "").split(",") if d)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ParameterError(f"input_shapes[{i}]={text!r}: give positive sizes without the "
                             "batch dimension, e.g. '3,96,96' or '7'")
    return shape


def _per_topic(p: dict, name: str, n: int) -> tuple[str, ...]:
    """A per-topic list: () when unset ([''] ), else exactly one entry per topic."""
    values = tuple(p[name])
    if list(values) == [""]:
        return ()
    if len(values) != n:
        raise ParameterError(f"{name} has {len(values)} entries for {n} input_topics; give one "
                             "per topic, in the same order")
    return values


def read(node: Node) -> PolicyConfig:
    """The policy parameters; ParameterError names the bad one."""
    p = {s.name: node.get_parameter(s.name).value for s in SPECS}
    topics = tuple(t for t in p["input_topics"] if t)
    types = tuple(t for t in p["input_types"] if t)
    if len(topics) == 1:
        raise ParameterError("input_topics names one topic; use input_topic for one input, or "
                             "give one topic per input of the policy")
    if len(types) != len(topics):
        raise ParameterError(f"input_types has {len(types)} entries for {len(topics)} "
                             "input_topics; give one type per topic")
    choices = [t.value for t in InputType]
    bad = [t for t in types if t not in choices]
    if bad:
        raise ParameterError(f"input_types {bad} not allowed; use {', '.join(choices)}")
    for i, topic in enumerate(topics):
        _check_topic(f"input_topics[{i}]", topic)
    per_topic = {name: _per_topic(p, name, len(topics)) if topics else ()
                 for name in ("input_names", "input_shapes", "input_ranges",
                              "calibration.topics")}
    if not topics:
        given = [name for name in per_topic if list(p[name]) != [""]]
        if given:
            raise ParameterError(f"{', '.join(given)} set without input_topics; they describe "
                                 "the topics of a policy of several inputs")
    for i, topic in enumerate(per_topic["calibration.topics"]):
        if topic:
            _check_topic(f"calibration.topics[{i}]", topic)
    return PolicyConfig(topics=topics, types=tuple(InputType(t) for t in types),
                        slop_s=float(p["sync.slop"]), sync_queue=int(p["sync.queue_size"]),
                        control_period=float(p["control_period"]),
                        names=per_topic["input_names"],
                        shapes=tuple(_shape(i, s) for i, s in
                                     enumerate(per_topic["input_shapes"])),
                        ranges=per_topic["input_ranges"],
                        calibration_topics=per_topic["calibration.topics"])


def model_request(cfg: params.NodeConfig, pcfg: PolicyConfig) -> ModelRequest:
    """The node's ModelRequest: `cfg.model_request()`, plus one InputRequest per topic of a
    policy (an image input's default box: what its preprocessing produces)."""
    req = cfg.model_request()
    if not pcfg.multi:
        return req
    image = cfg.image

    def box(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return image.normalised_box(channels) if image.mean else ((0.0,), (1.0,))

    return replace(req, inputs=pcfg.requests(), default_box=box)
