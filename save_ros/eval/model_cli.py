"""The `--model` option of the evaluation CLIs: a registry name, an import path, a `.pt2` file.

`save-ros campaign | pvf | analyze --model NAME` takes a bundled or zoo model
(`save_ros.models`), or a user's model by import path, `my_pkg.nets:make_net`, whose factory
(called once, with no arguments) returns an `nn.Module`, or a torch.export program
`path/model.pt2` (its input shape comes from the program). Models load through
`save_ros.models.loader` (its import-path rule, its `ModelLoadError`). Such a model brings no
input constraints, so the command needs them:

    --input-shape 3,224,224      one input, without the batch dimension
    --input-range 0,1            every input element lies in [low, high]
    --task classification        top-1 decisions (default), or `regression`: continuous outputs,
                                 a sample changed when an output leaves
                                 --tolerance RTOL,ATOL (default 1e-3,1e-5) around the clean one
    --inputs FILE.pt             optional: a tensor (N, *shape) of real inputs

Inputs: without `--inputs`, calibration (64) and test inputs are drawn uniformly in the box from
a fixed seed (`DATA_SEED`); with it, the even-numbered samples are the test inputs and the odd
ones the calibration inputs (one sample serves as both), and the shape and range default to the
tensor's. Labels of a classifier are its own clean top-1 (there is no ground truth), so accuracy
under faults is the share of unchanged decisions. The factory's model is built once and copied
for every method, so all methods start from the same weights.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from save_ros.eval.campaign import EvalSetup, registry_setup, strided
from save_ros.models import loader
from save_ros.models.loader import ModelLoadError, is_export_path, is_import_path

DATA_SEED = 0
CALIB_INPUTS = 64
TASKS = ("classification", "regression")
DEFAULT_TOLERANCE = (1e-3, 1e-5)


def _numbers(kind: type, count: int | None, what: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not values or (count is not None and len(values) != count):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values
    return parse


def add_arguments(parser: argparse.ArgumentParser, default: str = "digits_cnn") -> None:
    """--model and the input options a model given by import path needs."""
    parser.add_argument("--model", default=default,
                        help="bundled or zoo model name (save_ros.models), an import path "
                             "package.module:factory of your own model, or a torch.export "
                             "file path/model.pt2")
    parser.add_argument("--input-shape", type=_numbers(int, None, "sizes like 3,224,224"),
                        default=None, help="import-path model: one input's shape, no batch dim")
    parser.add_argument("--input-range", type=_numbers(float, 2, "LOW,HIGH like 0,1"),
                        default=None, help="import-path model: every input element's range")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="import-path model: classification (default) or regression")
    parser.add_argument("--tolerance", type=_numbers(float, 2, "RTOL,ATOL like 1e-3,1e-5"),
                        default=None, help="regression: outputs within atol + rtol*|clean| "
                                           f"are unchanged (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--inputs", type=Path, default=None,
                        help="import-path model: a torch.save'd tensor (N, *shape) of inputs")


def is_user_model(model: str) -> bool:
    """True for a model of the user's: an import path or a torch.export `.pt2` file."""
    return is_import_path(model) or is_export_path(model)


def load_user_model(path: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The user's model (fp32, eval) and, for a `.pt2` program, its one input's shape."""
    if is_export_path(path):
        loaded = loader.load(path)
        shapes = loaded.input_shapes or ()
        if len(shapes) != 1:
            raise ModelLoadError(f"--model {path} takes {len(shapes)} inputs; campaigns take "
                                 "programs with one input tensor")
        return loaded.module, shapes[0]
    return loader.load_factory(path, label=f"--model {path}").float().eval(), None


def _inputs(args: argparse.Namespace, path: str, batch: int,
            own_shape: tuple[int, ...] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], tuple[float, float], dict]:
    """(test x, calibration x, shape, (low, high), how they were made)."""
    shape = tuple(args.input_shape) if args.input_shape else own_shape
    box = tuple(args.input_range) if args.input_range else None
    if args.inputs is not None:
        try:
            data = torch.load(args.inputs, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"--inputs {args.inputs}: cannot load a tensor ({exc})") from None
        if not isinstance(data, torch.Tensor) or data.dim() < 2 or not data.is_floating_point():
            raise ModelLoadError(f"--inputs {args.inputs}: expected a float tensor (N, *shape), "
                                f"got {type(data).__name__}")
        data = data.float()
        if shape is not None and tuple(data.shape[1:]) != shape:
            raise ModelLoadError(f"--inputs {args.inputs} holds inputs of shape "
                                f"{tuple(data.shape[1:])}, not --input-shape {shape}")
        shape = tuple(data.shape[1:])
        box = box or (float(data.min()), float(data.max()))
        test, calib = (data[0::2], data[1::2]) if len(data) > 1 else (data, data)
        idx = torch.arange(len(test))
        test = strided(test, idx, batch)[0]
        return test, calib, shape, box, {"inputs": str(args.inputs), "n": len(test),
                                         "of": len(data), "calib": len(calib)}
    missing = [o for o, v in (("--input-shape", shape), ("--input-range", box)) if v is None]
    if missing:
        raise ModelLoadError(f"--model {path} is a model of your own, so it needs "
                            f"{' and '.join(missing)} (or --inputs FILE.pt)")
    lo, hi = box
    if not lo < hi:
        raise ModelLoadError(f"--input-range {lo},{hi}: LOW must be below HIGH")
    gen = torch.Generator().manual_seed(DATA_SEED)
    test = lo + (hi - lo) * torch.rand(batch, *shape, generator=gen)
    calib = lo + (hi - lo) * torch.rand(CALIB_INPUTS, *shape, generator=gen)
    return test, calib, shape, box, {"uniform_box": [lo, hi], "seed": DATA_SEED, "n": batch,
                                     "calib": CALIB_INPUTS}


def foreign_setup(args: argparse.Namespace, batch: int) -> EvalSetup:
    """An EvalSetup for a model given by import path (module docstring)."""
    from save_ros.models import ModelSpec, Task

    path = args.model
    model, own_shape = load_user_model(path)
    if own_shape is not None and args.input_shape and tuple(args.input_shape) != own_shape:
        raise ModelLoadError(f"--input-shape {tuple(args.input_shape)} differs from the "
                             f"program's {own_shape}; leave it unset")
    test, calib, shape, (lo, hi), data = _inputs(args, path, batch, own_shape)
    try:
        with torch.no_grad():
            clean = model(test)
            clean_calib = model(calib)
    except Exception as exc:  # the user's forward, on inputs of the shape we were told
        hint = ("; export it with a dynamic batch dimension (dynamic_shapes={0: "
                "torch.export.Dim('batch')}): campaigns run batches of several sizes"
                if is_export_path(path) else "")
        raise ModelLoadError(f"--model {path} fails on inputs of shape (N, "
                             f"{', '.join(map(str, shape))}): {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from None
    if not isinstance(clean, torch.Tensor) or clean.dim() < 1 or len(clean) != len(test):
        raise ModelLoadError(f"--model {path}: forward must return one tensor with the batch "
                            f"first, got {type(clean).__name__}")
    task = args.task or "classification"
    if task == "classification" and clean.dim() != 2:
        raise ModelLoadError(f"--model {path}: a classifier returns (N, classes) logits, got "
                            f"shape {tuple(clean.shape)}; use --task regression")
    channels = shape[0] if shape else 1
    spec = ModelSpec(name=path, task=Task(task), input_shape=shape,
                     num_outputs=int(clean[0].numel()), input_low=(lo,) * channels,
                     input_high=(hi,) * channels, weights_path=None,
                     description=f"{path} (the user's model)",
                     build=lambda: copy.deepcopy(model), loader=lambda: copy.deepcopy(model))
    classification = task == "classification"
    tolerance = None if classification else tuple(args.tolerance or DEFAULT_TOLERANCE)
    return EvalSetup(
        name=path, build=lambda: copy.deepcopy(model), x=test,
        y=clean.argmax(1) if classification else None, task=task, spec=spec,
        calib=(calib, clean_calib.argmax(1) if classification else clean_calib),
        tolerance=tolerance, data={**data, "labels": "the model's own clean top-1"
                                   if classification else None, "tolerance": tolerance})


def setup_from_args(args: argparse.Namespace, batch: int, episodes: int = 0) -> EvalSetup:
    """The EvalSetup of `--model`: registry name or import path (refusing stray options)."""
    if is_user_model(args.model):
        return foreign_setup(args, batch)
    if ":" in args.model:  # meant as an import path, but not one
        loader.load_factory(args.model, label=f"--model {args.model}")
    given = [o for o in ("input_shape", "input_range", "task", "tolerance", "inputs")
             if getattr(args, o, None) is not None]
    if given:
        raise ModelLoadError(f"--{given[0].replace('_', '-')} is for a model given by import "
                            f"path; {args.model!r} is a registry model with its own inputs")
    return registry_setup(args.model, batch, episodes)
