"""Bundled reference models: specs, committed weights, their data, and how well they do.

Nothing is downloaded: the digits come with scikit-learn, the control task with gymnasium, and
the trained weights are committed under `save_ros/models/weights/` (`save-ros maintainer train`
recreates them with fixed seeds). Every model is small, fp32, and traceable with
`torch.fx.symbolic_trace`.

The registry also resolves the zoo's standard perception models (`resnet18`, `resnet50`,
`mobilenet_v2`, `vit_b_16`: torchvision's architectures at 1x3x224x224, see
`save_ros.models.zoo`). They have no committed weights: `load` builds the seeded init and makes
it input-dependent at load time (cached per process); their data are seeded images whose labels
are the loaded model's own clean top-1. `available()` lists the bundled models only;
`available(include_zoo=True)` adds the zoo.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from save_ros.core.box import InputBox
from save_ros.errors import UserError
from save_ros.models import cartpole, digits_data, zoo_data
from save_ros.models.digits_cnn import DigitsCNN
from save_ros.models.digits_resnet import DigitsResNet
from save_ros.models.digits_vit import DigitsViT

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "digits_cnn"
SPLITS = ("train", "calib", "test")


class Task(str, enum.Enum):
    """What a model's output means: class logits, action logits of a control policy, or
    continuous values (a user's model given by import path to the evaluation CLIs)."""

    CLASSIFICATION = "classification"
    CONTROL = "control"
    REGRESSION = "regression"


class ModelError(UserError):
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
    """What a bundled model is: its task, input shape and input box, and where its weights are.

    A zoo model (`loader` set, `weights_path` None) has no committed weights: its "weights" are
    the seeded torchvision-style init made input-dependent at load time (`loader()`, see
    `save_ros.models.zoo`); `build()` is the plain seeded init.
    """

    name: str
    task: Task
    input_shape: tuple[int, ...]  # without the batch dimension
    num_outputs: int
    input_low: tuple[float, ...]  # one value per input channel (dim 0 of input_shape)
    input_high: tuple[float, ...]
    weights_path: Path | None
    description: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    loader: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)

    @property
    def is_zoo(self) -> bool:
        """True for the zoo's models (weights made at load time, not committed)."""
        return self.name in _ZOO_SPECS and self.loader is not None

    @property
    def metrics_path(self) -> Path | None:
        """The JSON of training metrics written next to the weights (None for zoo models)."""
        return None if self.weights_path is None else self.weights_path.with_suffix(".json")

    def input_range(self) -> InputBox:
        """The input box, its (low, high) tensors shaped like one input."""
        return InputBox(*InputBox.of((self.input_low, self.input_high),
                                     self.input_shape).expand(self.input_shape))


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


def _zoo_spec(name: str, description: str) -> ModelSpec:
    from save_ros.models import zoo

    return ModelSpec(
        name=name,
        task=Task.CLASSIFICATION,
        input_shape=zoo_data.INPUT_SHAPE,
        num_outputs=zoo_data.NUM_CLASSES,
        input_low=(0.0, 0.0, 0.0),  # RGB in [0, 1], as the zoo's images
        input_high=(1.0, 1.0, 1.0),
        weights_path=None,
        description=description,
        build=lambda: zoo.build(name, input_dependent=False),
        loader=lambda: zoo.build(name),
    )


_ZOO_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _zoo_spec("resnet18", "torchvision ResNet-18, seeded init + BN/head calibration, 224 px"),
        _zoo_spec("resnet50", "torchvision ResNet-50, seeded init + BN/head calibration, 224 px"),
        _zoo_spec("mobilenet_v2",
                  "torchvision MobileNetV2, seeded init + BN/head calibration, 224 px"),
        _zoo_spec("vit_b_16", "torchvision ViT-B/16, seeded init + head calibration, 224 px"),
    )
}


def available(include_zoo: bool = False) -> list[str]:
    """Names of the bundled models, the default first; with `include_zoo`, then the zoo's."""
    return list(_SPECS) + (list(_ZOO_SPECS) if include_zoo else [])


def get_spec(name: str) -> ModelSpec:
    """The spec of a bundled or zoo model; `UnknownModelError` (listing the names) otherwise."""
    spec = _SPECS.get(name) or _ZOO_SPECS.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model {name!r}; bundled models are: {', '.join(_SPECS)}; zoo models: "
            f"{', '.join(_ZOO_SPECS)}"
        )
    return spec


def build(name: str) -> nn.Module:
    """A fresh, untrained instance of a model's architecture (fp32, CPU; zoo: seed 0 init)."""
    return get_spec(name).build()


def load(name: str, weights_path: Path | str | None = None) -> nn.Module:
    """A model with its committed (or the given) weights: eval mode, fp32, CPU.

    A zoo model without `weights_path` is built and made input-dependent (cached per process).
    """
    spec = get_spec(name)
    if weights_path is None and spec.loader is not None:
        return spec.loader().float().eval()
    path = Path(weights_path) if weights_path is not None else spec.weights_path
    if not path.is_file():
        raise MissingWeightsError(
            f"weights of {name!r} not found at {path}; recreate them with "
            f"`save-ros maintainer train --model {name}`"
        )
    model = spec.build()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.float().eval()


def dataset(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one split (`train`, `calib` or `test`) for a bundled model.

    Digits: images (N, 1, 8, 8) in [0, 1] and labels. Policy: states (N, 4) from seeded expert
    rollouts (held out from training for calib and test) and the expert's actions. Zoo models:
    seeded images (N, 3, 224, 224) from `zoo.images` (calib 64, test 256; no train split) and,
    as labels, the loaded model's own clean top-1 (so clean accuracy is 1.0 by construction).
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise UnknownSplitError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if spec.is_zoo:
        if split not in zoo_data.SPLITS:
            raise UnknownSplitError(
                f"zoo model {name!r} has no {split!r} split (its weights are a seeded init "
                f"calibrated at load time); use one of {', '.join(zoo_data.SPLITS)}")
        return zoo_data.split(name, split, lambda: load(name))
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
