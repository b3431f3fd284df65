"""Where the node's model comes from: a bundled model, a TorchScript file, or a state dict.

A bundled model brings its input box and calibration data. A TorchScript file carries no input
constraints, so `input_shape`, `input_low` and `input_high` must come from parameters. A state
dict is loaded into the architecture named by `model` (a bundled one), and keeps that model's
constraints unless parameters override them.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from save_ros import models
from save_ros.ros.convert import InputSpec
from save_ros.ros.params import NodeConfig


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says what to fix."""


@dataclass
class LoadedModel:
    """A model ready to protect: the module, its input box, task, output names, calibration."""

    module: nn.Module
    name: str
    task: str
    input: InputSpec
    num_outputs: int
    calibration: torch.Tensor | None

    def input_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The input box as (low, high) tensors shaped like one input (batch dim of 1)."""
        shape = (len(self.input.low),) + (1,) * (len(self.input.shape) - 1)
        low = torch.tensor(self.input.low, dtype=torch.float32).reshape(shape)
        high = torch.tensor(self.input.high, dtype=torch.float32).reshape(shape)
        return (low.expand(self.input.shape).unsqueeze(0).clone(),
                high.expand(self.input.shape).unsqueeze(0).clone())

    def example_input(self) -> torch.Tensor:
        """One input in the box: a calibration sample, or the box's centre."""
        if self.calibration is not None and len(self.calibration):
            return self.calibration[:1].clone()
        low, high = self.input_range()
        return (low + high) / 2


def _box(cfg: NodeConfig, shape: tuple[int, ...], low: tuple[float, ...],
         high: tuple[float, ...]) -> InputSpec:
    """The input box from parameters where given, else the model's own; one value per channel."""
    low, high = (cfg.input_low, cfg.input_high) if cfg.input_low else (low, high)
    channels = shape[0]
    if len(low) == 1 and channels > 1:
        low, high = low * channels, high * channels
    if len(low) != channels:
        raise ModelLoadError(
            f"input_low/input_high have {len(low)} values; give 1 or one per input channel "
            f"({channels} for input shape {shape})")
    return InputSpec(shape=shape, low=tuple(low), high=tuple(high))


def load(cfg: NodeConfig) -> LoadedModel:
    """Load the model the parameters describe, on the CPU in eval mode (fp32)."""
    if not cfg.model_file:
        return _reference(cfg)
    path = Path(cfg.model_file).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model_file {str(path)!r} does not exist; give the path of a "
                             "TorchScript or state-dict file, or leave it empty")
    if _is_torchscript(path):
        return _torchscript(cfg, path)
    return _state_dict(cfg, path)


def _reference(cfg: NodeConfig, module: nn.Module | None = None) -> LoadedModel:
    """A bundled model (with its committed weights unless `module` is given)."""
    try:
        spec = models.get_spec(cfg.model)
        module = module if module is not None else models.load(cfg.model)
        calibration = models.dataset(cfg.model, "calib")[0]
    except models.ModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    shape = cfg.input_shape or tuple(spec.input_shape)
    if shape != tuple(spec.input_shape):
        raise ModelLoadError(f"input_shape {list(shape)} differs from {cfg.model}'s "
                             f"{list(spec.input_shape)}; leave input_shape unset")
    return LoadedModel(module=module.float().eval(), name=cfg.model,
                       task=cfg.task or spec.task.value,
                       input=_box(cfg, shape, spec.input_low, spec.input_high),
                       num_outputs=spec.num_outputs, calibration=calibration)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a `constants.pkl`/`code/` entry; a state dict does not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl"))
                       for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _torchscript(cfg: NodeConfig, path: Path) -> LoadedModel:
    """A TorchScript module; shape and box must come from parameters."""
    if not cfg.input_shape or not cfg.input_low:
        raise ModelLoadError(
            f"{path} is a TorchScript module, which carries no input constraints; set "
            "input_shape, input_low and input_high (and task) parameters")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load TorchScript {path}: {exc}") from exc
    module = module.float().eval()
    with torch.no_grad():
        probe = torch.zeros(1, *cfg.input_shape)
        try:
            out = module(probe)
        except Exception as exc:  # a scripted model raises whatever its code raises
            raise ModelLoadError(f"{path} fails on an input of shape (1, "
                                 f"{', '.join(map(str, cfg.input_shape))}): {exc}") from exc
    return LoadedModel(module=module, name=path.stem, task=cfg.task or "classification",
                       input=_box(cfg, cfg.input_shape, cfg.input_low, cfg.input_high),
                       num_outputs=int(out.reshape(1, -1).shape[1]), calibration=None)


def _state_dict(cfg: NodeConfig, path: Path) -> LoadedModel:
    """A state dict loaded into the bundled architecture named by `model`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises several unrelated types for a bad file
        # torch's own text runs to several lines about weights_only; one line says what to do
        raise ModelLoadError(f"{path} is neither TorchScript nor a state dict (torch.load: "
                             f"{type(exc).__name__}); write it with torch.save(model.state_dict(), "
                             "path) or torch.jit.save") from exc
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        module = models.build(cfg.model)
        module.load_state_dict(state)
    except models.ModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    except RuntimeError as exc:
        raise ModelLoadError(f"state dict {path} does not fit architecture {cfg.model!r}: "
                             f"{str(exc).splitlines()[0]}") from exc
    return _reference(cfg, module)
