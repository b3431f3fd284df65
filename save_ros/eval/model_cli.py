"""The `--model` option of the evaluation CLIs: a registry name, or `package.module:factory`.

`save-ros campaign | pvf | analyze --model NAME` takes a bundled or zoo model
(`save_ros.models`), or a user's model by import path, `my_pkg.nets:make_net`, whose factory
(called once, with no arguments) returns an `nn.Module`. Such a model brings no input
constraints, so the command needs them:

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
import importlib
from pathlib import Path

import torch
from torch import nn

from save_ros.errors import UserError
from save_ros.eval.campaign import EvalSetup, registry_setup, strided

DATA_SEED = 0
CALIB_INPUTS = 64
TASKS = ("classification", "regression")
DEFAULT_TOLERANCE = (1e-3, 1e-5)


class ModelArgError(UserError, ValueError):
    """A --model (or its input options) that cannot be used; the message says what to fix."""


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
                        help="bundled or zoo model name (save_ros.models), or an import path "
                             "package.module:factory of your own model")
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


def is_import_path(model: str) -> bool:
    """True for `package.module:factory` (registry names have no colon)."""
    return ":" in model


def load_factory(path: str) -> nn.Module:
    """Import `package.module:factory`, call it, check that it returns an nn.Module."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ModelArgError(f"--model {path}: expected an import path package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelArgError(f"--model {path}: cannot import {module_name!r} ({exc}); is it "
                            "installed or on PYTHONPATH?") from None
    except Exception as exc:  # the user's module fails while importing
        raise ModelArgError(f"--model {path}: importing {module_name!r} raised "
                            f"{type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelArgError(f"--model {path}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelArgError(f"--model {path}: {attr!r} is a {type(factory).__name__}, not a "
                            "callable that returns the model")
    try:
        model = factory()
    except Exception as exc:
        raise ModelArgError(f"--model {path}: calling {attr}() raised {type(exc).__name__}: "
                            f"{exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelArgError(f"--model {path}: {attr}() returned {type(model).__name__}, not a "
                            "torch.nn.Module")
    return model.float().eval()


def _inputs(args: argparse.Namespace, path: str, batch: int
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], tuple[float, float], dict]:
    """(test x, calibration x, shape, (low, high), how they were made)."""
    shape = tuple(args.input_shape) if args.input_shape else None
    box = tuple(args.input_range) if args.input_range else None
    if args.inputs is not None:
        try:
            data = torch.load(args.inputs, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelArgError(f"--inputs {args.inputs}: cannot load a tensor ({exc})") from None
        if not isinstance(data, torch.Tensor) or data.dim() < 2 or not data.is_floating_point():
            raise ModelArgError(f"--inputs {args.inputs}: expected a float tensor (N, *shape), "
                                f"got {type(data).__name__}")
        data = data.float()
        if shape is not None and tuple(data.shape[1:]) != shape:
            raise ModelArgError(f"--inputs {args.inputs} holds inputs of shape "
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
        raise ModelArgError(f"--model {path} is given by import path, so it needs "
                            f"{' and '.join(missing)} (or --inputs FILE.pt)")
    lo, hi = box
    if not lo < hi:
        raise ModelArgError(f"--input-range {lo},{hi}: LOW must be below HIGH")
    gen = torch.Generator().manual_seed(DATA_SEED)
    test = lo + (hi - lo) * torch.rand(batch, *shape, generator=gen)
    calib = lo + (hi - lo) * torch.rand(CALIB_INPUTS, *shape, generator=gen)
    return test, calib, shape, box, {"uniform_box": [lo, hi], "seed": DATA_SEED, "n": batch,
                                     "calib": CALIB_INPUTS}


def foreign_setup(args: argparse.Namespace, batch: int) -> EvalSetup:
    """An EvalSetup for a model given by import path (module docstring)."""
    from save_ros.models import ModelSpec, Task

    path = args.model
    model = load_factory(path)
    test, calib, shape, (lo, hi), data = _inputs(args, path, batch)
    try:
        with torch.no_grad():
            clean = model(test)
            clean_calib = model(calib)
    except Exception as exc:  # the user's forward, on inputs of the shape we were told
        raise ModelArgError(f"--model {path} fails on inputs of shape (N, "
                            f"{', '.join(map(str, shape))}): {type(exc).__name__}: {exc}"
                            ) from None
    if not isinstance(clean, torch.Tensor) or clean.dim() < 1 or len(clean) != len(test):
        raise ModelArgError(f"--model {path}: forward must return one tensor with the batch "
                            f"first, got {type(clean).__name__}")
    task = args.task or "classification"
    if task == "classification" and clean.dim() != 2:
        raise ModelArgError(f"--model {path}: a classifier returns (N, classes) logits, got "
                            f"shape {tuple(clean.shape)}; use --task regression")
    channels = shape[0] if shape else 1
    spec = ModelSpec(name=path, task=Task(task), input_shape=shape,
                     num_outputs=int(clean[0].numel()), input_low=(lo,) * channels,
                     input_high=(hi,) * channels, weights_path=None,
                     description=f"{path} (import path)",
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
    if is_import_path(args.model):
        return foreign_setup(args, batch)
    given = [o for o in ("input_shape", "input_range", "task", "tolerance", "inputs")
             if getattr(args, o, None) is not None]
    if given:
        raise ModelArgError(f"--{given[0].replace('_', '-')} is for a model given by import "
                            f"path; {args.model!r} is a registry model with its own inputs")
    return registry_setup(args.model, batch, episodes)
