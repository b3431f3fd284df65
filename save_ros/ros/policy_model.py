"""A zoo policy of several inputs as the node serves it (ROS-free).

`zoo_policy_inputs(name, module)` gives what `model_source` builds the `LoadedModel` of a zoo
policy (`save_ros.models.zoo`) from: one `InputSpec` per input in the forward's order (shape
from the policy's example inputs, box from `zoo.input_boxes`), the input names, the shape of
its output (the action chunk), and a small seeded calibration batch per input. The node matches
one topic per input (`input_topics`, in the same order) and decodes each with that input's spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from save_ros.models.loader import ModelLoadError
from save_ros.preprocess import InputSpec

CALIBRATION_BATCH = 8  # seeded example inputs Selection analyses when none are given


def _spec(name: str, shape: tuple[int, ...], box) -> InputSpec:
    """An InputSpec from a zoo box: (low, high) of scalars or per-channel tuples."""
    if box is None:
        raise ModelLoadError(f"input {name!r} is an integer input; the node serves policies "
                             "whose inputs come from images and joint states (float inputs)")
    low, high = box
    channels = shape[0] if shape else 1
    low = tuple(low) if isinstance(low, tuple | list) else (float(low),) * channels
    high = tuple(high) if isinstance(high, tuple | list) else (float(high),) * channels
    if len(low) != channels or len(high) != channels:
        raise ModelLoadError(f"input {name!r}: the box has {len(low)} values for {channels} "
                             "channels")
    return InputSpec(shape=shape, low=tuple(map(float, low)), high=tuple(map(float, high)))


@dataclass(frozen=True)
class PolicyInputs:
    """What the node needs of a zoo policy's inputs and output."""

    names: tuple[str, ...]
    specs: tuple[InputSpec, ...]
    calibration: tuple[torch.Tensor, ...]  # a seeded batch per input
    output_shape: tuple[int, ...]  # one output without the batch dim, e.g. (16, 7)


def zoo_policy_inputs(name: str, module: nn.Module) -> PolicyInputs:
    """The inputs of zoo policy `name` (the loader built `module`) and its output shape."""
    from save_ros.models import zoo

    names = tuple(zoo.input_names(name))
    examples = zoo.example_inputs(name, batch=CALIBRATION_BATCH, seed=1)
    specs = tuple(_spec(n, tuple(x.shape[1:]), b)
                  for n, x, b in zip(names, examples, zoo.input_boxes(name), strict=True))
    with torch.no_grad():
        out = module(*(x[:1] for x in examples))
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(f"{name} returns a {type(out).__name__}; the node serves "
                             "policies that return one tensor (an action chunk)")
    return PolicyInputs(names, specs, tuple(examples), tuple(out.shape[1:]))
