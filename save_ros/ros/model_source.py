"""Where the node's model comes from (ROS-free: plain Python, testable without rclpy).

`model` names one of:
- a bundled model (`digits_cnn`, ...): its weights, input box, task and calibration set; with
  `model_file`, a state dict loaded into that architecture;
- an import path `package.module:factory`: `factory()` returns an `nn.Module` (a class or a
  function); with `model_file`, a state dict loaded into it. `input_shape` is required; a
  policy of several inputs gives one `policy_model.InputRequest` per topic instead (`inputs`);
- a torch.export program `path/to/model.pt2` (`torch.export.save`): its graph is an fx graph, so
  SAVE protects it; the input shape comes from the program.
A TorchScript `model_file` (torch.jit.save) is served only unprotected: SAVE needs the fx graph.
The module itself comes from `save_ros.models.loader` (the one loader, one error class and one
import-path rule of the node, the campaigns and the failover workers); this module adds what the
node needs around it: the input shape and box, the task, the calibration set.

The input box comes from `input_low`/`input_high`, else the bundled model's, else `default_box`
(the node passes the box its image preprocessing produces); a vector input needs it given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from save_ros import models
from save_ros.core.box import InputBox
from save_ros.core.input_forms import forward_params
from save_ros.models import loader
from save_ros.models.loader import (  # noqa: F401 (is_export_path: part of this module's API)
    Loaded,
    ModelLoadError,
    Source,
    is_export_path,
    is_import_path,
)
from save_ros.preprocess import InputSpec
from save_ros.ros import policy_model


@dataclass(frozen=True)
class ModelRequest:
    """What the parameters ask for (the `model*`, `task`, `input_*` parameters)."""

    model: str
    model_file: str = ""
    task: str = ""
    input_shape: tuple[int, ...] = ()
    input_low: tuple[float, ...] = ()
    input_high: tuple[float, ...] = ()
    # channels -> (low, high): the box image preprocessing produces (None for vector inputs)
    default_box: Callable[[int], tuple[tuple[float, ...], tuple[float, ...]]] | None = None
    # a policy of several inputs: one per input topic (names, shapes, ranges), topic order
    inputs: tuple[policy_model.InputRequest, ...] = ()


@dataclass
class LoadedModel:
    """A model ready to protect: the module, its input box, task, output count, calibration."""

    module: nn.Module
    name: str
    task: str
    input: InputSpec
    num_outputs: int
    calibration: torch.Tensor | None
    source: str = "bundled"  # bundled | import | export | torchscript
    why_unprotectable: str = ""  # set for a TorchScript module
    dtype: torch.dtype = torch.float32
    # a policy of several inputs (`input` is then the first): one spec and name per input,
    # in the forward's order; the calibration is then a tuple, a batch per input
    inputs: tuple[InputSpec, ...] = ()
    input_names: tuple[str, ...] = ()
    output_shape: tuple[int, ...] = ()  # one output without the batch dim, e.g. (16, 7)

    @property
    def multi(self) -> bool:
        """True for a policy of several inputs (its inputs, boxes and examples are tuples)."""
        return len(self.inputs) > 1

    def to_dtype(self, dtype: torch.dtype) -> None:
        """Convert the model (and calibration) to `dtype` (the preprocess.dtype parameter)."""
        if dtype != self.dtype:
            self.module = self.module.to(dtype)
            if self.calibration is not None:
                self.calibration = to_device(self.calibration, dtype=dtype)
            self.dtype = dtype

    def input_box(self):
        """The input box SAVE analyses and checks (`input_low`/`input_high`, or the model's);
        a tuple for a policy of several inputs (an integer input's entry: its valid values)."""
        if self.multi:
            return tuple(spec.protect_range() for spec in self.inputs)
        return self.input.box()

    def example_input(self):
        """One input in the box: a calibration sample, or the box's centre (a tuple for a
        policy of several inputs)."""
        if self.calibration is not None:
            if self.multi:
                return tuple(c[:1].clone() for c in self.calibration)
            if len(self.calibration):
                return self.calibration[:1].clone()
        specs = self.inputs if self.multi else (self.input,)
        centres = [policy_model.example_of(spec, self.dtype) for spec in specs]
        return tuple(centres) if self.multi else centres[0]


def to_device(value, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """A tensor, InputBox, or a tuple of them, moved to `device` / converted to float `dtype`."""
    if isinstance(value, InputBox):  # a NamedTuple: before the tuple case
        return value.to(device) if device is not None else value
    if isinstance(value, tuple | list):
        return tuple(to_device(v, device, dtype) for v in value)
    if not isinstance(value, torch.Tensor):  # an integer input's valid values, or None
        return value
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.to(device) if device is not None else value


def describe_choices() -> str:
    """What `model` may be, for error messages."""
    return loader.choices()


def load(req: ModelRequest) -> LoadedModel:
    """Load the model `req` describes (through `save_ros.models.loader`), on the CPU, eval."""
    if is_import_path(req.model) and not req.input_shape and not req.inputs:
        raise ModelLoadError(f"{req.model} is a model from your module: set input_shape "
                             "(without the batch dimension, e.g. [3, 224, 224])")
    loaded = loader.load(req.model, req.model_file)
    if loaded.source is Source.EXPORT:
        return _exported(req, loaded)
    if loaded.source is Source.IMPORT:
        return _imported_policy(req, loaded.module) if req.inputs else _imported(req,
                                                                                  loaded.module)
    if loaded.source is Source.TORCHSCRIPT:
        return _torchscript(req, loaded)
    if loaded.source is Source.ZOO_POLICY:
        return _zoo_policy(req, loaded.module)
    return _bundled(req, loaded.module)


def _zoo_policy(req: ModelRequest, module: nn.Module) -> LoadedModel:
    """A zoo policy of several inputs: a spec and a calibration batch per input, task control."""
    if req.input_shape or req.input_low or any(r.shape or r.range for r in req.inputs):
        raise ModelLoadError(f"zoo policy {req.model!r} declares its inputs; leave "
                             "input_shape(s), input_low, input_high and input_ranges unset")
    p = policy_model.zoo_policy_inputs(req.model, module)
    return LoadedModel(module=module, name=req.model, task=req.task or "control",
                       input=p.specs[0], num_outputs=math.prod(p.output_shape),
                       calibration=p.calibration, source="zoo_policy", inputs=p.specs,
                       input_names=p.names, output_shape=p.output_shape)


def _imported_policy(req: ModelRequest, module: nn.Module) -> LoadedModel:
    """`package.module:factory` of several inputs: specs from the per-topic requests."""
    if req.input_shape or req.input_low:
        raise ModelLoadError(f"{req.model} is served on {len(req.inputs)} input topics: give "
                             "input_shapes and input_ranges (one per topic) instead of "
                             "input_shape, input_low and input_high")
    p = policy_model.user_policy_inputs(req.model, module, req.inputs, req.default_box)
    return LoadedModel(module=module.eval(), name=req.model, task=req.task or "control",
                       input=p.specs[0], num_outputs=math.prod(p.output_shape),
                       calibration=None, source="import", inputs=p.specs,
                       input_names=p.names, output_shape=p.output_shape)


def _box(req: ModelRequest, shape: tuple[int, ...], low: tuple[float, ...] = (),
         high: tuple[float, ...] = ()) -> InputSpec:
    """The input box from parameters, else the model's own, else the preprocessing's."""
    if req.input_low:
        low, high = req.input_low, req.input_high
    elif not low and req.default_box is not None:
        low, high = req.default_box(shape[0] if len(shape) == 3 else 1)
    if not low:
        raise ModelLoadError(
            f"{req.model} has no declared input box; set input_low and input_high (one value, "
            "or one per input channel: a robot's joint limits, an image's value range)")
    channels = shape[0] if shape else 1
    if len(low) == 1 and channels > 1:
        low, high = tuple(low) * channels, tuple(high) * channels
    if len(low) != channels:
        raise ModelLoadError(
            f"input_low/input_high have {len(low)} values; give 1 or one per input channel "
            f"({channels} for input shape {shape})")
    return InputSpec(shape=shape, low=tuple(low), high=tuple(high))


def _bundled(req: ModelRequest, module: nn.Module) -> LoadedModel:
    """A bundled or zoo model the loader built, with its spec's box and calibration set."""
    spec = models.get_spec(req.model)
    try:
        calibration = models.dataset(req.model, "calib")[0]
    except models.ModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    shape = req.input_shape or tuple(spec.input_shape)
    if shape != tuple(spec.input_shape):
        raise ModelLoadError(f"input_shape {list(shape)} differs from {req.model}'s "
                             f"{list(spec.input_shape)}; leave input_shape unset")
    return LoadedModel(module=module.float().eval(), name=req.model,
                       task=req.task or spec.task.value,
                       input=_box(req, shape, spec.input_low, spec.input_high),
                       num_outputs=spec.num_outputs, calibration=calibration)


def _probe(module: nn.Module, shape: tuple[int, ...], what: str) -> int:
    """Run one zero input through the model; the number of outputs."""
    with torch.no_grad():
        try:
            out = module(torch.zeros(1, *shape))
        except Exception as exc:  # a user's model raises whatever its code raises
            raise ModelLoadError(f"{what} fails on an input of shape (1, "
                                 f"{', '.join(map(str, shape))}): {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}; check "
                                 "input_shape") from exc
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(f"{what} returns a {type(out).__name__}; the node serves models "
                             "that return one tensor (wrap it to pick the output)")
    return int(out.reshape(1, -1).shape[1])


def _imported(req: ModelRequest, module: nn.Module) -> LoadedModel:
    """`package.module:factory` (with its state dict already loaded)."""
    required = [q.name for q in forward_params(module) or [] if q.default is q.empty]
    if len(required) > 1:
        raise ModelLoadError(f"{req.model}.forward takes {len(required)} inputs "
                             f"({', '.join(required)}): serve it on input_topics, with "
                             "input_types, input_shapes and input_ranges (one per input)")
    return LoadedModel(module=module, name=req.model, task=req.task or "classification",
                       input=_box(req, req.input_shape),
                       num_outputs=_probe(module, req.input_shape, req.model),
                       calibration=None, source="import")


def _exported(req: ModelRequest, loaded: Loaded) -> LoadedModel:
    """A torch.export program: its module is an fx GraphModule that SAVE instruments."""
    shapes = loaded.input_shapes or ()
    if len(shapes) != 1:
        raise ModelLoadError(f"{loaded.name} takes {len(shapes)} inputs; the node serves "
                             "programs with one input tensor (a policy of several inputs: "
                             "serve it from its import path, on input_topics)")
    shape = shapes[0]
    if req.input_shape and req.input_shape != shape:
        raise ModelLoadError(f"input_shape {list(req.input_shape)} differs from the program's "
                             f"{list(shape)} (without the batch dimension); leave it unset")
    return LoadedModel(module=loaded.module, name=loaded.name, task=req.task or "classification",
                       input=_box(req, shape), num_outputs=_probe(loaded.module, shape,
                                                                  loaded.name),
                       calibration=None, source="export")


def _torchscript(req: ModelRequest, loaded: Loaded) -> LoadedModel:
    """A TorchScript module (served unprotected); its shape must come from parameters."""
    if not req.input_shape:
        raise ModelLoadError(
            f"{req.model_file} is a TorchScript module, which carries no input constraints; set "
            "input_shape (and input_low, input_high, task)")
    return LoadedModel(module=loaded.module.float().eval(), name=loaded.name,
                       task=req.task or "classification", input=_box(req, req.input_shape),
                       num_outputs=_probe(loaded.module, req.input_shape, loaded.name),
                       calibration=None, source="torchscript",
                       why_unprotectable=loaded.why_unprotectable)
