"""Bit attribution: classify each single-bit flip of each element: robust, ranging, vulnerable.

`classify(values, bit, rule)` flips `bit` in every element of `values` (exactly, with
`save_ros.core.bits.flipped`) and returns a `BitClass` code per element:
- RANGING if the flipped value is NaN / Inf or leaves the element's checked range
  (`rule.low` / `rule.high`, per channel broadcast to elements): a range check catches it;
- else ROBUST if the consuming op masks it (`rule.relu_masked`: every consumer is a ReLU, the
  golden value is <= 0 and the flipped value is <= 0, -inf included; NaN is never masked) or if
  it is numerically small: |delta| * R <= `rule.fraction`, R from `core.sensitivity`;
- else VULNERABLE.
The same function classifies flips in attribution (golden weights, calibration activations) and
in validation (the actual activation values of the validated input), so the two agree by
construction; what validation tests is the *claim* of each class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from save_ros.core import bits
from save_ros.core.analysis import BitClass


@dataclass
class FlipRule:
    """What decides the class of a flip of one tensor's elements (all broadcast to values)."""

    low: torch.Tensor  # checked range, per element (broadcastable)
    high: torch.Tensor
    sens: torch.Tensor | None  # R per element; None: nothing is numerically robust
    fraction: float = 0.1  # safety fraction of the smallest gap
    relu_masked: bool = False


def classify(values: torch.Tensor, bit: int, rule: FlipRule) -> torch.Tensor:
    """BitClass code (int8) per element for a flip of `bit` in each element of `values`."""
    new = bits.flipped(values, bit)
    finite = torch.isfinite(new)
    ranging = ~finite | (new < rule.low) | (new > rule.high)
    robust = torch.zeros_like(ranging)
    if rule.sens is not None:
        delta = (new - values).abs()
        robust |= finite & (delta * rule.sens <= rule.fraction)
    if rule.relu_masked:
        robust |= (values <= 0) & (new <= 0)  # NaN compares False: never masked
    out = torch.full(values.shape, int(BitClass.VULNERABLE), dtype=torch.int8)
    out[robust] = int(BitClass.ROBUST)
    out[ranging] = int(BitClass.RANGING)
    return out


def bit_shares(values: torch.Tensor, rule: FlipRule, chunk: int = 1 << 22):
    """Per bit, the shares (robust, ranging, vulnerable) over all elements of `values`."""
    width = bits.layout_of(values.dtype).width
    flat = values.reshape(-1) if values.numel() <= chunk else None
    shares = []
    for bit in range(width):
        counts = torch.zeros(3, dtype=torch.int64)
        if flat is not None:
            counts += torch.bincount(classify(values, bit, rule).reshape(-1).long(), minlength=3)
        else:
            # Large tensors: rows at a time, ranges broadcast per row.
            for i in range(0, values.shape[0], max(1, chunk // max(1, values[0].numel()))):
                j = i + max(1, chunk // max(1, values[0].numel()))
                sub = FlipRule(_rows(rule.low, i, j, values), _rows(rule.high, i, j, values),
                               _rows(rule.sens, i, j, values), rule.fraction, rule.relu_masked)
                counts += torch.bincount(classify(values[i:j], bit, sub).reshape(-1).long(),
                                         minlength=3)
        total = float(counts.sum())
        shares.append(tuple(float(c) / total for c in counts))
    return shares


def _rows(t: torch.Tensor | None, i: int, j: int, values: torch.Tensor):
    """Rows i:j of a tensor broadcast against values (a size-1 leading dim stays)."""
    if t is None or t.dim() < values.dim() or t.shape[0] == 1:
        return t
    return t[i:j]
