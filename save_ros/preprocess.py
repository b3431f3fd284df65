"""Camera frames and state vectors -> model inputs, with torch ops on the model's device.

ROS-free (imports only numpy and torch), so the image maths is testable without rclpy; the node
passes the fields of a sensor_msgs/Image (`RawImage`) or a float sequence. The steps for an image:

1. decode the bytes (`ENCODINGS`; row padding, big-endian) into an H x W x C tensor on the device;
2. channels: BGR(A) is turned to RGB, alpha dropped, grey <-> RGB as the model needs (BT.601
   luma, what cv_bridge uses), and back to BGR if the model was trained on BGR;
3. scale: 8/16-bit integers to [0, 1] by their full range; float encodings are taken as they are;
4. resize to the model's H x W: `stretch` (ignore aspect), `letterbox` (keep aspect, pad with
   `pad_value`) or `center_crop` (keep aspect, cut the overflow); area averaging when shrinking,
   bilinear when enlarging;
5. normalise: `(x - mean) / std` per channel where `mean`/`std` are given (torchvision's
   convention: mean/std of [0, 1] pixels), else integer pixels map linearly onto the input box
   [low, high]; then cast to `dtype`.

Anything that cannot become a finite input of the model's shape inside its declared box raises
`InputError` (with a short `kind` for counting); the node rejects that input, it is never a fault.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from save_ros.core.box import InputBox, InputError

# encoding -> (numpy dtype, channels, channel order); 8UC3 is OpenCV's BGR (what cv_bridge sends
# for a CV_8UC3 Mat), the other generic encodings are single-channel
ENCODINGS: dict[str, tuple[str, int, str]] = {
    "mono8": ("u1", 1, "mono"),
    "8UC1": ("u1", 1, "mono"),
    "mono16": ("u2", 1, "mono"),
    "16UC1": ("u2", 1, "mono"),
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "8UC3": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgb"),
    "bgra8": ("u1", 4, "bgr"),
    "32FC1": ("f4", 1, "mono"),
}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights cv_bridge / OpenCV use for RGB -> grey
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse larger frames instead of allocating gigabytes
MAX_REASON = 160  # characters of a value list quoted in an error message
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Resize(enum.Enum):
    """How a frame of another size is fitted to the model's H x W."""

    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    CENTER_CROP = "center_crop"


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: shape without the batch dim and the per-channel value box.

    `integer`: an exact input (token ids, discrete commands; int64): `low`/`high` then hold its
    inclusive valid values, one each, or are empty for any integer; it has no float box.
    """

    shape: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    integer: bool = False

    def numel(self) -> int:
        """Number of elements of one input."""
        return int(np.prod(self.shape))

    def box(self) -> InputBox:
        """The declared box as SAVE analyses and checks it (float inputs)."""
        if self.integer:
            raise ValueError("an integer input has no float box; see protect_range()")
        return InputBox.of((self.low, self.high), self.shape)

    def protect_range(self) -> InputBox | tuple[int, int] | None:
        """This input's entry of protect()'s input_range: the box, or an integer input's
        inclusive (low, high), or None (any integer)."""
        if not self.integer:
            return self.box()
        return (int(self.low[0]), int(self.high[0])) if self.low else None


@dataclass(frozen=True)
class ImageOptions:
    """How images are prepared for the model (the node's `preprocess.*` parameters)."""

    resize: Resize = Resize.STRETCH
    mean: tuple[float, ...] = ()  # per channel (or one for all), in [0, 1] pixel units
    std: tuple[float, ...] = ()
    channel_order: str = "rgb"  # the order the model was trained on: rgb or bgr
    pad_value: float = 0.0  # letterbox padding, in [0, 1] pixel units
    dtype: str = "float32"

    def normalised_box(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The box that [0, 1] pixels occupy after mean/std: ((0-m)/s, (1-m)/s) per channel."""
        mean, std = _per_channel(self.mean, channels), _per_channel(self.std, channels)
        return (tuple(-m / s for m, s in zip(mean, std, strict=True)),
                tuple((1 - m) / s for m, s in zip(mean, std, strict=True)))


@dataclass(frozen=True)
class RawImage:
    """The fields of a sensor_msgs/Image that decoding needs."""

    encoding: str
    height: int
    width: int
    step: int
    data: bytes | bytearray | memoryview | Sequence[int]
    is_bigendian: bool = False


def _per_channel(values: Sequence[float], channels: int) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise ValueError(f"{len(values)} values given for {channels} channels; give 1 or "
                         f"{channels}")
    return tuple(values)


def decode(img: RawImage, device: torch.device | str = "cpu") -> tuple[torch.Tensor, str, bool]:
    """The image as an H x W x C float32 tensor on `device`, its channel order, and whether it
    was an integer encoding (already scaled to [0, 1])."""
    if img.encoding not in ENCODINGS:
        raise InputError(f"unsupported image encoding {img.encoding[:40]!r}; publish one of "
                         f"{', '.join(ENCODINGS)}", "encoding")
    dtype, channels, order = ENCODINGS[img.encoding]
    itemsize = np.dtype(dtype).itemsize
    h, w, step = int(img.height), int(img.width), int(img.step)
    if h <= 0 or w <= 0:
        raise InputError(f"empty image ({w}x{h})", "size")
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(f"image {w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels; downscale it first",
                         "size")
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise InputError(f"step {step} is smaller than width*channels*bytes = {row_bytes}",
                         "data")
    if len(img.data) != step * h:
        raise InputError(f"image data has {len(img.data)} bytes, but step*height = {step}*{h} "
                         f"= {step * h}", "data")
    raw = np.frombuffer(bytes(img.data) if not isinstance(img.data, (bytes, bytearray))
                        else img.data, dtype=np.uint8).reshape(h, step)[:, :row_bytes]
    endian = ">" if img.is_bigendian else "<"
    pixels = np.ascontiguousarray(raw).view(endian + dtype).reshape(h, w, channels)
    if endian == ">" and itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if dtype == "u2":  # torch has no uint16 arithmetic on every device: widen on the host
        pixels = pixels.astype(np.int32)
    elif not pixels.flags.writeable:  # a view of the message's bytes: torch wants its own
        pixels = pixels.copy()
    x = torch.from_numpy(pixels).to(device)
    integer = dtype in ("u1", "u2")
    x = x.to(torch.float32)
    if integer:
        x = x / float(np.iinfo(dtype).max)
    elif not bool(torch.isfinite(x).all()):
        raise InputError("image contains NaN or infinite values", "nonfinite")
    return x, order, integer


def _channels(x: torch.Tensor, order: str, want: int, model_order: str) -> torch.Tensor:
    """H x W x C in the message's order -> C x H x W with the model's channel count and order."""
    if x.shape[2] == 4:
        x = x[..., :3]
    if order == "bgr":
        x = x.flip(2)
    if want == 1 and x.shape[2] == 3:
        x = (x * torch.tensor(LUMA, device=x.device)).sum(2, keepdim=True)
    elif want == 3 and x.shape[2] == 1:
        x = x.expand(-1, -1, 3)
    elif x.shape[2] != want:
        raise InputError(f"cannot map a {x.shape[2]}-channel image onto {want} input channels",
                         "shape")
    if want == 3 and model_order == "bgr":
        x = x.flip(2)
    return x.permute(2, 0, 1).unsqueeze(0)


def _scaled(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize N x C x H x W to `size`: area averaging to shrink, bilinear to enlarge."""
    if tuple(x.shape[2:]) == size:
        return x
    shrink = size[0] <= x.shape[2] and size[1] <= x.shape[3]
    if shrink:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize(x: torch.Tensor, height: int, width: int, mode: Resize,
           pad_value: float = 0.0) -> torch.Tensor:
    """Fit an N x C x h x w tensor to height x width per `mode` (see the module docstring)."""
    h, w = x.shape[2], x.shape[3]
    if mode is Resize.STRETCH or (h, w) == (height, width):
        return _scaled(x, (height, width))
    if mode is Resize.LETTERBOX:
        scale = min(height / h, width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = _scaled(x, (nh, nw))
        top, left = (height - nh) // 2, (width - nw) // 2
        return F.pad(inner, (left, width - nw - left, top, height - nh - top), value=pad_value)
    scale = max(height / h, width / w)  # center crop: cover, then cut the overflow
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    covered = _scaled(x, (nh, nw))
    top, left = (nh - height) // 2, (nw - width) // 2
    return covered[:, :, top:top + height, left:left + width]


def image_to_input(img: RawImage, spec: InputSpec, options: ImageOptions = ImageOptions(),
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A decoded, resized, normalised (1, C, H, W) input on `device` (see the module docstring)."""
    if len(spec.shape) != 3:
        raise InputError(f"this model takes inputs of shape {spec.shape}, not images; set "
                         "input_type to float32_multi_array or joint_state", "shape")
    channels, height, width = spec.shape
    x, order, integer = decode(img, device)
    x = _channels(x, order, channels, options.channel_order)
    x = resize(x, height, width, options.resize, options.pad_value)
    if options.mean:
        mean = torch.tensor(_per_channel(options.mean, channels), device=x.device)
        std = torch.tensor(_per_channel(options.std, channels), device=x.device)
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    elif integer:
        low = torch.tensor(spec.low, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        high = torch.tensor(spec.high, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        x = low + x * (high - low)
    return x.to(DTYPES[options.dtype]).contiguous()


def array_to_input(values: Sequence[float], spec: InputSpec, what: str,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A flat float sequence as a (1, *shape) input on `device`; wrong length or non-finite
    raises."""
    data = np.asarray(values, dtype=np.float32)
    if data.size != spec.numel():
        raise InputError(f"{what} has {data.size} values, the model takes {spec.numel()} "
                         f"(shape {spec.shape})", "shape")
    if not np.isfinite(data).all():
        raise InputError(f"{what} contains NaN or infinite values", "nonfinite")
    return torch.from_numpy(data.copy()).reshape(1, *spec.shape).to(device)


def int_array_to_input(values: Sequence[int], spec: InputSpec, what: str,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """A flat integer sequence as a (1, *shape) int64 input on `device` (an exact input)."""
    data = np.asarray(values, dtype=np.int64)
    if data.size != spec.numel():
        raise InputError(f"{what} has {data.size} values, the model takes {spec.numel()} "
                         f"(shape {spec.shape})", "shape")
    return torch.from_numpy(data.copy()).reshape(1, *spec.shape).to(device)


def check_in_box(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """`x` inside the declared input box, or InputError (kind out_of_range).

    SAVE's guarantees hold for inputs inside the box it analysed; an input outside it is an
    input error (a sensor glitch, wrong units or encoding), not a hardware fault. Rounding of the
    preprocessing (up to 1e-6 of the box width) is clamped back into the box. An integer input
    is compared exactly with its valid values (nothing is clamped).
    """
    if spec.integer:
        if x.is_floating_point():
            raise InputError("an integer input got float values", "dtype")
        if spec.low:
            lo, hi = int(spec.low[0]), int(spec.high[0])
            bad = (x < lo) | (x > hi)
            if bool(bad.any()):
                raise InputError(f"integer input holds {int(x[bad][0])}, outside its valid "
                                 f"values [{lo}, {hi}] ({int(bad.sum())} elements)",
                                 "out_of_range")
        return x
    low, high = spec.box().to(x.device)
    slack = (high - low) * 1e-6
    xf = x.float()
    outside = (xf < low - slack) | (xf > high + slack)
    if bool(outside.any()):
        flat = int(outside.reshape(-1).nonzero()[0])
        value = float(xf.reshape(-1)[flat])
        channel = int(outside.reshape(1, len(spec.low), -1).any(2).reshape(-1).nonzero()[0]) \
            if len(spec.shape) > 1 else flat
        lo, hi = spec.low[channel], spec.high[channel]
        raise InputError(f"input outside the declared box: element {flat} is {value:.6g}, not "
                         f"in [{lo:.6g}, {hi:.6g}] ({int(outside.sum())} elements outside); "
                         "fix the sensor units or widen input_low/input_high", "out_of_range")
    return torch.maximum(torch.minimum(xf, high), low).to(x.dtype)


def short_list(values: Sequence[object], limit: int = MAX_REASON) -> str:
    """A list for an error message, cut to about `limit` characters."""
    text = repr(list(values))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(values)} items)"
