"""Bundled reference models: specs, committed weights, their data, and how well they do.

Nothing is downloaded: the digits come with scikit-learn, the control task with gymnasium, and
the trained weights are committed under `save_ros/models/weights/` (`save-ros train` recreates
them with fixed seeds). Every model is small, fp32, and traceable with `torch.fx.symbolic_trace`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from save_ros.models import cartpole, digits_data
from save_ros.models.digits_cnn import DigitsCNN
from save_ros.models.digits_resnet import DigitsResNet
from save_ros.models.digits_vit import DigitsViT

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "digits_cnn"
SPLITS = ("train", "calib", "test")


class Task(str, enum.Enum):
    """What a model's output means: class logits, or action logits of a control policy."""

    CLASSIFICATION = "classification"
    CONTROL = "control"


class ModelError(Exception):
    """Base class of the errors of `save_ros.models`."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is not bundled."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class MissingWeightsError(ModelError, FileNotFoundError):
    """The committed weights file of a model is missing."""


class UnknownSplitError(ModelError, ValueError):
    """A dataset split other than train, calib, test."""


@dataclass(frozen=True)
class ModelSpec:
    """What a bundled model is: its task, input shape and input box, and where its weights are."""

    name: str
    task: Task
    input_shape: tuple[int, ...]  # without the batch dimension
    num_outputs: int
    input_low: tuple[float, ...]  # one value per input channel (dim 0 of input_shape)
    input_high: tuple[float, ...]
    weights_path: Path
    description: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)

    @property
    def metrics_path(self) -> Path:
        """The JSON of training metrics written next to the weights."""
        return self.weights_path.with_suffix(".json")

    def input_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The input box as (low, high) tensors shaped like one input, broadcast per channel."""
        shape = (len(self.input_low),) + (1,) * (len(self.input_shape) - 1)
        low = torch.tensor(self.input_low, dtype=torch.float32).reshape(shape)
        high = torch.tensor(self.input_high, dtype=torch.float32).reshape(shape)
        return low.expand(self.input_shape).clone(), high.expand(self.input_shape).clone()


def _digits_spec(name: str, build: Callable[[], nn.Module], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        task=Task.CLASSIFICATION,
        input_shape=digits_data.INPUT_SHAPE,
        num_outputs=digits_data.NUM_CLASSES,
        input_low=(0.0,),  # pixel / 16 with pixels in 0..16
        input_high=(1.0,),
        weights_path=WEIGHTS_DIR / f"{name}.pt",
        description=description,
        build=build,
    )


_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _digits_spec("digits_cnn", DigitsCNN, "CNN (3 conv, max-pool, 2 linear) on 8x8 digits"),
        _digits_spec(
            "digits_resnet", DigitsResNet, "ResNet (3 basic blocks, BatchNorm) on 8x8 digits"
        ),
        _digits_spec(
            "digits_vit", DigitsViT, "ViT (2x2 patches, class token, 2 blocks) on 8x8 digits"
        ),
        ModelSpec(
            name="cartpole_policy",
            task=Task.CONTROL,
            input_shape=(4,),
            num_outputs=2,
            input_low=cartpole.INPUT_LOW,
            input_high=cartpole.INPUT_HIGH,
            weights_path=WEIGHTS_DIR / "cartpole_policy.pt",
            description="MLP policy for CartPole-v1, behaviour-cloned from a linear expert",
            build=cartpole.CartPolePolicy,
        ),
    )
}


def available() -> list[str]:
    """Names of the bundled models, the default first."""
    return list(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The spec of a bundled model; `UnknownModelError` (listing the names) for any other."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; bundled models are: {', '.join(_SPECS)}"
        ) from None


def build(name: str) -> nn.Module:
    """A fresh, untrained instance of a bundled model's architecture (fp32, CPU)."""
    return get_spec(name).build()


def load(name: str, weights_path: Path | str | None = None) -> nn.Module:
    """A bundled model with its committed (or the given) weights: eval mode, fp32, CPU."""
    spec = get_spec(name)
    path = Path(weights_path) if weights_path is not None else spec.weights_path
    if not path.is_file():
        raise MissingWeightsError(
            f"weights of {name!r} not found at {path}; recreate them with "
            f"`save-ros train --model {name}`"
        )
    model = spec.build()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.float().eval()


def dataset(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one split (`train`, `calib` or `test`) for a bundled model.

    Digits: images (N, 1, 8, 8) in [0, 1] and labels. Policy: states (N, 4) from seeded expert
    rollouts (held out from training for calib and test) and the expert's actions.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise UnknownSplitError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if spec.task is Task.CONTROL:
        return cartpole.policy_split(split)
    return digits_data.digits_split(split)


def evaluate(
    name: str,
    model: Callable[[torch.Tensor], torch.Tensor],
    split: str = "test",
    episodes: int = 100,
    seed: int = cartpole.EVAL_SEED0,
    batch_size: int = 256,
) -> float:
    """Accuracy on a split (classifiers), or the success rate over seeded episodes (policy).

    `model` is any callable from an input batch to logits, e.g. a faulty or protected model.
    For the policy, episode i runs CartPole-v1 with env seed `seed + i`; `split` is unused.
    """
    spec = get_spec(name)
    if spec.task is Task.CONTROL:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        return cartpole.success_rate(model, episodes, seed)
    x, y = dataset(name, split)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / len(x)


__all__ = [
    "DEFAULT_MODEL",
    "MissingWeightsError",
    "ModelError",
    "ModelSpec",
    "Task",
    "UnknownModelError",
    "UnknownSplitError",
    "available",
    "build",
    "dataset",
    "evaluate",
    "get_spec",
    "load",
]
