"""One loader for every model a user names: the node, the campaigns and the failover workers.

`load(model, model_file)` takes, in this order:
- a torch.export program `path/model.pt2` (as `model` or as `model_file`): its module is an fx
  GraphModule that SAVE protects; its input shapes come from the program;
- an import path `package.module:factory` (`is_import_path`): `factory()` (a class or a
  function; `args` passed on) returns an `nn.Module`; a `model_file` is a state dict for it;
- with a TorchScript `model_file` (torch.jit.save): that module, served unprotected (SAVE needs
  the fx graph);
- a bundled or zoo model name (`save_ros.models`): its committed weights (zoo: the seeded,
  calibrated init), or the state dict in `model_file` loaded into its architecture;
- a zoo policy name (`save_ros.models.zoo.available_policies()`): its seeded init, or the
  state dict in `model_file`.

Every failure is a `ModelLoadError` whose one-line message says what to fix. No ROS, no
evaluation code: `save_ros.ros.model_source`, `save_ros.eval.model_cli` and
`save_ros.failover.weights` all load through here.
"""

from __future__ import annotations

import enum
import functools
import importlib
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from save_ros import models
from save_ros.models import ModelError


class ModelLoadError(ModelError, RuntimeError):
    """A model that cannot be loaded; the message says what to fix."""


class Source(str, enum.Enum):
    """Where a loaded module came from."""

    BUNDLED = "bundled"  # a registry name: bundled or zoo perception model
    ZOO_POLICY = "zoo_policy"
    IMPORT = "import"
    EXPORT = "export"
    TORCHSCRIPT = "torchscript"


@dataclass
class Loaded:
    """A loaded module, where it came from, and what the source itself says of its inputs."""

    module: nn.Module
    name: str
    source: Source
    input_shapes: tuple[tuple[int, ...], ...] | None = None  # no batch dim (export only)
    why_unprotectable: str = ""  # set for TorchScript


def _dotted(text: str) -> bool:
    return bool(text) and all(p.isidentifier() for p in text.split("."))


def is_import_path(model: str) -> bool:
    """True for `package.module:factory` (dotted identifiers, one colon; the factory may be
    `Class.method`). Names, file paths (`a/b.py:f`, `C:\\m.pt2`) and `.pt2` files are not."""
    module, sep, attr = model.partition(":")
    return bool(sep) and _dotted(module) and _dotted(attr)


def is_export_path(model: str) -> bool:
    """A torch.export program file (`.pt2`)."""
    return model.endswith(".pt2")


def choices() -> str:
    """What a model may be, for error messages."""
    from save_ros.models import zoo

    return (f"a bundled model ({', '.join(models.available())}), a zoo model "
            f"({', '.join(zoo.available() + zoo.available_policies())}), an import path "
            "'package.module:factory', or a torch.export file 'path/model.pt2'")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_factory(path: str, args: tuple[Any, ...] = (), label: str = "") -> nn.Module:
    """Import `package.module:factory`, call it with `args`, check it returns an nn.Module.

    The module comes back as the factory made it (mode and dtype untouched). `label` starts
    every message (e.g. `--model my.nets:make`); default: the path.
    """
    label = label or path
    if not is_import_path(path):
        raise ModelLoadError(f"{label}: expected an import path package.module:factory "
                             "(dotted Python names, one colon)")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"{label}: cannot import {module_name!r} ({exc}); is it installed "
                             "or on PYTHONPATH?") from exc
    except Exception as exc:  # the user's module fails while importing: say how, in one line
        raise ModelLoadError(f"{label}: importing {module_name!r} raised "
                             f"{_first_line(exc)}") from exc
    try:
        factory = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ModelLoadError(f"{label}: module {module_name!r} has no attribute "
                             f"{attr!r}") from None
    if not callable(factory):
        raise ModelLoadError(f"{label}: {attr!r} is a {type(factory).__name__}, not a callable "
                             "that returns the model")
    try:
        model = factory(*args)
    except Exception as exc:  # a user's factory raises whatever its code raises
        raise ModelLoadError(f"{label}: calling {attr}() raised {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{label}: {attr}() returned {type(model).__name__}, not a "
                             "torch.nn.Module")
    return model


def existing_file(file: str | Path, what: str = "model_file") -> Path:
    """The path of a file that exists (a directory or a missing file is a ModelLoadError)."""
    path = Path(file).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"{what} {str(path)!r} is a directory; give the file itself")
    if not path.is_file():
        kinds = ("a torch.export .pt2 file, a bundled name or 'package.module:factory'"
                 if what == "model" else "a state-dict, .pt2 or TorchScript file, or leave "
                 "it empty")
        raise ModelLoadError(f"{what} {str(path)!r} does not exist; give the path of {kinds}")
    return path


def _short(items: list[str], limit: int) -> str:
    text = ", ".join(items)
    return f"[{text if len(text) <= limit else text[:limit] + ' ...'}]"


def load_state_dict(module: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Load a state-dict file into `module` (strict); a mismatch lists the keys that differ."""
    path = existing_file(path)
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
        parts = [f"missing {_short(missing, 120)}" if missing else "",
                 f"unexpected {_short(unexpected, 120)}" if unexpected else "",
                 f"wrong shapes {_short(shapes, 160)}" if shapes else ""]
        raise ModelLoadError(f"state dict {path} does not fit architecture {what}: "
                             + "; ".join(p for p in parts if p))
    module.load_state_dict(state)
    return module


def is_torchscript(path: str | Path) -> bool:
    """TorchScript archives hold a `constants.pkl`/`code/` entry; a state dict does not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl"))
                       for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torchscript(path: str | Path) -> nn.Module:
    """A TorchScript module on the CPU, eval mode."""
    path = existing_file(path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load TorchScript {path}: {_first_line(exc)}") from exc


def load_export(path: str | Path) -> tuple[nn.Module, tuple[tuple[int, ...], ...]]:
    """A torch.export program's module and its user inputs' shapes (without the batch dim)."""
    path = existing_file(path)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # a file of another kind, or another torch's format
        raise ModelLoadError(f"cannot load {path} as a torch.export program "
                             f"({type(exc).__name__}); write it with torch.export.save") from exc
    shapes = tuple(tuple(int(d) for d in n.meta["val"].shape[1:]) for n in program.graph.nodes
                   if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
                   and "val" in n.meta)
    module = program.module()
    # an exported module refuses eval()/train() (protect() calls eval()): its mode was fixed
    # when it was exported, so both are no-ops here
    module.eval = types.MethodType(lambda self: self, module)
    module.train = types.MethodType(lambda self, mode=True: self, module)
    return module, shapes


TORCHSCRIPT_WHY = ("TorchScript cannot be instrumented by SAVE (it needs the fx graph): export "
                   "the model with torch.export to a .pt2 file, or give model: "
                   "package.module:factory with a state dict")


def load(model: str, model_file: str | Path = "", args: tuple[Any, ...] = ()) -> Loaded:
    """The module `model` (and `model_file`) name, on the CPU (see the module docstring).

    Bundled, zoo and import-path modules come in eval mode and fp32; a TorchScript module in
    eval mode; an exported one as exported.
    """
    file = str(model_file) if model_file else ""
    if is_export_path(model) or is_export_path(file):
        # errors name the parameter the user set (`model:=x.pt2` is not `model_file`)
        path = existing_file(model, "model") if is_export_path(model) else existing_file(file)
        module, shapes = load_export(path)
        return Loaded(module, path.name, Source.EXPORT, shapes)
    if is_import_path(model):
        module = load_factory(model, args)
        if file:
            load_state_dict(module, file, repr(model))
        return Loaded(module.float().eval(), model, Source.IMPORT)
    if ":" in model:  # meant as an import path, but not one: say so, not "unknown model"
        raise ModelLoadError(f"{model!r} is not an import path: write package.module:factory "
                             "with dotted Python names (no '/', '-' or file suffix)")
    if file and is_torchscript(existing_file(file)):
        path = existing_file(file)
        return Loaded(load_torchscript(path), path.stem, Source.TORCHSCRIPT,
                      why_unprotectable=TORCHSCRIPT_WHY)
    from save_ros.models import zoo

    if model in zoo.available_policies():
        module = zoo.build_policy(model)
        if file:
            load_state_dict(module, file, repr(model))
        return Loaded(module.float().eval(), model, Source.ZOO_POLICY)
    try:
        if file:
            module = load_state_dict(models.build(model), file, repr(model))
        else:
            module = models.load(model)
    except models.UnknownModelError as exc:
        raise ModelLoadError(f"unknown model {model!r}; give {choices()}") from exc
    except ModelLoadError:
        raise
    except ModelError as exc:  # missing committed weights: the message says how to recreate
        raise ModelLoadError(str(exc)) from exc
    return Loaded(module.float().eval(), model, Source.BUNDLED)


def load_module(model: str, model_file: str = "") -> nn.Module:
    """`load(model, model_file).module`: a factory a failover worker can call by import path."""
    return load(model, model_file).module


__all__ = ["Loaded", "ModelLoadError", "Source", "choices", "existing_file", "is_export_path",
           "is_import_path", "is_torchscript", "load", "load_export", "load_factory",
           "load_module", "load_state_dict", "load_torchscript"]
