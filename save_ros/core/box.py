"""`InputBox`: the box of valid inputs that SAVE analyses and checks, one type end to end.

Selection propagates it through the graph (sound ranges hold for every input inside it), the
analysis key records it, and the runtime checks every input against it (an input outside it is
never verified). The node builds it from its `input_low`/`input_high` parameters, a bundled model
from its spec, a user from anything `InputBox.of` accepts:

- scalars: one bound for every element, `(0.0, 1.0)`;
- one value per channel (dim 0 of one input): `([0.0, -1.0, 0.0], [1.0, 1.0, 2.0])`;
- tensors shaped like one input, or like a batch of one.

`low` and `high` are float32 tensors that broadcast against one input and against a batch
(per-channel bounds are shaped (C, 1, ..., 1)). `as_record()` is the box as plain data in one
canonical form, so the same box gives the same analysis key whichever form it was given in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from save_ros.errors import UserError


class InputRangeError(UserError, ValueError):
    """An input box that does not fit the model input (the message says which forms fit)."""


class InputError(UserError, ValueError):
    """An input cannot be a valid model input; the message says why, `kind` names the class.

    Kinds are a small closed set (encoding, size, data, nonfinite, shape, dtype, structure,
    device, names, out_of_range), so a node can count rejects per kind without one counter per
    distinct message. An input error is never a hardware fault: `protect().infer()` raises it
    before anything is counted (`core.inputs`), the node's preprocessing before inference.
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


def _bound(b: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """One bound as a float32 tensor that broadcasts against one input of `shape`."""
    t = torch.as_tensor(b, dtype=torch.float32)
    if t.dim() == 1 and t.numel() == 1:
        return t.reshape(())
    if t.dim() == 1 and len(shape) > 1:
        if t.numel() != shape[0]:
            raise InputRangeError(
                f"input_range has {t.numel()} values per bound but inputs have {shape[0]} "
                "channels: give one per-channel value each, a scalar or a full tensor")
        return t.reshape((-1,) + (1,) * (len(shape) - 1))  # one value per channel
    if t.dim() == len(shape) + 1 and t.shape[0] == 1:
        t = t[0]  # shaped like a batch of one
    if t.dim() and tuple(t.shape) != tuple(shape):
        raise InputRangeError(
            f"input_range bound of shape {tuple(t.shape)} does not fit inputs of shape "
            f"{tuple(shape)}: give scalars, {shape[0] if shape else 1} per-channel values or a "
            "full tensor")
    return t


def _canonical(t: torch.Tensor) -> Any:
    """A bound as plain data: a number, one number per channel, or the nested list."""
    flat = t.reshape(-1)
    if bool((flat == flat[0]).all()):
        return float(flat[0])
    rows = t.reshape(t.shape[0], -1)
    if bool((rows.amin(1) == rows.amax(1)).all()):
        return rows[:, 0].tolist()
    return t.tolist()


class InputBox(NamedTuple):
    """Valid inputs: `low <= x <= high` elementwise (a (low, high) pair that also unpacks)."""

    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def of(cls, input_range: Any, input_shape: tuple[int, ...] | torch.Size) -> InputBox:
        """The box for inputs of `input_shape` (one input, no batch dim) from any accepted form.

        Raises InputRangeError for a form that does not fit, low > high or a non-finite low.
        """
        if isinstance(input_range, InputBox) and input_range.low.dtype == torch.float32:
            low, high = input_range
        else:
            try:
                lo, hi = input_range
            except (TypeError, ValueError):
                raise InputRangeError(
                    "input_range must be a (low, high) pair of scalars, per-channel lists or "
                    "tensors shaped like one input (e.g. models.get_spec(name).input_range())"
                ) from None
            shape = tuple(input_shape)
            low, high = _bound(lo, shape), _bound(hi, shape)
        if bool((low > high).any()) or bool(torch.isnan(high).any()) \
                or not bool(torch.isfinite(low).all()):
            raise InputRangeError("input_range needs finite low <= high for every channel")
        return cls(low, high)

    def contains(self, x: torch.Tensor) -> bool:
        """True when every element of `x` (one input or a batch) lies in the box; NaN does not."""
        low, high = self.to(x.device)
        # clamp leaves an input inside the box unchanged; NaN stays NaN and never compares equal
        return torch.equal(x.clamp(low, high), x)

    def to(self, device: torch.device | str) -> InputBox:
        """The same box with its bounds on `device`."""
        if self.low.device == torch.device(device):
            return self
        return InputBox(self.low.to(device), self.high.to(device))

    def expand(self, shape: tuple[int, ...] | torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) materialised with `shape` (a batch: the bounds broadcast over it)."""
        return self.low.expand(shape).clone(), self.high.expand(shape).clone()

    def as_record(self) -> dict[str, Any]:
        """The box as plain data for analysis keys and reports, in one canonical form."""
        return {"low": _canonical(self.low), "high": _canonical(self.high)}
