"""The `input` kind: every model input within its declared box. Not a fault when it fails.

- plan entry: none (every inference checks its inputs; `core.inputs` declares the boxes);
- eager check (`contains`): the box test of `LayerChecker` where the runtime did not check the
  input before inference (NaN lies outside any box);
- device check (`DeviceInputs`): one flag for every input, inside the captured program (NaN
  fails, and Inf where the box is finite); a raised flag makes the backend reject the input
  with the same `InputError` as the CPU backend, before any verdict (`input_error`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from save_ros.core.verify.checks import CheckKind
from save_ros.core.verify.kinds.base import Kind


class InputKind(Kind):
    """The input against its declared box: an input error, never a fault."""

    kind = CheckKind.INPUT
    verifies = "the input within its declared box"
    failure = "the input left its box"
    covers = "input errors (not a fault)"
    on_device = "one flag for every input against its box, before the forward (`DeviceInputs`)"
    input_error = True
    forceable = False

    def contains(self, box, x: torch.Tensor) -> bool:
        """The input lies in the declared box (NaN does not)."""
        return box.contains(x)

    def device_inputs(self, bounds, example: Sequence[torch.Tensor], device: torch.device
                      ) -> DeviceInputs:
        """This kind's part of a CUDA program (program-wide: one flag)."""
        return DeviceInputs(bounds, example, device)

    def detection(self, slot):
        return None  # the input is rejected (InputError), no detection


INPUT = InputKind()


class DeviceInputs:
    """Every input with a box against it, as one device flag."""

    def __init__(self, bounds, example: Sequence[torch.Tensor], device: torch.device) -> None:
        """`bounds`: per model input its (low, high) or None (`ModelInputs.bounds`)."""
        # (input position, low, high, the box is open: Inf would pass the compare)
        self.bounds = []
        for k, (b, x) in enumerate(zip(bounds, example, strict=True)):
            if b is not None:
                lo, hi = b[0].to(device), b[1].to(device)
                finite = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
                self.bounds.append((k, lo, hi, x.is_floating_point() and not finite))

    def flag(self, xs: Sequence[torch.Tensor], false: torch.Tensor) -> torch.Tensor:
        """One device flag: some input outside its box (NaN compares False: outside)."""
        bad = []
        for k, lo, hi, open_box in self.bounds:
            x = xs[k]
            ok = ((x >= lo) & (x <= hi)).all()
            if open_box:
                ok = ok & torch.isfinite(x).all()
            bad.append(~ok)
        if not bad:
            return false
        return bad[0] if len(bad) == 1 else torch.stack(bad).any()
