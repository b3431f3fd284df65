"""The inputs of a protected model: one tensor, or several (tuple, list, dict), each with a box.

`ModelInputs.of(model, example_input, input_range)` reads the structure of `example_input` once:

- a tensor: one input, `model(x)`;
- a tuple or list of tensors: `model(*xs)`, in that order;
- a dict of tensors: `model(**xs)`; the keys name parameters of `model.forward`, and the runtime
  passes them in the signature's order (the fx graph's placeholders).

Every input has the batch first (the same batch size for all inputs of one call). Float inputs
need a box (`core.box.InputBox`): Selection propagates it, and an input outside it is refused.
Integer and bool inputs (token ids, discrete commands) are *exact*: they have no float range,
are never flipped as floats, and their box is None (any value) or an inclusive (low, high) of
valid values, e.g. `(0, vocab - 1)`. `input_range` is then one box per input: a sequence in the
inputs' order or a dict keyed like them (None for exact inputs); a single box is accepted only
for a single input.

At run time `normalize(x)` checks the structure, dtype, shape (every dim but the batch) and
device of every input and returns the positional tuple, and `check_values(xs)` refuses NaN / Inf
and values outside the box. Both raise `InputError` (its `kind` names the class) before the model
runs: an input error is never a hardware fault. `InputBatch` is a batch of such tuples that
slices like one tensor (calibration, Selection).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from save_ros.core.box import InputBox, InputError, InputRangeError
from save_ros.core.input_forms import (
    boxes_per_input,
    dict_order,
    forward_params,
    int_range,
    is_exact,
    table_ranges,
)

__all__ = ["InputBatch", "InputError", "InputSlot", "ModelInputs", "is_exact"]


@dataclass(frozen=True)
class InputSlot:
    """One input of the model: its name, per-sample shape, dtype and valid values."""

    name: str  # the forward parameter (or dict key) it binds to
    shape: tuple[int, ...]  # without the batch dimension
    dtype: torch.dtype
    box: InputBox | None  # float inputs; None for an exact input (see `int_range`)
    int_range: tuple[int, int] | None = None  # exact inputs: inclusive valid values, or None

    @property
    def exact(self) -> bool:
        """True for an integer / bool input."""
        return is_exact(self.dtype)

    def describe(self) -> str:
        """`name (N, *shape) dtype` for messages."""
        dims = ", ".join(["N", *map(str, self.shape)])
        return f"{self.name!r} ({dims}) {str(self.dtype).replace('torch.', '')}"

    def record(self) -> dict[str, Any]:
        """Plain data for analysis keys and reports."""
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape),
                               "dtype": str(self.dtype).replace("torch.", "")}
        if self.box is not None:
            out |= self.box.as_record()
        else:
            out["exact"] = True
            out["range"] = list(self.int_range) if self.int_range is not None else None
        return out


class InputBatch:
    """A batch of model inputs, one tensor per input (batch first), that slices like a tensor."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0]) if self.tensors and self.tensors[0].dim() else 1

    def __getitem__(self, idx: Any) -> InputBatch:
        """The same samples of every input (a slice, an index tensor)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return InputBatch(tuple(t[idx] for t in self.tensors))

    @property
    def device(self) -> torch.device:
        """The device of the first input."""
        return self.tensors[0].device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the float inputs (the first one's; float32 when all are exact)."""
        return next((t.dtype for t in self.tensors if t.is_floating_point()), torch.float32)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> InputBatch:
        """On `device`; `dtype` casts the float inputs only (exact inputs keep theirs)."""
        return InputBatch(tuple(
            t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)
            for t in self.tensors))

    def float(self) -> InputBatch:
        """Float inputs as float32, exact inputs as they are."""
        return InputBatch(tuple(t.float() if t.is_floating_point() else t for t in self.tensors))


def _compact(box: InputBox, shape: tuple[int, ...]) -> InputBox:
    """A box given elementwise (`ModelSpec.input_range()` expands it) in its smallest form:
    one bound, or one per channel, where the values allow (the check then reduces, no copy)."""
    low, high = box
    if low.numel() > 1 and bool((low == low.reshape(-1)[0]).all()) \
            and bool((high == high.reshape(-1)[0]).all()):
        return InputBox(low.reshape(-1)[:1].reshape(()), high.reshape(-1)[:1].reshape(()))
    if len(shape) > 1 and tuple(low.shape) == tuple(high.shape) == tuple(shape):
        lo, hi = low.reshape(shape[0], -1), high.reshape(shape[0], -1)
        if bool((lo.amin(1) == lo.amax(1)).all()) and bool((hi.amin(1) == hi.amax(1)).all()):
            return InputBox(lo[:, 0], hi[:, 0])
    return box


class ModelInputs:
    """What a protected model takes: the structure, and one `InputSlot` per input."""

    def __init__(self, structure: str, slots: Sequence[InputSlot], device: torch.device) -> None:
        self.structure = structure  # "tensor" | "sequence" | "dict"
        self.slots = tuple(slots)
        self.device = device
        self.names = [s.name for s in self.slots]
        self._exact = [s.exact for s in self.slots]
        # (slot, low, high, box with an infinite bound) per float input with a box, on device
        self._bounds: dict[torch.device, list] = {}

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def of(cls, model: nn.Module | None, example_input: Any, input_range: Any) -> ModelInputs:
        """Read the structure of `example_input` and one box per input from `input_range`.

        Raises InputError for an example that is not a tensor or a tuple / list / dict of
        tensors, InputRangeError for boxes that do not fit.
        """
        if isinstance(input_range, ModelInputs):
            return input_range
        if isinstance(example_input, InputBatch):
            example_input = example_input.tensors
        params = forward_params(model) if model is not None else None
        if isinstance(example_input, torch.Tensor):
            structure, tensors = "tensor", [example_input]
            names = [params[0].name if params else "input"]
        elif isinstance(example_input, Mapping):
            structure = "dict"
            names, tensors = dict_order(example_input, params)
        elif isinstance(example_input, (tuple, list)) and example_input:
            structure, tensors = "sequence", list(example_input)
            names = [p.name for p in params[:len(tensors)]] if params is not None \
                and len(params) >= len(tensors) else [f"input[{k}]" for k in range(len(tensors))]
            if params is not None and len(tensors) > len(params):
                raise InputError(f"example_input has {len(tensors)} inputs but "
                                 f"{type(model).__name__}.forward takes {len(params)} "
                                 f"({', '.join(p.name for p in params)})", "structure")
        else:
            raise InputError(
                "example_input must be a tensor, or a tuple / list / dict of tensors, each "
                "shaped like one batch of real input (batch first); got "
                f"{type(example_input).__name__}", "structure")
        for n, t in zip(names, tensors, strict=True):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"example input {n!r} is a {type(t).__name__}, not a tensor",
                                 "structure")
            if t.dim() == 0:
                raise InputError(f"example input {n!r} is a scalar; every input has the batch "
                                 "first, e.g. x.unsqueeze(0)", "shape")
        if len({t.shape[0] for t in tensors}) > 1:
            sizes = ", ".join(f"{n}: {t.shape[0]}" for n, t in zip(names, tensors, strict=True))
            raise InputError(f"example inputs have different batch sizes ({sizes}); the batch "
                             "is the first dim of every input", "shape")
        if len({t.device for t in tensors}) > 1:
            raise InputError("example inputs are on different devices; move all to one",
                             "device")
        boxes = boxes_per_input(input_range, names, tensors, structure)
        slots = []
        for n, t, b in zip(names, tensors, boxes, strict=True):
            shape = tuple(t.shape[1:])
            if is_exact(t.dtype):
                slots.append(InputSlot(n, shape, t.dtype, None, int_range(n, b)))
            else:
                if b is None:
                    raise InputRangeError(
                        f"input {n!r} is a float input and needs a box (low, high): Selection "
                        "bounds every activation from it; None is for integer inputs only")
                slots.append(InputSlot(n, shape, t.dtype, InputBox.of(b, shape)))
        return cls(structure, slots, tensors[0].device)

    def with_table_ranges(self, gm: fx.GraphModule) -> ModelInputs:
        """Exact inputs without a range whose every use indexes an embedding table get
        (0, rows - 1) as their valid values, so an id outside the table is an InputError, not
        an IndexError (or, on CUDA, a fatal device-side assert). The analysis key is unchanged:
        this is validation, not a box Selection propagates."""
        found = table_ranges(gm, [s.exact and s.int_range is None for s in self.slots])
        if not found:
            return self
        slots = [InputSlot(s.name, s.shape, s.dtype, None, found[k]) if k in found else s
                 for k, s in enumerate(self.slots)]
        return ModelInputs(self.structure, slots, self.device)

    # ---- what it is -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.slots)

    @property
    def single(self) -> bool:
        """One tensor input (the classic `protect(model, x, box)`)."""
        return self.structure == "tensor"

    @property
    def box(self) -> InputBox | None:
        """The box of a single float input (None otherwise)."""
        return self.slots[0].box if len(self.slots) == 1 else None

    def record(self) -> Any:
        """The inputs as plain data for the analysis key: boxes, shapes, dtypes.

        A single float input keeps the classic form (the box) plus its shape.
        """
        if self.single and self.slots[0].box is not None:
            return self.slots[0].box.as_record() | {"shape": list(self.slots[0].shape)}
        return {"inputs": [s.record() for s in self.slots], "structure": self.structure}

    def describe(self) -> str:
        """Every input as `name (N, *shape) dtype`."""
        return "; ".join(s.describe() for s in self.slots)

    # ---- run time -----------------------------------------------------------------------
    def normalize(self, x: Any, what: str = "input",
                  cast: bool = False) -> tuple[torch.Tensor, ...]:
        """The inputs of one call as forward's positional tuple; InputError if they do not fit.

        Checks structure, dtype, shape (every dim but the batch), device, one batch size.
        `cast`: float inputs of another float dtype are converted (calibration data), not
        refused.
        """
        slots = self.slots
        if isinstance(x, InputBatch) and len(x.tensors) == len(slots):  # positional already
            x = self.unflatten(x.tensors)
        if self.structure == "tensor":
            tensors: Any = (x,) if isinstance(x, torch.Tensor) else None
        elif self.structure == "dict":
            if isinstance(x, Mapping):
                extra = [k for k in x if k not in self.names]
                missing = [k for k in self.names if k not in x]
                if extra or missing:
                    raise InputError(f"{what} keys {sorted(map(str, x))} do not match the "
                                     f"protected inputs {self.names}", "names")
                tensors = tuple(x[k] for k in self.names)
            else:
                tensors = None
        else:
            tensors = tuple(x) if isinstance(x, (tuple, list)) and len(x) == len(slots) \
                else None
        if tensors is None:
            raise InputError(f"{what} must be {self._expected_structure()}, got "
                             f"{self._structure_of(x)}", "structure")
        batch = None
        if cast:
            tensors = tuple(t.to(s.dtype) if isinstance(t, torch.Tensor) and t.dtype != s.dtype
                            and t.is_floating_point() and s.dtype.is_floating_point else t
                            for s, t in zip(slots, tensors, strict=True))
        for s, t in zip(slots, tensors, strict=True):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"{what} {s.name!r} is a {type(t).__name__}, not a tensor; "
                                 f"expected {s.describe()}", "structure")
            if t.dtype != s.dtype:
                raise InputError(f"{what} {s.name!r} is {str(t.dtype).replace('torch.', '')}; "
                                 f"expected {s.describe()} (convert with .to("
                                 f"{s.dtype}))", "dtype")
            if t.dim() != len(s.shape) + 1 or tuple(t.shape[1:]) != s.shape:
                raise InputError(
                    f"{what} {s.name!r} has shape {tuple(t.shape)}; expected {s.describe()}: "
                    "the analysis holds for the protected shape only (any batch size N); "
                    "protect another example for another shape", "shape")
            if t.device != self.device:
                raise InputError(f"{what} {s.name!r} is on {t.device}; the protected model "
                                 f"runs on {self.device}", "device")
            if batch is None:
                batch = t.shape[0]
            elif t.shape[0] != batch:
                raise InputError(f"{what} batch sizes differ: {self.names[0]!r} has {batch}, "
                                 f"{s.name!r} {t.shape[0]}", "shape")
        return tensors

    def _expected_structure(self) -> str:
        if self.structure == "tensor":
            return f"one tensor {self.slots[0].describe()}"
        if self.structure == "dict":
            return f"a dict of tensors {{{self.describe()}}}"
        return f"a tuple / list of {len(self.slots)} tensors ({self.describe()})"

    @staticmethod
    def _structure_of(x: Any) -> str:
        if isinstance(x, Mapping):
            return f"a dict with keys {sorted(map(str, x))}"
        if isinstance(x, (tuple, list)):
            return f"a {type(x).__name__} of {len(x)}"
        return f"a {type(x).__name__}"

    def bounds(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per input, its (low, high) on `device` (exact inputs: their int range, or None)."""
        out = []
        for s in self.slots:
            if s.box is not None:
                b = s.box.to(device)
                out.append((b.low, b.high))
            elif s.int_range is not None:
                lo, hi = s.int_range
                out.append((torch.tensor(lo, device=device), torch.tensor(hi, device=device)))
            else:
                out.append(None)
        return out

    def _checks(self, device: torch.device) -> list:
        """Per checked input: (position, low, high, open box, how: scalar | channel | full)."""
        got = self._bounds.get(device)
        if got is None:
            got = []
            for k, s in enumerate(self.slots):
                if s.box is not None:
                    b = _compact(s.box.to(device), s.shape)
                    open_box = not bool(torch.isfinite(b.high).all())
                    if b.low.numel() == 1 and b.high.numel() == 1:
                        got.append((k, b.low.reshape(()), b.high.reshape(()), open_box,
                                    "scalar"))
                    elif len(s.shape) > 1 and b.low.shape == b.high.shape \
                            and b.low.numel() == s.shape[0] == b.low.shape[0] \
                            and b.low.numel() > 1:
                        got.append((k, b.low.reshape(-1), b.high.reshape(-1), open_box,
                                    "channel"))
                    else:
                        got.append((k, b.low, b.high, open_box, "full"))
                elif s.int_range is not None:
                    got.append((k, s.int_range[0], s.int_range[1], False, "int"))
            self._bounds[device] = got
        return got

    @property
    def has_int_ranges(self) -> bool:
        """Some exact input has a range of valid values (checked before any forward: an
        embedding would fail on an index outside its table, on CUDA fatally)."""
        return any(s.int_range is not None for s in self.slots)

    def check_values(self, xs: Sequence[torch.Tensor], what: str = "input",
                     exact_only: bool = False) -> None:
        """InputError unless every float input is finite and inside its box, and every exact
        input inside its valid range (where one was given). Runs before the model does.

        `exact_only`: only the exact inputs (the CUDA backend checks floats in its graph)."""
        for k, low, high, open_box, how in self._checks(xs[0].device if xs else self.device):
            t = xs[k]
            if exact_only and not self._exact[k]:
                continue
            if how == "int":
                if bool(((t < low) | (t > high)).any()):
                    bad = t[(t < low) | (t > high)]
                    raise InputError(f"{what} {self.slots[k].name!r} holds {int(bad[0])}, "
                                     f"outside its valid values [{low}, {high}] "
                                     f"({bad.numel()} element(s))", "out_of_range")
                continue
            if t.numel() and self._inside(t, low, high, open_box, how):
                continue
            self._raise_value_error(k, t, low.reshape((-1,) + (1,) * (t.dim() - 2))
                                    if how == "channel" else low,
                                    high.reshape((-1,) + (1,) * (t.dim() - 2))
                                    if how == "channel" else high, what)

    @staticmethod
    def _inside(t: torch.Tensor, low: torch.Tensor, high: torch.Tensor, open_box: bool,
                how: str) -> bool:
        """Every element in the box, NaN never; Inf only where the box is open (then refused).

        One min / max reduction (no copy of the input) for a scalar or per-channel box: NaN
        propagates through it and fails both compares; a full elementwise box clamps."""
        if how == "full":
            t = t if t.dtype == torch.float32 else t.float()
            ok = torch.equal(t.clamp(low, high), t)
            return ok and not (open_box and not bool(torch.isfinite(t).all()))
        if how == "scalar":
            mn, mx = torch.aminmax(t)
        else:  # per channel: dim 1 of the batch
            dims = (0, *range(2, t.dim()))
            mn, mx = t.amin(dims), t.amax(dims)
        ok = (mn >= low) & (mx <= high)
        if open_box:
            ok = ok & torch.isfinite(mx)
        return bool(ok.all())

    def _raise_value_error(self, k: int, t: torch.Tensor, low: torch.Tensor,
                           high: torch.Tensor, what: str) -> None:
        """The InputError for a float input that failed the box check: which, where, how."""
        name = self.slots[k].name
        tf = t.float()
        bad = ~torch.isfinite(tf)
        if bool(bad.any()):
            nan = int(torch.isnan(tf).sum())
            raise InputError(f"{what} {name!r} holds {nan} NaN and {int(bad.sum()) - nan} "
                             "infinite value(s): a sensor or preprocessing error, refused "
                             "before inference (never counted as a fault)", "nonfinite")
        lo, hi = low.expand_as(tf), high.expand_as(tf)
        outside = (tf < lo) | (tf > hi)
        i = int(outside.reshape(-1).nonzero()[0])
        raise InputError(
            f"{what} {name!r} lies outside its declared box: element {i} is "
            f"{float(tf.reshape(-1)[i]):.6g}, not in [{float(lo.reshape(-1)[i]):.6g}, "
            f"{float(hi.reshape(-1)[i]):.6g}] ({int(outside.sum())} element(s) outside); SAVE's "
            "analysis holds inside the box only: fix the input or protect with a wider box",
            "out_of_range")

    def batch(self, x: Any, what: str = "calibration") -> InputBatch:
        """A batch given in the inputs' structure as an InputBatch (any batch size)."""
        return InputBatch(self.normalize(x, what, cast=True))

    def to(self, x: Any, device: torch.device | str) -> Any:
        """`x` (in the inputs' structure) with every tensor on `device`."""
        if isinstance(x, (torch.Tensor, InputBatch)):
            return x.to(device)
        if isinstance(x, Mapping):
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(v.to(device) if isinstance(v, torch.Tensor) else v for v in x)
        return x

    def unflatten(self, xs: Sequence[torch.Tensor]) -> Any:
        """The positional tuple back in the user's structure (what `model(...)` was given)."""
        if self.structure == "tensor":
            return xs[0]
        if self.structure == "dict":
            return dict(zip(self.names, xs, strict=True))
        return tuple(xs)
