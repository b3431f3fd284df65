"""The settings of SAVE Selection (`SelectConfig`, all part of the analysis key) and the task.

The answer a robust flip may not change (`SelectConfig.task`):
- "classification": the top-1 class (outputs (N, C) logits);
- "regression": every output, to within `tolerance` (absolute), by default `tolerance_share`
  (1 %) of that output's span over the calibration inputs;
- "control": a policy's continuous actions (an action vector, or an (N, T, D) action chunk):
  the regression rule over every element of the output;
- "auto" (default): classification for a 2-D (N, C >= 2) output, else regression. A model with
  several continuous outputs per sample (a continuous-action policy) must be declared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from save_ros.errors import UserError


@dataclass
class SelectConfig:
    """Settings of the analysis; all of them go into the analysis key."""

    margin: float = 0.1  # calibration ranges widened by this share of their width on each side
    # Numerically robust: |delta| * R <= fraction, i.e. the flip moves every top-1 gap of every
    # calibration input by at most this fraction of the gap, to first order. 0.5 leaves half
    # the gap for curvature; chosen on test[256:512], validated on test[:256] (results doc).
    fraction: float = 0.5
    channel_floor: float = 0.0  # R of an element >= this x the max R of its channel
    tensor_floor: float = 0.01  # ... and >= this x the max R of its tensor (zero gradients)
    # Calibration inputs with a top-1 gap below this quantile of the gaps are left out of the
    # sensitivity bound: the robust claim then covers inputs whose gap is at least that large.
    gap_quantile: float = 0.0
    looseness_limit: float = 4.0  # check the sound range only when at most this much looser
    calib_keep: int = 64  # calibration samples whose activations are attributed bit by bit
    sens_samples: int | None = None  # calibration samples for the sensitivity bound; None: auto
    task: str = "auto"  # classification | regression | control | auto (module docstring)
    # classification: closest classes whose gaps the bound protects; None: auto (16 below
    # 1 M parameters, else 8: each is one backward pass per sample)
    competitors: int | None = None
    tolerance: float | None = None  # regression: absolute output tolerance of a robust flip
    tolerance_share: float = 0.01  # ... else this share of each output's calibration span
    attr_elements: int = 1 << 16  # kept calibration values per activation (all samples)
    weight_elements: int = 1 << 16  # weight elements attributed per tensor (seeded sample)
    calib_batch: int = 16  # calibration inputs per forward pass, at most
    # extra memory of any phase (a calibration batch, a chunk of gradient directions) at most
    # this many times one forward pass (the weights and one sample's activations)
    memory_factor: float = 4.0


TASKS = ("auto", "classification", "regression", "control")


class SelectConfigError(UserError, ValueError):
    """A Selection setting that cannot work (the message names the valid values)."""


def auto_sens_samples(n_params: int) -> int:
    """Calibration samples for the sensitivity pass: cost grows with the model, so fewer."""
    return int(min(256, max(8, 2e7 // max(1, n_params))))


def auto_competitors(n_params: int) -> int:
    """Competitor classes per sample: 16 (every class of a small head), 8 from 1 M parameters."""
    return 16 if n_params < 1_000_000 else 8


def detect_task(output, declared: str = "auto") -> str:
    """classification | regression for a model output (declared wins over detected)."""
    if declared not in TASKS:
        raise SelectConfigError(f"task={declared!r}; use one of {', '.join(TASKS)}")
    if declared == "control":
        return "regression"  # every action element within its tolerance
    if declared != "auto":
        return declared
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2:
        return "classification"
    return "regression"
