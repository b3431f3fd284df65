"""Where the node's model comes from (ROS-free: plain Python, testable without rclpy).

`model` names one of:
- a bundled model (`digits_cnn`, ...): its weights, input box, task and calibration set; with
  `model_file`, a state dict loaded into that architecture;
- an import path `package.module:factory`: `factory()` returns an `nn.Module` (a class or a
  function); with `model_file`, a state dict loaded into it. `input_shape` is required;
- a torch.export program `path/to/model.pt2` (`torch.export.save`): its graph is an fx graph, so
  SAVE protects it; the input shape comes from the program.
A TorchScript `model_file` (torch.jit.save) is served only unprotected: SAVE needs the fx graph.

The input box comes from `input_low`/`input_high`, else the bundled model's, else `default_box`
(the node passes the box its image preprocessing produces); a vector input needs it given.
"""

from __future__ import annotations

import importlib
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from save_ros import models
from save_ros.core.box import InputBox
from save_ros.errors import UserError
from save_ros.preprocess import InputSpec, short_list


class ModelLoadError(UserError, RuntimeError):
    """The configured model cannot be loaded; the message says what to fix."""


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

    def to_dtype(self, dtype: torch.dtype) -> None:
        """Convert the model (and calibration) to `dtype` (the preprocess.dtype parameter)."""
        if dtype != self.dtype:
            self.module = self.module.to(dtype)
            if self.calibration is not None:
                self.calibration = self.calibration.to(dtype)
            self.dtype = dtype

    def input_box(self) -> InputBox:
        """The input box SAVE analyses and checks (`input_low`/`input_high`, or the model's)."""
        return self.input.box()

    def example_input(self) -> torch.Tensor:
        """One input in the box: a calibration sample, or the box's centre."""
        if self.calibration is not None and len(self.calibration):
            return self.calibration[:1].clone()
        low, high = self.input_box().expand((1, *self.input.shape))
        return ((low + high) / 2).to(self.dtype)


def is_import_path(model: str) -> bool:
    """`package.module:factory`."""
    module, _, attr = model.partition(":")
    return bool(module and attr) and all(p.isidentifier() for p in module.split(".")) \
        and attr.isidentifier()


def is_export_path(model: str) -> bool:
    """A torch.export program file."""
    return model.endswith(".pt2")


def describe_choices() -> str:
    """What `model` may be, for error messages."""
    return (f"a bundled model ({', '.join(models.available())}), an import path "
            "'package.module:factory', or a torch.export file 'path/model.pt2'")


def load(req: ModelRequest) -> LoadedModel:
    """Load the model `req` describes, on the CPU in eval mode (fp32)."""
    if is_export_path(req.model) or is_export_path(req.model_file):
        # errors name the parameter the user set (issue 19: `model:=x.pt2` said model_file)
        param = "model" if is_export_path(req.model) else "model_file"
        return _exported(req, Path(getattr(req, param)), param)
    if is_import_path(req.model):
        return _imported(req)
    if req.model_file:
        path = _existing(req.model_file)
        if _is_torchscript(path):
            return _torchscript(req, path)
        module = _build_bundled(req.model)
        _load_state(module, path, repr(req.model))
        return _bundled(req, module)
    return _bundled(req, None)


def _existing(file: str, param: str = "model_file") -> Path:
    """The file the parameter `param` names, or ModelLoadError naming that parameter."""
    path = Path(file).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"{param} {str(path)!r} is a directory; give the file itself")
    if not path.is_file():
        what = ("a torch.export .pt2 file, a bundled name or 'package.module:factory'"
                if param == "model" else "a state-dict, .pt2 or TorchScript file, or leave it "
                "empty")
        raise ModelLoadError(f"{param} {str(path)!r} does not exist; give the path of {what}")
    return path


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


def _bundled(req: ModelRequest, module: nn.Module | None) -> LoadedModel:
    """A bundled model (with its committed weights unless `module` is given)."""
    try:
        spec = models.get_spec(req.model)
        module = module if module is not None else models.load(req.model)
        calibration = models.dataset(req.model, "calib")[0]
    except models.UnknownModelError as exc:
        raise ModelLoadError(f"unknown model {req.model!r}; give {describe_choices()}") \
            from exc
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


def _build_bundled(name: str) -> nn.Module:
    try:
        return models.build(name)
    except models.UnknownModelError as exc:
        raise ModelLoadError(f"unknown model {name!r}; give {describe_choices()}") from exc
    except models.ModelError as exc:
        raise ModelLoadError(str(exc)) from exc


def _load_state(module: nn.Module, path: Path, what: str) -> None:
    """Load a state dict file into `module`; a mismatch lists the keys that differ."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises several unrelated types for a bad file
        # torch's own text runs to several lines about weights_only; one line says what to do
        raise ModelLoadError(f"{path} is neither TorchScript nor a state dict (torch.load: "
                             f"{type(exc).__name__}); write it with torch.save(model.state_dict(), "
                             "path), torch.export.save or torch.jit.save") from exc
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {short_list(missing, 120)}" if missing else "",
                 f"unexpected {short_list(unexpected, 120)}" if unexpected else "",
                 f"wrong shapes {short_list(shapes, 160)}" if shapes else ""]
        raise ModelLoadError(f"state dict {path} does not fit architecture {what}: "
                             + "; ".join(p for p in parts if p))
    module.load_state_dict(state)


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


def _imported(req: ModelRequest) -> LoadedModel:
    """`package.module:factory` (and a state dict from `model_file`)."""
    module_name, _, attr = req.model.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"cannot import {module_name!r} for model {req.model!r} "
                             f"({exc}); put its package on PYTHONPATH (or install it)") from exc
    except AttributeError as exc:
        raise ModelLoadError(f"module {module_name!r} has no {attr!r}") from exc
    except Exception as exc:  # the user's module failed at import: say where, in one line
        raise ModelLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not req.input_shape:
        raise ModelLoadError(f"{req.model} is a model from your module: set input_shape "
                             "(without the batch dimension, e.g. [3, 224, 224])")
    try:
        module = factory()
    except Exception as exc:
        raise ModelLoadError(f"{req.model}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{req.model}() returned a {type(module).__name__}, not a "
                             "torch.nn.Module")
    if req.model_file:
        _load_state(module, _existing(req.model_file), repr(req.model))
    module = module.float().eval()
    return LoadedModel(module=module, name=req.model, task=req.task or "classification",
                       input=_box(req, req.input_shape),
                       num_outputs=_probe(module, req.input_shape, req.model),
                       calibration=None, source="import")


def _exported(req: ModelRequest, path: Path, param: str = "model_file") -> LoadedModel:
    """A torch.export program: its module is an fx GraphModule that SAVE instruments."""
    path = _existing(str(path), param)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # a file of another kind, or another torch's format
        raise ModelLoadError(f"cannot load {path} as a torch.export program "
                             f"({type(exc).__name__}); write it with torch.export.save") from exc
    shapes = [tuple(n.meta["val"].shape) for n in program.graph.nodes
              if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
              and "val" in n.meta]
    if len(shapes) != 1:
        raise ModelLoadError(f"{path} takes {len(shapes)} inputs; the node serves programs "
                             "with one input tensor")
    shape = tuple(int(d) for d in shapes[0][1:])
    if req.input_shape and req.input_shape != shape:
        raise ModelLoadError(f"input_shape {list(req.input_shape)} differs from the program's "
                             f"{list(shape)} (exported with batch {shapes[0][0]}); leave it unset")
    module = program.module()
    # an exported module refuses eval()/train() (protect() calls eval()): its mode was fixed
    # when it was exported, so both are no-ops here
    module.eval = types.MethodType(lambda self: self, module)
    module.train = types.MethodType(lambda self, mode=True: self, module)
    return LoadedModel(module=module, name=path.name, task=req.task or "classification",
                       input=_box(req, shape), num_outputs=_probe(module, shape, str(path)),
                       calibration=None, source="export")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a `constants.pkl`/`code/` entry; a state dict does not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl"))
                       for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _torchscript(req: ModelRequest, path: Path) -> LoadedModel:
    """A TorchScript module (served unprotected); its shape must come from parameters."""
    if not req.input_shape:
        raise ModelLoadError(
            f"{path} is a TorchScript module, which carries no input constraints; set "
            "input_shape (and input_low, input_high, task)")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load TorchScript {path}: {exc}") from exc
    module = module.float().eval()
    return LoadedModel(module=module, name=path.stem, task=req.task or "classification",
                       input=_box(req, req.input_shape),
                       num_outputs=_probe(module, req.input_shape, str(path)),
                       calibration=None, source="torchscript",
                       why_unprotectable="TorchScript cannot be instrumented by SAVE (it needs "
                       "the fx graph): export the model with torch.export to a .pt2 file, or "
                       "give model: package.module:factory with a state dict")
