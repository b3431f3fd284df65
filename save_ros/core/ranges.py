"""Value ranges of every activation: sound boxes from the input box, and calibration ranges.

`node_ranges(graph, example_input, input_range, calibration, ...)` returns one `NodeRange` per
fx node with a float tensor value: the sound elementwise box (interval propagation, batch 1), the
calibration elementwise min / max (and a sample of calibration values for bit attribution), and
per-channel sound and calibration ranges. Calibration ranges are widened by `margin` x their width
on each side, then clipped to the sound box (which holds for every valid input anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from save_ros.core.graph import ModelGraph
from save_ros.core.intervals import Interval
from save_ros.core.propagate import IntervalInterpreter


class InputRangeError(ValueError):
    """An input box that does not fit the model input."""


@dataclass
class NodeRange:
    """Sound and calibration ranges of one node's value (batch dimension `batch_dim`)."""

    name: str
    shape: tuple[int, ...]  # one sample, without the batch dimension
    batch_dim: int
    channel_dim: int | None  # in the batched shape; None for scalars per sample
    sound: Interval  # elementwise, batched shape with batch size 1
    calib_lo: torch.Tensor  # elementwise observed min (batched shape, batch 1), not widened
    calib_hi: torch.Tensor
    samples: torch.Tensor | None  # calibration values kept for attribution (batch-major)
    sound_lo_ch: torch.Tensor | None = None
    sound_hi_ch: torch.Tensor | None = None
    calib_lo_ch: torch.Tensor | None = None  # widened by the margin, clipped to sound
    calib_hi_ch: torch.Tensor | None = None


def input_box(input_range, example_input: torch.Tensor) -> Interval:
    """The input box as an Interval shaped like one batched input (batch 1).

    `input_range` is (low, high): scalars, one value per input channel (dim 1 of a batched
    input), or tensors shaped like one input.
    """
    try:
        low, high = input_range
    except (TypeError, ValueError):
        raise InputRangeError(
            "input_range must be a (low, high) pair of scalars, per-channel lists or tensors"
        ) from None
    shape = (1, *example_input.shape[1:])
    bounds = []
    for b in (low, high):
        t = torch.as_tensor(b, dtype=torch.float32)
        if t.dim() == 1 and t.numel() > 1 and (len(shape) < 2 or t.numel() != shape[1]):
            raise InputRangeError(
                f"input_range has {t.numel()} values per bound but inputs have "
                f"{shape[1] if len(shape) > 1 else 1} channels: give one per-channel value each"
            )
        if t.dim() == 1 and len(shape) > 1 and t.numel() == shape[1]:
            t = t.reshape((1, -1) + (1,) * (len(shape) - 2))  # one value per channel
        elif t.dim() > 1 and t.shape == shape[1:]:
            t = t.unsqueeze(0)
        try:
            bounds.append(t.expand(shape).clone())
        except RuntimeError:
            raise InputRangeError(
                f"input_range bound of shape {tuple(t.shape)} does not fit inputs of shape "
                f"{tuple(shape[1:])}: give scalars, {shape[1]} per-channel values or a full tensor"
            ) from None
    if bool((bounds[0] > bounds[1]).any()) or not bool(torch.isfinite(bounds[0]).all()):
        raise InputRangeError("input_range needs finite low <= high for every channel")
    return Interval(bounds[0], bounds[1])


def channel_dim_of(shape: tuple[int, ...], kind: str) -> int | None:
    """The channel dim of a batched activation: 1 for (N, C, ...), the last for (N, T, D)."""
    if len(shape) <= 1:
        return None
    if len(shape) == 3 and not kind.startswith("Conv"):
        return 2  # tokens x features: features are the channels
    return 1


def _per_channel(lo: torch.Tensor, hi: torch.Tensor, cdim: int | None):
    """Reduce elementwise bounds to per-channel bounds."""
    if cdim is None:
        return None, None
    dims = [d for d in range(lo.dim()) if d != cdim]
    return lo.amin(dim=dims), hi.amax(dim=dims)


def _batch_dim(full: torch.Size, one: torch.Size) -> int | None:
    """The dim whose size follows the batch (differs between batch B and batch 1)."""
    if len(full) != len(one):
        return None
    diff = [d for d, (a, b) in enumerate(zip(full, one, strict=True)) if a != b]
    return diff[0] if len(diff) == 1 else (0 if full == one else None)


def calibrate(graph: ModelGraph, calibration: torch.Tensor, keep: int, batch_size: int = 256):
    """Run calibration batches; return {node: (min, max, kept samples)} along the batch dim."""
    one_out, one = graph.record(calibration[:1])
    del one_out
    stats: dict[str, list] = {}
    for start in range(0, len(calibration), batch_size):
        chunk = calibration[start : start + batch_size]
        _, values = graph.record(chunk)
        for name, v in values.items():
            if not (isinstance(v, torch.Tensor) and v.is_floating_point()) or v.dim() == 0:
                continue  # a scalar mixes the whole batch: no per-input range
            bdim = 0 if len(chunk) == 1 else _batch_dim(v.shape, one[name].shape)
            if bdim is None:
                continue
            lo, hi = v.amin(bdim, keepdim=True), v.amax(bdim, keepdim=True)
            kept = v.movedim(bdim, 0)[: max(0, keep - start)] if start < keep else None
            if name not in stats:
                stats[name] = [lo, hi, [kept] if kept is not None else [], bdim]
            else:
                s = stats[name]
                s[0], s[1] = torch.minimum(s[0], lo), torch.maximum(s[1], hi)
                if kept is not None and len(kept):
                    s[2].append(kept)
    return {n: (s[0], s[1], torch.cat(s[2]) if s[2] else None, s[3]) for n, s in stats.items()}


def node_ranges(
    graph: ModelGraph,
    example_input: torch.Tensor,
    input_range,
    calibration: torch.Tensor | None,
    margin: float = 0.1,
    keep: int = 64,
) -> tuple[dict[str, NodeRange], list[str]]:
    """Sound and calibration ranges of every float node; also the ops that fell back."""
    if graph.gm is None:
        raise NotImplementedError("interval propagation needs an fx capture")
    with torch.no_grad():
        calib = calibrate(graph, calibration if calibration is not None else example_input, keep)
        _, one = graph.record(example_input[:1])
        shapes = dict(one)  # example values: the structure of unbounded fallbacks
        fallback = {}
        for n, (lo, hi, _, _) in calib.items():
            w = hi - lo
            fallback[n] = (lo - margin * w, hi + margin * w)
        interp = IntervalInterpreter(graph.gm, fallback, shapes)
        boxes = interp.propagate(input_box(input_range, example_input))
    kinds = {layer.name: layer.kind for layer in graph.layers}
    out: dict[str, NodeRange] = {}
    for name, (lo, hi, samples, bdim) in calib.items():
        if name not in boxes:
            continue
        box = boxes[name]
        if box.lo.shape != lo.shape:
            continue
        full_shape = tuple(lo.shape)
        cdim = channel_dim_of(full_shape, kinds.get(name, "")) if bdim == 0 else None
        r = NodeRange(name, full_shape[1:] if bdim == 0 else full_shape, bdim, cdim, box, lo, hi,
                      samples)
        r.sound_lo_ch, r.sound_hi_ch = _per_channel(box.lo, box.hi, cdim)
        clo, chi = _per_channel(lo, hi, cdim)
        if clo is not None:
            w = chi - clo
            r.calib_lo_ch = torch.maximum(clo - margin * w, r.sound_lo_ch)
            r.calib_hi_ch = torch.minimum(chi + margin * w, r.sound_hi_ch)
        out[name] = r
    return out, interp.unsupported


def looseness(r: NodeRange) -> float:
    """Summed sound width / summed calibration width over channels (inf if unbounded)."""
    if r.sound_lo_ch is None:
        sw = float(r.sound.hi.max() - r.sound.lo.min())
        cw = float(r.calib_hi.max() - r.calib_lo.min())
        return sw / cw if cw > 0 else (1.0 if sw == 0 else math.inf)
    sw = float((r.sound_hi_ch - r.sound_lo_ch).sum())
    cw = float((r.calib_hi_ch - r.calib_lo_ch).sum())  # summed: dead channels have width 0
    return sw / cw if cw > 0 else (1.0 if sw == 0 else math.inf)
