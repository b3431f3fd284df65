"""The parameters of a policy of several inputs (declared beside `params.SPECS`).

- `input_topics` / `input_types`: one topic and message type per model input, in the policy's
  input order (`image`, `joint_state`, `float32_multi_array`); [''] (the default) serves the
  single `input_topic`;
- `sync.slop` (s): the most the stamps of one matched set may differ; `sync.queue_size`:
  messages kept per input while waiting for partners;
- `control_period` (s): the time between two actions of a chunk; point k of the
  `~/output` JointTrajectory has `time_from_start` = (k + 1) * control_period.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import ParameterType as T
from rclpy.node import Node

from save_ros.ros import params
from save_ros.ros.params import InputType, ParameterError, ParamSpec, _check_topic

SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("input_topics", [""], T.PARAMETER_STRING_ARRAY,
              "a policy of several inputs: one topic per input, in the policy's input order "
              "(matched in time); ['']: the single input_topic"),
    ParamSpec("input_types", [""], T.PARAMETER_STRING_ARRAY,
              "the message type of each of input_topics: image, joint_state or "
              "float32_multi_array"),
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
    """The policy parameters, validated."""

    topics: tuple[str, ...] = ()
    types: tuple[InputType, ...] = ()
    slop_s: float = 0.05
    sync_queue: int = 10
    control_period: float = 0.1

    @property
    def multi(self) -> bool:
        """True when several input topics are matched."""
        return len(self.topics) > 1


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
    return PolicyConfig(topics=topics, types=tuple(InputType(t) for t in types),
                        slop_s=float(p["sync.slop"]), sync_queue=int(p["sync.queue_size"]),
                        control_period=float(p["control_period"]))
