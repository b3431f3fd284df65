"""How a model is run under faults: the `Method` protocol that campaigns drive.

A campaign does, per method and trial::

    method.prepare(model, spec, calib)       # once: wrap / analyse / protect the model
    tensors = method.injectable()            # what weight faults may hit (name -> live tensor)
    log = apply faults to `tensors`          # persistent until undone
    with activation hooks on method.model:   # only if method.activations_injectable
        outputs, detected = method.predict(x)
    log.undo(tensors); method.reset()        # next trial starts fault-free

Contract:
- `name`: the registry name (`unprotected`, `ecc_oracle`, `save`, ...).
- `model`: the live `nn.Module` whose forward passes the faults hit (activation and PE hooks are
  installed on it); set by `prepare`.
- `injectable()`: name -> tensor (same storage as what the method computes with) of the weights
  a memory fault can reach. A method that keeps tensors in reliable memory leaves them out; an
  ECC oracle returns {}.
- `activations_injectable`: False when activation memory is protected too (the ECC oracle).
- `fx_activation_sites` (optional, default True): False when `predict` does not run
  `self.model(x)` (SAVE's runtime executes its own graph), so fx-node fault taps cannot reach
  it; a campaign then uses module-path activation sites for every method of the run.
- `predict(x) -> (outputs, detected)`: outputs as the method publishes them, `detected` a bool
  tensor, one per sample (or a single one for the whole batch). `x` is a tensor, or for a model
  of several inputs a `core.inputs.InputBatch` (one tensor per input, sliced like a batch):
  run the model as `model(*model_args(x))`.
- `reset()`: after `log.undo`, clear whatever the trial left in the method (repair state,
  counters), so the next trial starts from the fault-free state.

Methods are registered by name in `METHODS` as "module:attribute" of a zero-argument factory
(imported lazily, so adding a method is a one-line edit of the table).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from save_ros.core.inputs import InputBatch
from save_ros.errors import UserError


def model_args(x: torch.Tensor | InputBatch) -> tuple[torch.Tensor, ...]:
    """The positional inputs of `model(...)` for a batch of one or several inputs."""
    return x.tensors if isinstance(x, InputBatch) else (x,)


def fault_probe_input(x: torch.Tensor | InputBatch) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """What `faults.activation_sites` takes: the tensor, or the tuple of several inputs."""
    return x.tensors if isinstance(x, InputBatch) else x


class UnknownMethodError(UserError, KeyError):
    """A method name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


@runtime_checkable
class Method(Protocol):
    """How a model runs under faults (see the module docstring for the contract)."""

    name: str
    model: nn.Module
    activations_injectable: bool

    def prepare(self, model: nn.Module, spec: Any, calib: tuple[torch.Tensor, torch.Tensor] | None
                ) -> None:
        """Take the fault-free model (and the calibration split) and get ready to predict."""

    def injectable(self) -> dict[str, torch.Tensor]:
        """Name -> live tensor that weight faults may hit."""

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and a detected flag (per sample or per batch)."""

    def reset(self) -> None:
        """Return to the fault-free state after a trial's faults were undone."""


class ForwardMethod:
    """Base for methods that run the model as given: one forward pass, nothing detected.

    Every parameter is exposed to weight faults and nothing is kept between trials; a subclass
    overrides the steps it changes (how it prepares, what it exposes, how it predicts).
    """

    name = "forward"
    activations_injectable = True
    fx_activation_sites = True

    def __init__(self) -> None:
        self.model: nn.Module = nn.Identity()

    def prepare(self, model: nn.Module, spec: Any = None,
                calib: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Keep the model (in eval mode)."""
        self.model = model.eval()

    def injectable(self) -> dict[str, torch.Tensor]:
        """All parameters (buffers such as BatchNorm statistics are left to explicit targets)."""
        return {k: p.detach() for k, p in self.model.named_parameters()}

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass; never detects."""
        with torch.inference_mode():
            out = self.model(*model_args(x))
        return out, torch.zeros(len(x), dtype=torch.bool)

    def reset(self) -> None:
        """Nothing to clear: the campaign's undo log restores the weights."""


class Unprotected(ForwardMethod):
    """The model as is: every weight and activation is exposed, nothing is detected."""

    name = "unprotected"


class EccOracle(Unprotected):
    """Upper bound: ECC-like full protection, so no flip reaches weights or activations."""

    name = "ecc_oracle"
    activations_injectable = False

    def injectable(self) -> dict[str, torch.Tensor]:
        """Nothing: every memory fault is corrected before use."""
        return {}


# name -> "module:factory"; other engineers add rows for their methods.
METHODS: dict[str, str] = {
    "unprotected": "save_ros.eval.methods:Unprotected",
    "ecc_oracle": "save_ros.eval.methods:EccOracle",
    "save": "save_ros.eval.baselines:save_method",
    "full_dmr": "save_ros.eval.baselines:full_dmr",
    "range_restriction": "save_ros.eval.baselines:range_restriction",
    "weight_scaling": "save_ros.eval.scaling_method:weight_scaling",
    "weight_scaling_sat": "save_ros.eval.scaling_method:weight_scaling_saturated",
    "save_weight_scaling": "save_ros.eval.scaling_method:save_weight_scaling",
    "weight_scaling_fp16": "save_ros.eval.scaling_method:weight_scaling_fp16",
    "weight_scaling_fp16_sat": "save_ros.eval.scaling_method:weight_scaling_fp16_saturated",
    "weight_scaling_int8": "save_ros.eval.scaling_method:weight_scaling_int8",
    "fp16_plain": "save_ros.eval.scaling_method:fp16_plain",
    "int8_plain": "save_ros.eval.scaling_method:int8_plain",
}


def available_methods() -> list[str]:
    """Registered method names."""
    return list(METHODS)


def get_method(name: str) -> Method:
    """A fresh instance of a registered method; `UnknownMethodError` lists the names."""
    try:
        target = METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered methods are: {', '.join(METHODS)}"
        ) from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)()
