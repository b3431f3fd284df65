"""The `--model` option of the evaluation CLIs: a registry name, an import path, a `.pt2` file.

`save-ros robustness campaign | pvf | analyze --model NAME` takes a bundled or zoo model
(`save_ros.models`), one of the zoo's policies (`decision_transformer`, `visuomotor`,
`rdt_policy`, ...: their own seeded inputs, task control, `--tolerance` applies), or a
user's model by import path, `my_pkg.nets:make_net`, whose factory (called once, with no
arguments) returns an `nn.Module`, or a torch.export program `path/model.pt2` (its input shape
comes from the program). Models load through `save_ros.models.loader` (its import-path rule,
its `ModelLoadError`). Such a model brings no
input constraints, so the command needs them:

    --input-shape 3,224,224      one input, without the batch dimension
    --input-range 0,1            every input element lies in [low, high]
    --task classification        top-1 decisions (default), or `regression` (`control`, an
                                 action vector or an (N, T, D) action chunk, is the same rule):
                                 continuous outputs, a sample changed when an output leaves
                                 --tolerance RTOL,ATOL (default 1e-3,1e-5) around the clean one
    --inputs FILE.pt             optional: a tensor (N, *shape) of real inputs, or a tuple /
                                 list of such tensors for a model of several inputs

Several inputs (forward(image, joints), a policy): repeat `--input-shape` once per input, in
forward's order, and `--input-range` once per input (or once for all); `int:LOW,HIGH` makes an
input integer (token ids, discrete commands: exact, drawn uniformly from LOW..HIGH); a negative
LOW needs the `=` form, `--input-range=-1,1`, or argparse takes it for an option. Test and
calibration data are then `core.inputs.InputBatch`es, one tensor per input.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from save_ros.core.inputs import InputBatch
from save_ros.eval.campaign import EvalSetup, registry_setup, strided
from save_ros.eval.methods import model_args
from save_ros.models import loader
from save_ros.models.loader import ModelLoadError, is_export_path, is_import_path

DATA_SEED = 0
CALIB_INPUTS = 64
TASKS = ("classification", "regression", "control")
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


def _range(text: str) -> tuple[str, float, float]:
    """`LOW,HIGH` (a float input) or `int:LOW,HIGH` (an integer input) -> (kind, low, high)."""
    kind, _, rest = text.rpartition(":")
    if kind not in ("", "int", "float"):
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or int:LOW,HIGH, got {text!r}")
    lo, hi = _numbers(int if kind == "int" else float, 2,
                      "LOW,HIGH like 0,1 (int:LOW,HIGH for integers)")(rest)
    return (kind or "float", lo, hi)


def add_arguments(parser: argparse.ArgumentParser, default: str = "digits_cnn") -> None:
    """--model and the input options a model given by import path needs."""
    parser.add_argument("--model", default=default,
                        help="bundled or zoo model name (save_ros.models), an import path "
                             "package.module:factory of your own model, or a torch.export "
                             "file path/model.pt2")
    parser.add_argument("--input-shape", type=_numbers(int, None, "sizes like 3,224,224"),
                        action="append", default=None,
                        help="import-path model: one input's shape, no batch dim (repeat once "
                             "per input of forward, in order)")
    parser.add_argument("--input-range", type=_range, action="append", default=None,
                        help="import-path model: LOW,HIGH of every element of one input (repeat "
                             "per input, or once for all); int:LOW,HIGH for an integer input")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="import-path model: classification (default) or regression "
                             "(control: the same, for action outputs)")
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


def _load_inputs(args: argparse.Namespace) -> list[torch.Tensor]:
    """The tensors of `--inputs`: one (N, *shape) tensor, or a tuple / list of them."""
    try:
        data = torch.load(args.inputs, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"--inputs {args.inputs}: cannot load a tensor ({exc})") from None
    tensors = list(data) if isinstance(data, (tuple, list)) else [data]
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in tensors) \
            or (len(tensors) == 1 and not tensors[0].is_floating_point()) \
            or len({len(t) for t in tensors}) > 1:
        raise ModelLoadError(f"--inputs {args.inputs}: expected a float tensor (N, *shape), or a "
                            "tuple of tensors with the same N (one per input), got "
                            f"{type(data).__name__}")
    return [t.float() if t.is_floating_point() else t.long() for t in tensors]


def _inputs(args: argparse.Namespace, path: str, batch: int,
            own_shape: tuple[int, ...] | None = None):
    """(test x, calibration x, shapes, boxes, how they were made); x a tensor for one input,
    an InputBatch for several; boxes (low, high) per input, int for integer inputs."""
    shapes = [tuple(s) for s in args.input_shape] if args.input_shape else \
        ([own_shape] if own_shape is not None else None)
    ranges = list(args.input_range) if args.input_range else None
    if args.inputs is not None:
        data = _load_inputs(args)
        got = [tuple(t.shape[1:]) for t in data]
        if shapes is not None and got != shapes:
            given = " ".join(",".join(map(str, s)) for s in shapes)
            raise ModelLoadError(f"--inputs {args.inputs} holds inputs of shape "
                                f"{', '.join(map(str, got))}, not --input-shape {given}")
        if ranges is not None and len(ranges) not in (1, len(data)):
            raise ModelLoadError(f"{len(ranges)} --input-range for {len(data)} inputs")
        if ranges:
            boxes = [(lo, hi) for _, lo, hi in (ranges * len(data) if len(ranges) == 1
                                                 else ranges)]
        else:  # the data's own span
            boxes = [(float(t.min()), float(t.max())) if t.is_floating_point()
                     else (int(t.min()), int(t.max())) for t in data]
        n = len(data[0])
        test_i, calib_i = (torch.arange(0, n, 2), torch.arange(1, n, 2)) if n > 1 else \
            (torch.arange(1), torch.arange(1))
        test = InputBatch(data)[test_i]
        calib = InputBatch(data)[calib_i]
        test = strided(test, torch.arange(len(test)), batch)[0]
        info = {"inputs": str(args.inputs), "n": len(test), "of": n, "calib": len(calib)}
        if len(data) == 1:
            return test.tensors[0], calib.tensors[0], got, boxes, info
        return test, calib, got, boxes, info
    missing = [o for o, v in (("--input-shape", shapes), ("--input-range", ranges)) if v is None]
    if missing:
        raise ModelLoadError(f"--model {path} is a model of your own, so it needs "
                            f"{' and '.join(missing)} (or --inputs FILE.pt)")
    if len(ranges) == 1:
        ranges = ranges * len(shapes)
    if len(ranges) != len(shapes):
        raise ModelLoadError(f"{len(shapes)} --input-shape but {len(ranges)} --input-range: give "
                            "one range per input, or one for all")
    for _, lo, hi in ranges:
        if not lo < hi:
            raise ModelLoadError(f"--input-range {lo},{hi}: LOW must be below HIGH")
    gen = torch.Generator().manual_seed(DATA_SEED)

    def draw(n: int) -> list[torch.Tensor]:
        return [torch.randint(int(lo), int(hi) + 1, (n, *shape), generator=gen)
                if kind == "int" else lo + (hi - lo) * torch.rand(n, *shape, generator=gen)
                for shape, (kind, lo, hi) in zip(shapes, ranges, strict=True)]

    test, calib = draw(batch), draw(CALIB_INPUTS)
    boxes = [(lo, hi) for _, lo, hi in ranges]
    info = {"uniform_box": list(boxes[0]) if len(boxes) == 1 else [list(b) for b in boxes],
            "seed": DATA_SEED, "n": batch, "calib": CALIB_INPUTS}
    if len(shapes) == 1:
        return test[0], calib[0], shapes, boxes, info
    return InputBatch(test), InputBatch(calib), shapes, boxes, info


@dataclass(frozen=True)
class ImportedSpec:
    """The spec of a model of several inputs given by import path: one box per input."""

    name: str
    task: Any
    input_shapes: tuple[tuple[int, ...], ...]
    boxes: tuple[tuple[float, float], ...]
    num_outputs: int
    description: str

    def input_range(self) -> tuple[tuple[float, float], ...]:
        """One (low, high) per input, in forward's order (`protect()` takes them so)."""
        return self.boxes


def foreign_setup(args: argparse.Namespace, batch: int) -> EvalSetup:
    """An EvalSetup for a model given by import path (module docstring)."""
    path = args.model
    model, own_shape = load_user_model(path)
    if own_shape is not None and args.input_shape and \
            [tuple(s) for s in args.input_shape] != [own_shape]:
        raise ModelLoadError(f"--input-shape {args.input_shape} differs from the "
                             f"program's {own_shape}; leave it unset")
    test, calib, shapes, boxes, data = _inputs(args, path, batch, own_shape)
    try:
        with torch.no_grad():
            clean = model(*model_args(test))
            clean_calib = model(*model_args(calib))
    except Exception as exc:  # the user's forward, on inputs of the shape we were told
        hint = ("; export it with a dynamic batch dimension (dynamic_shapes={0: "
                "torch.export.Dim('batch')}): campaigns run batches of several sizes"
                if is_export_path(path) else "")
        what = "; ".join(f"(N, {', '.join(map(str, s))})" for s in shapes)
        raise ModelLoadError(f"--model {path} fails on inputs of shape {what}: "
                             f"{type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from None
    if not isinstance(clean, torch.Tensor) or clean.dim() < 1 or len(clean) != len(test):
        raise ModelLoadError(f"--model {path}: forward must return one tensor with the batch "
                            f"first, got {type(clean).__name__}")
    task = args.task or "classification"
    if task == "classification" and clean.dim() != 2:
        raise ModelLoadError(f"--model {path}: a classifier returns (N, classes) logits, got "
                            f"shape {tuple(clean.shape)}; use --task regression")
    return _setup(path, model, test, calib, clean, clean_calib, shapes, boxes, task,
                  args.tolerance, data)


def policy_setup(name: str, batch: int, tolerance: tuple[float, float] | None = None
                 ) -> EvalSetup:
    """An EvalSetup for one of the zoo's policies (`models.zoo.policies`): its own seeded
    inputs inside its boxes (test: seed 0, calibration: seed 1), task control: a sample is
    changed when any action element leaves the tolerance around the clean chunk."""
    from save_ros.models.zoo import policies

    model = policies.build_policy(name)
    test = InputBatch(list(policies.example_inputs(name, batch=batch, seed=DATA_SEED)))
    calib = InputBatch(list(policies.example_inputs(name, batch=CALIB_INPUTS,
                                                    seed=DATA_SEED + 1)))
    with torch.no_grad():
        clean, clean_calib = model(*test.tensors), model(*calib.tensors)
    shapes = [tuple(t.shape[1:]) for t in test.tensors]
    data = {"inputs": f"policies.example_inputs({name!r}, seed={DATA_SEED})", "n": batch,
            "calib": CALIB_INPUTS, "input_names": list(policies.input_names(name))}
    return _setup(name, model, test, calib, clean, clean_calib, shapes,
                  list(policies.input_boxes(name)), "control", tolerance, data,
                  f"{name}: {policies.describe(name)}")


def _setup(path: str, model: nn.Module, test: Any, calib: Any, clean: torch.Tensor,
           clean_calib: torch.Tensor, shapes: list, boxes: list, task: str,
           tolerance: tuple[float, float] | None, data: dict[str, Any],
           description: str | None = None) -> EvalSetup:
    """The EvalSetup of a model with its inputs and its clean outputs."""
    from save_ros.models import ModelSpec, Task

    if task == "control":
        task = "regression"  # every action element within the tolerance
    if len(shapes) == 1:
        shape, (lo, hi) = shapes[0], boxes[0]
        channels = shape[0] if shape else 1
        spec: Any = ModelSpec(name=path, task=Task(task), input_shape=shape,
                              num_outputs=int(clean[0].numel()), input_low=(lo,) * channels,
                              input_high=(hi,) * channels, weights_path=None,
                              description=f"{path} (the user's model)",
                              build=lambda: copy.deepcopy(model),
                              loader=lambda: copy.deepcopy(model))
    else:
        spec = ImportedSpec(path, Task(task), tuple(shapes), tuple(boxes),
                            int(clean[0].numel()),
                            description or f"{path} (import path, {len(shapes)} inputs)")
    classification = task == "classification"
    tolerance = None if classification else tuple(tolerance or DEFAULT_TOLERANCE)
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
    from save_ros.models.zoo import policies

    policy = args.model in policies.available_policies()
    given = [o for o in ("input_shape", "input_range", "task", "tolerance", "inputs")
             if getattr(args, o, None) is not None
             and not (policy and o in ("task", "tolerance"))]
    if given:
        raise ModelLoadError(f"--{given[0].replace('_', '-')} is for a model given by import "
                            f"path; {args.model!r} is a registry model with its own inputs")
    if policy:
        if getattr(args, "task", None) not in (None, "control", "regression"):
            raise ModelLoadError(f"--task {args.task}: {args.model} is a policy (task control)")
        return policy_setup(args.model, batch, getattr(args, "tolerance", None))
    return registry_setup(args.model, batch, episodes)
