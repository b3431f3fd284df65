"""A policy of several inputs as the node serves it (ROS-free): a zoo policy or the user's own.

`zoo_policy_inputs(name, module)` gives what `model_source` builds the `LoadedModel` of a zoo
policy (`save_ros.models.zoo`) from: one `InputSpec` per input in the forward's order (shape
from the policy's example inputs, box from `zoo.input_boxes`), the input names, the shape of
its output (the action chunk), and a small seeded calibration batch per input.

`user_policy_inputs(model, module, requests, default_box)` does the same for a policy from the
user's own package (`package.module:factory`): the parameters give one `InputRequest` per topic
(`input_names`, `input_shapes`, `input_ranges`), bound to the forward's parameters by name
(or, without names, by position); the specs come back in the forward's order. A range is
`range_spec` text: `LOW,HIGH` (every element), `L1:H1,L2:H2,...` (one pair per channel, e.g.
per joint), `int:LOW,HIGH` (an integer input: exact, these inclusive valid values), `int` (any
integer), or empty for an image (the box its preprocessing produces).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from save_ros.core.input_forms import forward_params
from save_ros.models.loader import ModelLoadError
from save_ros.preprocess import InputSpec

CALIBRATION_BATCH = 8  # seeded example inputs Selection analyses when none are given
DefaultBox = Callable[[int], tuple[tuple[float, ...], tuple[float, ...]]]


@dataclass(frozen=True)
class InputRequest:
    """What the parameters say of one input topic of a user's policy."""

    name: str = ""  # the forward parameter it feeds; '': by position
    shape: tuple[int, ...] = ()
    range: str = ""  # see `range_spec`
    image: bool = False  # an image topic: an empty range is the preprocessing's box


def _spec(name: str, shape: tuple[int, ...], box, integer: bool = False) -> InputSpec:
    """An InputSpec from a zoo box: (low, high) of scalars or per-channel tuples; an integer
    input's box is its inclusive valid values, or None (any value)."""
    if integer or box is None:
        if box is None:
            return InputSpec(shape=shape, low=(), high=(), integer=True)
        return InputSpec(shape=shape, low=(float(int(box[0])),), high=(float(int(box[1])),),
                         integer=True)
    low, high = box
    channels = shape[0] if shape else 1
    low = tuple(low) if isinstance(low, tuple | list) else (float(low),) * channels
    high = tuple(high) if isinstance(high, tuple | list) else (float(high),) * channels
    if len(low) != channels or len(high) != channels:
        raise ModelLoadError(f"input {name!r}: the box has {len(low)} values for {channels} "
                             "channels")
    return InputSpec(shape=shape, low=tuple(map(float, low)), high=tuple(map(float, high)))


def _number(text: str, kind: type, name: str, whole: str):
    try:
        value = kind(text)
    except ValueError:
        raise ModelLoadError(f"input_ranges for {name!r}: {text!r} in {whole!r} is not "
                             f"{'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise ModelLoadError(f"input_ranges for {name!r}: {whole!r} is not finite; SAVE needs "
                             "a bounded box")
    return value


def range_spec(name: str, shape: tuple[int, ...], text: str,
               default_box: DefaultBox | None = None) -> InputSpec:
    """The InputSpec of one input from its `input_ranges` text (module docstring)."""
    text = text.strip()
    channels = shape[0] if shape else 1
    if not text:
        if default_box is None:
            raise ModelLoadError(
                f"input {name!r} needs a range in input_ranges: 'LOW,HIGH', one 'LOW:HIGH' per "
                f"channel ({channels} for shape {list(shape)}), or 'int:LOW,HIGH' for an "
                "integer input")
        low, high = default_box(channels)
        return _spec(name, shape, (tuple(low) * (channels if len(low) == 1 else 1),
                                   tuple(high) * (channels if len(high) == 1 else 1)))
    kind, sep, rest = text.partition(":")
    if kind.strip() == "int":
        if not sep or not rest.strip():
            return InputSpec(shape=shape, low=(), high=(), integer=True)
        parts = [p.strip() for p in rest.split(",")]
        if len(parts) != 2:
            raise ModelLoadError(f"input_ranges for {name!r}: {text!r}; an integer input takes "
                                 "'int:LOW,HIGH' (inclusive) or 'int' (any value)")
        lo, hi = (_number(p, int, name, text) for p in parts)
        if lo > hi:
            raise ModelLoadError(f"input_ranges for {name!r}: {text!r} has LOW > HIGH")
        return InputSpec(shape=shape, low=(float(lo),), high=(float(hi),), integer=True)
    parts = [p.strip() for p in text.split(",")]
    if ":" in text:  # per channel
        pairs = [p.split(":") for p in parts]
        if any(len(p) != 2 for p in pairs) or len(pairs) != channels:
            raise ModelLoadError(
                f"input_ranges for {name!r}: {text!r} gives {len(pairs)} LOW:HIGH pairs; give "
                f"one per channel ({channels} for shape {list(shape)}) or one LOW,HIGH for all")
        low = tuple(_number(lo, float, name, text) for lo, _ in pairs)
        high = tuple(_number(hi, float, name, text) for _, hi in pairs)
    elif len(parts) == 2:
        low = (_number(parts[0], float, name, text),) * channels
        high = (_number(parts[1], float, name, text),) * channels
    else:
        raise ModelLoadError(f"input_ranges for {name!r}: {text!r}; give 'LOW,HIGH', one "
                             "'LOW:HIGH' per channel, or 'int:LOW,HIGH'")
    if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
        raise ModelLoadError(f"input_ranges for {name!r}: {text!r} has LOW >= HIGH")
    return InputSpec(shape=shape, low=low, high=high)


@dataclass(frozen=True)
class PolicyInputs:
    """What the node needs of a policy's inputs and output."""

    names: tuple[str, ...]
    specs: tuple[InputSpec, ...]
    calibration: tuple[torch.Tensor, ...] | None  # a seeded batch per input (zoo)
    output_shape: tuple[int, ...]  # one output without the batch dim, e.g. (16, 7)


def zoo_policy_inputs(name: str, module: nn.Module) -> PolicyInputs:
    """The inputs of zoo policy `name` (the loader built `module`) and its output shape."""
    from save_ros.models import zoo

    names = tuple(zoo.input_names(name))
    examples = zoo.example_inputs(name, batch=CALIBRATION_BATCH, seed=1)
    specs = tuple(_spec(n, tuple(x.shape[1:]), b, not x.is_floating_point())
                  for n, x, b in zip(names, examples, zoo.input_boxes(name), strict=True))
    out = _output(name, module, tuple(x[:1] for x in examples))
    return PolicyInputs(names, specs, tuple(examples), out)


def bind(module: nn.Module, given: Sequence[str], count: int, what: str) -> tuple[str, ...]:
    """The forward parameter each of `count` topics feeds (names `given`, else by position).

    The topics must feed forward's first `count` positional parameters (any later one needs a
    default); ModelLoadError says which are missing, unknown or given twice."""
    params = forward_params(module)
    if params is None:
        if any(given):
            raise ModelLoadError(f"{what}.forward takes *args: it has no input names; leave "
                                 "input_names unset (topics feed it in order)")
        return tuple(f"input{k}" for k in range(count))
    names = [p.name for p in params]
    required = [p.name for p in params if p.default is p.empty]
    if count > len(names) or count < len(required):
        raise ModelLoadError(f"{count} input topics, but {what}.forward takes {len(names)} "
                             f"inputs ({', '.join(names)}; {len(required)} without a default): "
                             "give one topic per input")
    if not any(given):
        return tuple(names[:count])
    if len(given) != count or not all(given):
        raise ModelLoadError(f"input_names has {len(given)} names for {count} input topics; "
                             "name the forward parameter of every topic, or none")
    unknown = [g for g in given if g not in names]
    if unknown:
        raise ModelLoadError(f"input_names {unknown} name no parameter of {what}.forward "
                             f"({', '.join(names)})")
    twice = sorted({g for g in given if list(given).count(g) > 1})
    if twice:
        raise ModelLoadError(f"input_names gives {twice} to more than one topic; each input "
                             "is fed by one topic")
    if set(given) != set(names[:count]):
        missing = [n for n in names[:count] if n not in given]
        raise ModelLoadError(f"input_names must feed {what}.forward's first {count} inputs "
                             f"({', '.join(names[:count])}); {missing} has no topic (a later "
                             "input may be left out only if it has a default)")
    return tuple(given)


def user_policy_inputs(model: str, module: nn.Module, requests: Sequence[InputRequest],
                       default_box: DefaultBox | None) -> PolicyInputs:
    """The inputs of a user's policy from the parameters (module docstring), forward order."""
    bound = bind(module, [r.name for r in requests], len(requests), model)  # per topic
    params = forward_params(module)
    names = tuple(p.name for p in params if p.name in bound) if params is not None else bound
    specs = []
    for name in names:
        req = requests[bound.index(name)]
        if not req.shape:
            raise ModelLoadError(f"input {name!r} needs its shape in input_shapes (without the "
                                 "batch dimension, e.g. '3,96,96' or '7')")
        specs.append(range_spec(name, req.shape, req.range,
                                default_box if req.image else None))
    example = tuple(example_of(s) for s in specs)
    return PolicyInputs(names, tuple(specs), None, _output(model, module, example))


def example_of(spec: InputSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One input inside the spec: the box's centre (an integer input: its range's low end)."""
    if spec.integer:
        return torch.full((1, *spec.shape), int(spec.low[0]) if spec.low else 0,
                          dtype=torch.int64)
    low, high = spec.box().expand((1, *spec.shape))
    return ((low + high) / 2).to(dtype)


def _output(name: str, module: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    """The output shape (no batch dim) of one run on `example`; ModelLoadError if it fails."""
    with torch.no_grad():
        try:
            out = module(*example)
        except Exception as exc:  # a user's model raises whatever its code raises
            shapes = ", ".join(str(tuple(x.shape)) for x in example)
            raise ModelLoadError(f"{name} fails on inputs of shapes {shapes}: "
                                 f"{type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}; check "
                                 "input_shapes and input_names") from exc
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(f"{name} returns a {type(out).__name__}; the node serves "
                             "policies that return one tensor (an action chunk)")
    return tuple(out.shape[1:])
