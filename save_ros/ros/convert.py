"""ROS messages <-> model tensors: decode inputs, encode fault status (the maths is elsewhere).

Inputs: sensor_msgs/Image in any of `save_ros.preprocess.ENCODINGS` (mono8/8UC1, mono16/16UC1,
rgb8/bgr8/8UC3, rgba8/bgra8, 32FC1) for perception, prepared by `save_ros.preprocess` (resize,
mean/std, channel order, dtype; torch ops on the model's device); std_msgs/Float32MultiArray and
sensor_msgs/JointState for a policy. Anything that cannot become a finite input of the model's
shape raises `InputError`; the node rejects it with a status and keeps running.

Results are encoded by `save_ros.ros.outputs`; `result_message` here is the JointState form.
`~/fault_status` is a diagnostic_msgs/DiagnosticArray holding one DiagnosticStatus, because the
array carries the header that stamps it with the input's stamp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header

from save_ros.preprocess import (
    ENCODINGS,
    ImageOptions,
    InputError,
    InputSpec,
    RawImage,
    array_to_input,
    image_to_input,
    short_list,
)

__all__ = ["IMAGE_ENCODINGS", "InputError", "InputSpec", "ImageOptions", "image_to_tensor",
           "array_to_tensor", "multiarray_to_tensor", "joint_state_to_tensor", "output_names",
           "result_message", "diagnostic_status", "diagnostic_array", "MAX_STATUS_TEXT"]
IMAGE_ENCODINGS = tuple(ENCODINGS)
MAX_STATUS_TEXT = 400  # characters of one status message or value (a reason quoting input)


def image_to_tensor(msg: Image, spec: InputSpec, options: ImageOptions = ImageOptions(),
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """An Image as a (1, C, H, W) model input on `device` (see `save_ros.preprocess`)."""
    raw = RawImage(encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step,
                   data=msg.data, is_bigendian=bool(msg.is_bigendian))
    return image_to_input(raw, spec, options, device)


def array_to_tensor(values: Sequence[float], spec: InputSpec, what: str,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """A flat float sequence as a (1, *shape) tensor; wrong length or non-finite raises."""
    return array_to_input(values, spec, what, device)


def multiarray_to_tensor(msg: Float32MultiArray, spec: InputSpec,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """A Float32MultiArray (data_offset honoured) as a model input."""
    return array_to_input(msg.data[msg.layout.data_offset:], spec, "Float32MultiArray", device)


def joint_state_to_tensor(msg: JointState, spec: InputSpec, joint_names: Sequence[str] = (),
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """JointState positions as a model input, reordered by `joint_names` when given.

    A message that names a joint twice, or whose names and positions differ in number, is
    refused: which of two values is meant cannot be known.
    """
    positions = list(msg.position)
    names = list(msg.name)
    if joint_names or names:
        if names and len(positions) != len(names):
            raise InputError(f"JointState has {len(names)} names but {len(positions)} "
                             "positions", "names")
        if len(set(names)) != len(names):
            seen: set[str] = set()
            dup = sorted({n for n in names if n in seen or seen.add(n)})
            raise InputError(f"JointState names joints more than once: {short_list(dup)}",
                             "names")
    if joint_names:
        index = {name: i for i, name in enumerate(names)}
        missing = [n for n in joint_names if n not in index]
        if missing:
            raise InputError(f"JointState lacks joints {short_list(missing)}; it names "
                             f"{short_list(names)}", "names")
        positions = [positions[index[n]] for n in joint_names]
    return array_to_input(positions, spec, "JointState.position", device)


def output_names(task: str, count: int, names: Sequence[str] = ()) -> list[str]:
    """Names for the output entries: the configured ones, or class / action indices."""
    if names:
        if len(names) != count:
            raise ValueError(f"output_names has {len(names)} names but the model has {count} "
                             "outputs; give one name per output or leave it unset")
        return list(names)
    return [str(i) for i in range(count)] if task == "classification" else [
        f"action_{i}" for i in range(count)
    ]


def result_message(
    output: torch.Tensor, header: Header, task: str, names: Sequence[str]
) -> JointState:
    """The model's output for one input as a JointState stamped like the input.

    name = class or action names, position = the raw outputs; a classifier adds velocity =
    softmax probabilities and effort = [argmax class]; a discrete policy effort = [argmax
    action]; a continuous policy (task control) only names and values.
    """
    values = output.detach().reshape(-1).to(torch.float32).cpu()
    msg = JointState()
    msg.header = header
    msg.name = list(names)
    msg.position = values.tolist()
    if task == "classification":
        msg.velocity = torch.softmax(values.double(), dim=0).tolist()
    # the decision: argmax class, or the discrete action; a continuous policy has none
    if task in ("classification", "discrete_control"):
        msg.effort = [float(int(torch.argmax(values)))]
    return msg


def diagnostic_status(
    name: str, hardware_id: str, level: bytes, message: str, values: dict[str, object]
) -> DiagnosticStatus:
    """A DiagnosticStatus with key/values rendered as strings (what diagnostic tools read).

    Message and values are cut to MAX_STATUS_TEXT characters: a reason may quote a hostile input.
    """
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    status.level = level
    status.message = _cut(message)
    status.values = [KeyValue(key=_cut(k), value=_cut(_render(v))) for k, v in values.items()]
    return status


def diagnostic_array(header: Header, statuses: Sequence[DiagnosticStatus]) -> DiagnosticArray:
    """DiagnosticArray with the given header (the input's stamp for per-inference status)."""
    msg = DiagnosticArray()
    msg.header = header
    msg.status = list(statuses)
    return msg


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STATUS_TEXT else text[:MAX_STATUS_TEXT - 3] + "..."


def _render(value: object) -> str:
    """Stable text for a diagnostic value: floats with 6 significant digits, bools lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_render(v) for v in value)
    return str(value)
