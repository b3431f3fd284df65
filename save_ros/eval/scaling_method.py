"""Weight scaling as a campaign `Method`: the hardened model, and the same format unhardened.

Registered in `save_ros.eval.methods.METHODS`:

- `weight_scaling` (fp32), `weight_scaling_fp16`, `weight_scaling_int8`: every Linear/Conv layer
  stores its weights times the scale `save_ros.faults.scaling.choose_scale` picks for a per-bit
  error rate of 1e-4, and rescales its outputs.
- `weight_scaling_sat`, `weight_scaling_fp16_sat`: fp32 / fp16, scales chosen with the
  saturated objective (`saturate=True`: counts ruinous flips instead of weighing their size).
- `save_weight_scaling`: SAVE (`save_ros.eval.baselines.SaveMethod`, default config) protecting
  the fp32 weight-scaled model: SAVE's analysis, reliable pool and checks see the stored
  (scaled) weights.
- `fp16_plain`, `int8_plain`: the same storage format at the unit scale (fp16 weights; int8 with
  the usual max-abs per-layer scale), the baselines the fp16 / int8 hardening is measured against
  (the fp32 baseline is `unprotected`).

Weight scaling detects nothing: it only changes how much harm a flip does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from save_ros.eval.baselines import SaveMethod
from save_ros.eval.methods import ForwardMethod
from save_ros.faults.scaling import ScalingReport, StorageFormat, harden

DESIGN_BIT_ERROR_RATE = 1e-4  # the rate the per-layer objective weighs flips with


class WeightScaling(ForwardMethod):
    """A model whose Linear/Conv weights are stored scaled (see `save_ros.faults.scaling`).

    Every parameter is injectable as stored (scaled fp32/fp16/int8 weights, scaled fp32 biases);
    `predict` is one forward pass: weight scaling never detects.
    """

    def __init__(self, fmt: str = "fp32", policy: str = "optimal",
                 bit_error_rate: float = DESIGN_BIT_ERROR_RATE, name: str | None = None,
                 saturate: bool = False) -> None:
        self.fmt = StorageFormat(fmt)
        self.policy = policy
        self.saturate = saturate
        self.bit_error_rate = bit_error_rate
        default = "weight_scaling" if self.fmt is StorageFormat.FP32 else (
            f"weight_scaling_{fmt}" if policy == "optimal" else f"{fmt}_plain")
        super().__init__()
        self.name = name or default
        self.report: ScalingReport | None = None

    def prepare(self, model: nn.Module, spec: Any = None,
                calib: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Harden a copy of `model`; the calibration inputs bound each layer's inputs/outputs."""
        self.model, self.report = harden(model.eval(), self.fmt, self.bit_error_rate,
                                         policy=self.policy, saturate=self.saturate,
                                         calibration=None if calib is None else calib[0])


class SaveWeightScaling(SaveMethod):
    """SAVE on top of fp32 weight scaling: harden first, then `protect()` the hardened model."""

    name = "save_weight_scaling"

    def __init__(self) -> None:
        super().__init__()
        self.report: ScalingReport | None = None

    def prepare(self, model: nn.Module, spec: Any,
                calib: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Scale the weights (calibration bounds the layers), then let SAVE protect the result."""
        if calib is None:
            raise ValueError("save_weight_scaling needs the calibration split (calib=(x, y))")
        hardened, self.report = harden(model.eval(), StorageFormat.FP32, DESIGN_BIT_ERROR_RATE,
                                       calibration=calib[0])
        super().prepare(hardened, spec, calib)


def weight_scaling() -> WeightScaling:
    """fp32 weights, per-layer power-of-two scales."""
    return WeightScaling("fp32")


def weight_scaling_saturated() -> WeightScaling:
    """fp32, scales chosen by the saturated objective (counts ruinous flips, not their size)."""
    return WeightScaling("fp32", saturate=True, name="weight_scaling_sat")


def weight_scaling_fp16() -> WeightScaling:
    """fp16 weights, per-layer power-of-two scales."""
    return WeightScaling("fp16")


def weight_scaling_fp16_saturated() -> WeightScaling:
    """fp16, scales chosen by the saturated objective."""
    return WeightScaling("fp16", saturate=True, name="weight_scaling_fp16_sat")


def weight_scaling_int8() -> WeightScaling:
    """int8 weights, per-layer scale chosen among powers of two and the max-abs scale."""
    return WeightScaling("int8")


def save_weight_scaling() -> SaveWeightScaling:
    """SAVE protecting the fp32 weight-scaled model."""
    return SaveWeightScaling()


def fp16_plain() -> WeightScaling:
    """fp16 weights at scale 1 (the fp16 baseline)."""
    return WeightScaling("fp16", policy="unit")


def int8_plain() -> WeightScaling:
    """int8 weights at the max-abs per-layer scale (the int8 baseline)."""
    return WeightScaling("int8", policy="unit")
