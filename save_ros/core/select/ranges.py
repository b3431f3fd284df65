"""Value ranges of every activation: sound boxes from the input box, and calibration ranges.

`node_ranges(graph, example_input, inputs, calibration, ...)` returns one `NodeRange` per
fx node with a float tensor value (example and calibration are `core.inputs.InputBatch`es, one
tensor per model input; `inputs` gives each input's box, integer inputs are exact): the
elementwise box from interval propagation (batch 1), the calibration elementwise min / max (and
a sample of calibration values for bit attribution), and per-channel interval and calibration
ranges. Calibration ranges are widened by `margin` x their
width on each side, then clipped to the interval box.

The interval box is *sound* (holds for every input in the box) only where every op on the way
from the input has an interval rule; a node without one takes its calibration box, and it and
everything computed from it are marked `sound=False` (`calibrated` in reports): clipping to such a
box is not a guarantee.

Memory stays a small multiple of one forward pass: calibration runs in batches, per node it keeps
the elementwise min / max (one sample's size) and, for bit attribution, the values of at most
`attr_elements` (sample, element) pairs: the first `keep` samples at a seeded set of element
positions (all positions when one sample has few enough elements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from save_ros.core.box import InputBox
from save_ros.core.graph import ModelGraph
from save_ros.core.inputs import InputBatch, ModelInputs
from save_ros.core.select.intervals import Interval
from save_ros.core.select.propagate import IntervalInterpreter


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
    samples: torch.Tensor | None  # kept calibration values for attribution: (keep, positions)
    sound_lo_ch: torch.Tensor | None = None
    sound_hi_ch: torch.Tensor | None = None
    calib_lo_ch: torch.Tensor | None = None  # widened by the margin, clipped to sound
    calib_hi_ch: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # flat element positions (in one sample) kept
    other_max: torch.Tensor | None = None  # max-pool masking: the window max of the others
    is_sound: bool = True  # False: an op on the way has no interval rule (calibrated box)


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


@dataclass
class _Stats:
    """Running calibration statistics of one node."""

    lo: torch.Tensor
    hi: torch.Tensor
    bdim: int
    positions: torch.Tensor | None
    kept: list[torch.Tensor]
    other: list[torch.Tensor]


def _positions(numel: int, cap: int, seed: int, device) -> torch.Tensor | None:
    """None (every element) when `numel` <= cap, else `cap` seeded distinct flat positions."""
    if numel <= cap:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=g)[:cap].sort().values.to(device)


def calibrate(graph: ModelGraph, calibration: InputBatch, keep: int, batch_size: int = 256,
              attr_elements: int = 1 << 18, pools: dict[str, int] | None = None,
              seed: int = 0, outputs: list | None = None) -> dict[str, _Stats]:
    """Run calibration batches; per node the min / max along the batch and kept values.

    `pools`: nodes whose every consumer is a non-overlapping k x k max pool; for those the max of
    the other elements of each kept element's window is kept too (exact max-pool masking).
    """
    from save_ros.core.select.attribution import pool_other_max

    pools = pools or {}
    if isinstance(calibration, torch.Tensor):  # one input
        calibration = InputBatch((calibration,))
    one_out, one = graph.record(*calibration[:1].tensors)
    del one_out
    stats: dict[str, _Stats] = {}
    for start in range(0, len(calibration), batch_size):
        chunk = calibration[start : start + batch_size]
        out, values = graph.record(*chunk.tensors)
        if outputs is not None and isinstance(out, torch.Tensor):
            outputs.append(out.detach().float())
        for name, v in values.items():
            if not (isinstance(v, torch.Tensor) and v.is_floating_point()) or v.dim() == 0:
                continue  # a scalar mixes the whole batch: no per-input range
            if len(chunk) == 1:  # one sample cannot show its batch dim: as seen before
                bdim = stats[name].bdim if name in stats else 0
            else:
                bdim = _batch_dim(v.shape, one[name].shape)
            if bdim is None:
                continue
            v = v.detach()
            lo, hi = v.amin(bdim, keepdim=True), v.amax(bdim, keepdim=True)
            s = stats.get(name)
            if s is None:
                per = max(1, attr_elements // max(1, keep))
                pos = _positions(v.numel() // max(1, v.shape[bdim]), per,  # one sample's
                                 seed + len(stats), v.device)
                s = stats[name] = _Stats(lo, hi, bdim, pos, [], [])
            else:
                torch.minimum(s.lo, lo, out=s.lo)
                torch.maximum(s.hi, hi, out=s.hi)
            if start < keep:
                rows = v.movedim(bdim, 0)[: keep - start]
                flat = rows.reshape(len(rows), -1)
                s.kept.append(flat if s.positions is None else flat[:, s.positions].clone())
                if name in pools and rows.dim() == 4:
                    om = pool_other_max(rows, pools[name]).reshape(len(rows), -1)
                    s.other.append(om if s.positions is None else om[:, s.positions].clone())
        del values
    return stats


def _input_boxes(inputs: ModelInputs, example: InputBatch) -> list:
    """What each placeholder starts from: a float input's box (batch 1), an exact input's
    example value (its interval rules treat it as any valid value, `propagate`)."""
    out = []
    for slot, t in zip(inputs.slots, example.tensors, strict=True):
        if slot.box is None:
            out.append(t)
            continue
        lo, hi = slot.box.to(t.device).expand((1, *slot.shape))
        out.append(Interval(lo, hi))
    return out


def node_ranges(
    graph: ModelGraph,
    example_input: InputBatch | torch.Tensor,
    inputs: ModelInputs | InputBox,
    calibration: InputBatch | torch.Tensor | None,
    margin: float = 0.1,
    keep: int = 64,
    attr_elements: int = 1 << 18,
    pools: dict[str, int] | None = None,
    batch_size: int = 256,
    outputs: list | None = None,
) -> tuple[dict[str, NodeRange], list[str]]:
    """Interval and calibration ranges of every float node; also the ops that fell back.

    A single input may come as a tensor with an `InputBox` (the one-input form).
    `outputs`: a list the model's outputs on the calibration batches are appended to."""
    if graph.gm is None:
        raise NotImplementedError("interval propagation needs an fx capture")
    if isinstance(example_input, torch.Tensor):
        if not isinstance(inputs, ModelInputs):
            inputs = ModelInputs.of(None, example_input, inputs)
        example_input = InputBatch((example_input,))
    if isinstance(calibration, torch.Tensor):
        calibration = InputBatch((calibration,))
    with torch.no_grad():
        calib = calibrate(graph, calibration if calibration is not None else example_input, keep,
                          batch_size, attr_elements, pools, outputs=outputs)
        _, one = graph.record(*example_input[:1].tensors)
        shapes = dict(one)  # example values: the structure of unbounded fallbacks
        fallback = {}
        for n, s in calib.items():
            w = s.hi - s.lo
            fallback[n] = (s.lo - margin * w, s.hi + margin * w)
        interp = IntervalInterpreter(graph.gm, fallback, shapes)
        boxes = interp.propagate(*_input_boxes(inputs, example_input[:1]))
        del one, shapes
    kinds = {layer.name: layer.kind for layer in graph.layers}
    out: dict[str, NodeRange] = {}
    for name, s in calib.items():
        if name not in boxes:
            continue
        box = boxes[name]
        lo, hi = s.lo, s.hi
        if box.lo.shape != lo.shape:
            continue
        full_shape = tuple(lo.shape)
        cdim = channel_dim_of(full_shape, kinds.get(name, "")) if s.bdim == 0 else None
        samples = torch.cat(s.kept) if s.kept else None
        r = NodeRange(name, full_shape[1:] if s.bdim == 0 else full_shape, s.bdim, cdim, box,
                      lo, hi, samples, positions=s.positions,
                      other_max=torch.cat(s.other) if s.other else None,
                      is_sound=name not in interp.calibrated)
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
