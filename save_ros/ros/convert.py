"""ROS messages <-> model tensors: decode and normalise inputs, encode results and fault status.

Inputs: sensor_msgs/Image (mono8, mono16, rgb8, bgr8, rgba8, bgra8, 32FC1) for perception;
std_msgs/Float32MultiArray and sensor_msgs/JointState for a policy. Anything that cannot be turned
into a finite tensor of the model's input shape raises `InputError`; the node rejects it with a
diagnostic and keeps running, so a bad message never becomes a silent wrong output.

Outputs use core messages only (no vision_msgs on PyPI): `~/output` is a sensor_msgs/JointState,
the stamped, named float-array message of the core packages (name = class or action names,
position = the model's raw outputs, velocity = softmax probabilities for a classifier, effort =
the chosen class or action index); `~/fault_status` is a diagnostic_msgs/DiagnosticArray holding
one DiagnosticStatus, because the array carries the header that stamps it with the input's stamp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header

# encoding -> (numpy dtype, channels); 8/16-bit integer encodings are scaled to [0, 1] by their
# full range, float encodings are taken as already in the model's input units.
IMAGE_ENCODINGS: dict[str, tuple[str, int]] = {
    "mono8": ("u1", 1),
    "mono16": ("u2", 1),
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "32FC1": ("f4", 1),
}
# ITU-R BT.601 luma, the weights cv_bridge / OpenCV use for RGB -> grey
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse larger frames instead of allocating gigabytes


class InputError(ValueError):
    """An input message cannot be turned into a valid model input; the message says why."""


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: shape without the batch dim and the per-channel value box."""

    shape: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def numel(self) -> int:
        """Number of elements of one input."""
        return int(np.prod(self.shape))


def image_to_tensor(msg: Image, spec: InputSpec) -> torch.Tensor:
    """Decode an Image, convert channels, resize to the model's H x W, map to its value box.

    Integer encodings map 0..max onto each channel's [low, high]; 32FC1 values are used as they
    are (already in model units). Down-scaling averages pixel areas (a 64x64 frame becomes 8x8
    block means); up-scaling is refused, because it would invent detail the model never saw.
    """
    if len(spec.shape) != 3:
        raise InputError(
            f"this model takes inputs of shape {spec.shape}, not images; "
            "set input_type to float32_multi_array or joint_state"
        )
    channels, height, width = spec.shape
    if msg.encoding not in IMAGE_ENCODINGS:
        raise InputError(
            f"unsupported image encoding {msg.encoding!r}; "
            f"publish one of {', '.join(IMAGE_ENCODINGS)}"
        )
    dtype, msg_channels = IMAGE_ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError(f"empty image ({w}x{h})")
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(f"image {w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels; downscale it first")
    row_bytes = w * msg_channels * itemsize
    if step < row_bytes:
        raise InputError(f"step {step} is smaller than width*channels*bytes = {row_bytes}")
    if len(msg.data) != step * h:
        raise InputError(
            f"image data has {len(msg.data)} bytes, but step*height = {step}*{h} = {step * h}"
        )
    if h < height or w < width:
        raise InputError(f"image {w}x{h} is smaller than the model input {width}x{height}")
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(raw).view(order + dtype).reshape(h, w, msg_channels)
    pixels = pixels.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise InputError("image contains NaN or infinite values")
    if dtype in ("u1", "u2"):
        pixels /= float(np.iinfo(dtype).max)
    if msg.encoding.startswith("bgr"):
        pixels[..., :3] = pixels[..., 2::-1].copy()
    pixels = pixels[..., :3] if msg_channels == 4 else pixels  # drop alpha
    if channels == 1 and pixels.shape[2] == 3:
        pixels = (pixels @ _LUMA)[..., None]
    elif channels == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] != channels:
        raise InputError(f"cannot map a {msg.encoding} image onto {channels} input channels")
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).unsqueeze(0)
    if (h, w) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="area")
    if dtype in ("u1", "u2"):
        low = torch.tensor(spec.low, dtype=torch.float32).view(1, -1, 1, 1)
        high = torch.tensor(spec.high, dtype=torch.float32).view(1, -1, 1, 1)
        x = low + x * (high - low)
    return x.contiguous()


def array_to_tensor(values: Sequence[float], spec: InputSpec, what: str) -> torch.Tensor:
    """A flat float sequence as a (1, *shape) tensor; wrong length or non-finite raises."""
    data = np.asarray(values, dtype=np.float32)
    if data.size != spec.numel():
        raise InputError(
            f"{what} has {data.size} values, the model takes {spec.numel()} (shape {spec.shape})"
        )
    if not np.isfinite(data).all():
        raise InputError(f"{what} contains NaN or infinite values")
    return torch.from_numpy(data.copy()).reshape(1, *spec.shape)


def multiarray_to_tensor(msg: Float32MultiArray, spec: InputSpec) -> torch.Tensor:
    """A Float32MultiArray (data_offset honoured) as a model input."""
    return array_to_tensor(msg.data[msg.layout.data_offset:], spec, "Float32MultiArray")


def joint_state_to_tensor(
    msg: JointState, spec: InputSpec, joint_names: Sequence[str] = ()
) -> torch.Tensor:
    """JointState positions as a model input, reordered by `joint_names` when given."""
    positions = list(msg.position)
    if joint_names:
        index = {name: i for i, name in enumerate(msg.name)}
        missing = [n for n in joint_names if n not in index]
        if missing:
            raise InputError(f"JointState lacks joints {missing}; it names {list(msg.name)}")
        if len(positions) != len(msg.name):
            raise InputError(
                f"JointState has {len(msg.name)} names but {len(positions)} positions"
            )
        positions = [positions[index[n]] for n in joint_names]
    return array_to_tensor(positions, spec, "JointState.position")


def output_names(task: str, count: int, names: Sequence[str] = ()) -> list[str]:
    """Names for the output entries: the configured ones, or class / action indices."""
    if names:
        if len(names) != count:
            raise ValueError(f"{len(names)} output names given for {count} outputs")
        return list(names)
    return [str(i) for i in range(count)] if task == "classification" else [
        f"action_{i}" for i in range(count)
    ]


def result_message(
    output: torch.Tensor, header: Header, task: str, names: Sequence[str]
) -> JointState:
    """The model's output for one input as a JointState stamped like the input."""
    values = output.detach().reshape(-1).to(torch.float32).cpu()
    msg = JointState()
    msg.header = header
    msg.name = list(names)
    msg.position = values.tolist()
    if task == "classification":
        msg.velocity = torch.softmax(values.double(), dim=0).tolist()
    # the decision: argmax class, or the discrete action (argmax of the policy's outputs)
    msg.effort = [float(int(torch.argmax(values)))]
    return msg


def diagnostic_status(
    name: str, hardware_id: str, level: bytes, message: str, values: dict[str, object]
) -> DiagnosticStatus:
    """A DiagnosticStatus with key/values rendered as strings (what diagnostic tools read)."""
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    status.level = level
    status.message = message
    status.values = [KeyValue(key=k, value=_render(v)) for k, v in values.items()]
    return status


def diagnostic_array(header: Header, statuses: Sequence[DiagnosticStatus]) -> DiagnosticArray:
    """DiagnosticArray with the given header (the input's stamp for per-inference status)."""
    msg = DiagnosticArray()
    msg.header = header
    msg.status = list(statuses)
    return msg


def _render(value: object) -> str:
    """Stable text for a diagnostic value: floats with 6 significant digits, bools lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_render(v) for v in value)
    return str(value)
