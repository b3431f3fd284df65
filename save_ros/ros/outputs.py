"""Results in ROS terms: which message `~/output` carries, and building it.

- classification -> vision_msgs/Classification (one ObjectHypothesis per class, in class order,
  score = softmax probability; class_id = the output name) plus vision_msgs/LabelInfo on
  `~/label_info` (transient local, so a late subscriber gets it), wherever vision_msgs imports
  (it is packaged for every ROS 2 distro: `ros-<distro>-vision-msgs`); where it does not, the
  sensor_msgs/JointState form of `convert.result_message` (the fallback, said in the log).
- control (a continuous policy) -> sensor_msgs/JointState: name = action names, position = the
  actions, stamped like the input; or std_msgs/Float64MultiArray (what ros2_control's
  forward_command_controller takes; it has no header, `~/fault_status` carries the stamp).
- discrete_control -> JointState with effort = [argmax action] as well.

`choose_output` is plain Python (testable without vision_msgs); `OutputEncoder` builds messages.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from collections.abc import Sequence

import torch
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension

from save_ros.errors import UserError
from save_ros.ros.convert import result_message

TASKS = ("classification", "control", "discrete_control")


class OutputKind(enum.Enum):
    """The message type of `~/output`."""

    JOINT_STATE = "joint_state"
    CLASSIFICATION = "classification"  # vision_msgs/Classification
    FLOAT64_MULTI_ARRAY = "float64_multi_array"
    JOINT_TRAJECTORY = "joint_trajectory"  # an action chunk (policy_io.ChunkEncoder)
    FLOAT32_MULTI_ARRAY = "float32_multi_array"  # an action chunk, chunk x joints


class OutputTypeError(UserError, ValueError):
    """The requested output type cannot be served here (or does not fit the task)."""


def vision_msgs_available() -> bool:
    """Whether vision_msgs (a ROS distro package, not on PyPI) can be imported."""
    return importlib.util.find_spec("vision_msgs") is not None


def vision_msgs_advice(distro: str | None = None) -> str:
    """How to get vision_msgs here: apt for a sourced distro, else that it needs one.

    vision_msgs has no PyPI wheel (the `ros-pypi` extra brings rclpy and the core messages
    only), so on a PyPI install the honest advice is a distro, or the JointState fallback.
    """
    distro = os.environ.get("ROS_DISTRO", "") if distro is None else distro
    if distro:
        return f"sudo apt install ros-{distro}-vision-msgs, or rosdep install save_ros"
    return ("vision_msgs is not on PyPI: source a ROS 2 distro that has it "
            "(apt install ros-<distro>-vision-msgs)")


def choose_output(task: str, requested: str, vision: bool) -> tuple[OutputKind, str]:
    """The output kind for a task and the `output_type` parameter, and a note for the log.

    `auto`: Classification for a classifier where vision_msgs imports, else JointState.
    """
    if requested == "auto":
        if task == "classification":
            if vision:
                return OutputKind.CLASSIFICATION, ""
            return OutputKind.JOINT_STATE, ("vision_msgs is not installed: ~/output falls back "
                                            "to sensor_msgs/JointState (for vision_msgs/"
                                            f"Classification: {vision_msgs_advice()})")
        return OutputKind.JOINT_STATE, ""
    kind = OutputKind(requested)
    if kind is OutputKind.CLASSIFICATION:
        if task != "classification":
            raise OutputTypeError(f"output_type=classification needs task classification, not "
                                  f"{task}; use joint_state or float64_multi_array")
        if not vision:
            raise OutputTypeError("output_type=classification needs vision_msgs "
                                  f"({vision_msgs_advice()}), or use auto / joint_state")
    return kind, ""


class OutputEncoder:
    """Builds `~/output` messages (and `~/label_info`) for one task and output kind."""

    def __init__(self, kind: OutputKind, task: str, names: Sequence[str]) -> None:
        self.kind, self.task, self.names = kind, task, list(names)
        if kind is OutputKind.CLASSIFICATION:
            from vision_msgs.msg import Classification, LabelInfo, ObjectHypothesis, VisionClass

            self._vision = (Classification, LabelInfo, ObjectHypothesis, VisionClass)
            self.msg_type = Classification
        elif kind is OutputKind.FLOAT64_MULTI_ARRAY:
            self.msg_type = Float64MultiArray
        else:
            self.msg_type = JointState

    def describe(self) -> str:
        """The message type, for the start-up log."""
        return {OutputKind.CLASSIFICATION: "vision_msgs/Classification",
                OutputKind.FLOAT64_MULTI_ARRAY: "std_msgs/Float64MultiArray",
                OutputKind.JOINT_STATE: "sensor_msgs/JointState"}[self.kind]

    def message(self, output: torch.Tensor, header: Header):
        """The message for one model output (a CPU tensor), stamped like the input."""
        if self.kind is OutputKind.JOINT_STATE:
            return result_message(output, header, self.task, self.names)
        values = output.detach().reshape(-1).to(torch.float64).cpu()
        if self.kind is OutputKind.FLOAT64_MULTI_ARRAY:
            msg = Float64MultiArray()
            msg.layout.dim = [MultiArrayDimension(label="outputs", size=len(values),
                                                  stride=len(values))]
            msg.data = values.tolist()
            return msg
        classification, _, hypothesis, _ = self._vision
        msg = classification()
        msg.header = header
        probs = torch.softmax(values, dim=0).tolist()
        msg.results = [hypothesis(class_id=n, score=p)
                       for n, p in zip(self.names, probs, strict=True)]
        return msg

    def label_info(self, header: Header):
        """vision_msgs/LabelInfo: class index -> name (None where the output is not vision)."""
        if self.kind is not OutputKind.CLASSIFICATION:
            return None
        _, label_info, _, vision_class = self._vision
        msg = label_info()
        msg.header = header
        msg.class_map = [vision_class(class_id=i, class_name=n)
                         for i, n in enumerate(self.names)]
        msg.threshold = 0.0
        return msg


def output_values(msg) -> list[float]:
    """The numbers of an `~/output` message of any kind (what a replay compares)."""
    if hasattr(msg, "results"):
        return [float(h.score) for h in msg.results]
    if hasattr(msg, "position"):
        return list(msg.position)
    if hasattr(msg, "points"):  # JointTrajectory: the chunk, point by point
        return [v for p in msg.points for v in p.positions]
    return list(msg.data)
