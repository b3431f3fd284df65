"""Weight-scaling hardening: store each layer's weights times a constant, rescale its outputs.

A linear or conv layer computes `y = (x (*) (s W) + s b) * (1 / s)`: the memory holds `s W` (and
`s b`), and the rescale is one multiply per output. `harden` replaces every Linear/Conv layer of
a model by a `ScaledLayer` whose `s` is chosen per layer by `choose_scale` (see
`save_ros.faults.scale_choice` for the formats, the fault objective and why `s` matters), with
each layer's input and output peaks measured on calibration inputs (`measure_bounds`).

The names of `save_ros.faults.scale_choice` are re-exported here: this module is the public face
of weight scaling.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from save_ros.faults.scale_choice import (
    FP32_MAX,
    HEADROOM,
    NONFINITE_PENALTY,
    LayerBounds,
    Objective,
    ScaleChoice,
    ScalingError,
    StorageFormat,
    admissible,
    choose_scale,
    decode,
    default_candidates,
    encode,
    flip_errors,
    flips_per_weight,
    objective,
    parse_format,
    unit_scale,
)

__all__ = [
    "FP32_MAX", "HEADROOM", "NONFINITE_PENALTY", "SCALABLE", "LayerBounds", "Objective",
    "ScaleChoice", "ScaledLayer", "ScalingError", "ScalingReport", "StorageFormat", "admissible",
    "choose_scale", "decode", "default_candidates", "encode", "flip_errors", "flips_per_weight",
    "harden", "measure_bounds", "objective", "parse_format", "unit_scale",
]


class ScaledLayer(nn.Module):
    """A linear or conv layer whose weights are stored scaled; outputs are rescaled by 1 / s.

    `weight` (the stored tensor, in the storage dtype) and `bias` (fp32, times s) are what the
    fault injector sees under the original names, so injection hits the stored values.
    """

    def __init__(self, layer: nn.Module, scale: float, fmt: str | StorageFormat) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise ScalingError(
                f"weight scaling supports Linear, Conv1d and Conv2d, not {type(layer).__name__}"
            )
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.padding_mode != "zeros":
            raise ScalingError("weight scaling supports zero-padded convolutions only")
        self.fmt = parse_format(fmt)
        self.scale = float(scale)
        self.inv_scale = 1.0 / self.scale
        self.kind = type(layer).__name__
        self.conv_args: dict = {}
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            self.conv_args = dict(
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
            )
        stored = encode(layer.weight, self.scale, self.fmt).contiguous()
        # A Parameter (not a buffer) so that injectors that walk named_parameters() see it too.
        self.weight = nn.Parameter(stored, requires_grad=False)
        self.bias = None
        if layer.bias is not None:
            b = (layer.bias.detach().to(torch.float64) * self.scale).to(torch.float32)
            self.bias = nn.Parameter(b.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`op(x, stored weight, stored bias) * (1 / s)`: one multiply per output."""
        # fp32 compute; the branch is on the storage format (fixed), so torch.fx can trace it
        w = self.weight if self.fmt is StorageFormat.FP32 else self.weight.to(torch.float32)
        if self.kind == "Linear":
            y = F.linear(x, w, self.bias)
        elif self.kind == "Conv1d":
            y = F.conv1d(x, w, self.bias, **self.conv_args)
        else:
            y = F.conv2d(x, w, self.bias, **self.conv_args)
        return y * self.inv_scale

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"{self.kind}, fmt={self.fmt.value}, scale=2**{math.log2(self.scale):g}"


SCALABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class ScalingReport:
    """What `harden` did: one ScaleChoice per scaled layer, and the layers it left alone."""

    fmt: str
    flips_per_weight: float
    choices: list[ScaleChoice]
    skipped: list[str]

    def to_dict(self) -> dict:
        """A JSON-ready record."""
        return {
            "fmt": self.fmt,
            "flips_per_weight": self.flips_per_weight,
            "layers": [c.to_dict() for c in self.choices],
            "skipped": self.skipped,
        }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at the dotted module path `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def measure_bounds(model: nn.Module, calibration: torch.Tensor) -> dict[str, LayerBounds]:
    """Largest |input| and |output| of every Linear/Conv layer over calibration inputs."""
    peaks: dict[str, list[float]] = {}
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            p = peaks.setdefault(name, [0.0, 0.0])
            p[0] = max(p[0], float(args[0].detach().abs().max()))
            p[1] = max(p[1], float(out.detach().abs().max()))
        return record

    for name, module in model.named_modules():
        if isinstance(module, SCALABLE):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(calibration)
    finally:
        for h in handles:
            h.remove()
    return {k: LayerBounds(v[0], v[1]) for k, v in peaks.items()}


def harden(
    model: nn.Module,
    fmt: str | StorageFormat = StorageFormat.FP32,
    bit_error_rate: float = 1e-4,
    policy: str = "optimal",
    candidates: Iterable[float] | None = None,
    inplace: bool = False,
    calibration: torch.Tensor | None = None,
    saturate: bool = False,
) -> tuple[nn.Module, ScalingReport]:
    """Replace every Linear/Conv1d/Conv2d by a ScaledLayer; return (model, report).

    `policy="optimal"` picks each layer's scale by `choose_scale`; `policy="unit"` stores the
    same format at the unit scale (the unhardened baseline of that format). `calibration`
    inputs give each layer's input and output peaks (LayerBounds); without them every layer
    assumes inputs up to 1 and no output headroom limit, which is only right for toy layers.
    """
    fmt = parse_format(fmt)
    if policy not in ("optimal", "unit"):
        raise ScalingError(f"unknown scaling policy {policy!r}; use 'optimal' or 'unit'")
    lam = flips_per_weight(bit_error_rate, fmt)
    target = model if inplace else copy.deepcopy(model)
    bounds = measure_bounds(target, calibration) if calibration is not None else {}
    cands = None if candidates is None else list(candidates)
    choices: list[ScaleChoice] = []
    skipped: list[str] = []
    for name, module in list(target.named_modules()):
        if isinstance(module, ScaledLayer):
            raise ScalingError(f"{name} is already scaled; harden the original model")
        if not isinstance(module, SCALABLE):
            if any(True for _ in module.parameters(recurse=False)):
                skipped.append(name)
            continue
        if not name:
            raise ScalingError("harden needs a model that contains layers, not a bare layer")
        b = bounds.get(name, LayerBounds())
        if policy == "unit":
            w = module.weight
            unit = objective(w, unit_scale(w, fmt), fmt, lam, b, saturate)
            choice = ScaleChoice(name, fmt.value, unit.scale, unit, unit, 1)
        else:
            choice = choose_scale(module.weight, fmt, lam, cands, layer=name, bounds=b,
                                  saturate=saturate)
        choices.append(choice)
        _replace(target, name, ScaledLayer(module, choice.scale, fmt))
    if not choices:
        raise ScalingError("the model has no Linear or Conv layer to scale")
    return target.eval(), ScalingReport(fmt.value, lam, choices, skipped)
