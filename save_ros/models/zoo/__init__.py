"""Standard robot-perception architectures, defined here as torchvision defines them.

`build(name)` gives torchvision's ResNet-18, ResNet-50, MobileNetV2 or ViT-B/16 (1x3x224x224,
1,000 classes) without importing torchvision (whose PyPI build does not load against the CPU
torch pin): same module / parameter / buffer names and shapes (a torchvision state_dict loads
with `strict=True`), same forward, same initialisation, fx-traceable like torchvision's.

The zoo's robot policies (`available_policies()`: a Decision Transformer, a visuomotor
policy, an RDT-class diffusion policy; several inputs each, see `save_ros.models.zoo.policies`)
come from `build_policy(name)`, with `example_inputs(name)` and `input_boxes(name)`.

There are no trained weights (nothing is downloaded). With `input_dependent=True` (the default)
a model is made to decide by its input (see `calibrate`): BatchNorm statistics re-estimated and
the head re-initialised on seeded images from `images()`, so a fault campaign on it measures
something. The result is cached per process: the first build of a (name, classes, size, seed)
pays the calibration (32 images, one or two forward passes each); later builds copy the cached
model.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from save_ros.models.zoo.calibrate import (
    HEADS,
    LOGIT_STD,
    decision_report,
    init_head,
    recalibrate_batchnorm,
)
from save_ros.models.zoo.errors import UnknownZooModelError
from save_ros.models.zoo.images import image_source, images
from save_ros.models.zoo.mobilenet import mobilenet_v2
from save_ros.models.zoo.policies import (
    available_policies,
    build_policy,
    example_inputs,
    input_boxes,
    input_names,
)
from save_ros.models.zoo.resnet import resnet18, resnet50
from save_ros.models.zoo.vit import vit_b_16
from save_ros.models.zoo.weights import WeightsError, load_into

_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet18": lambda classes, size: resnet18(classes),
    "resnet50": lambda classes, size: resnet50(classes),
    "mobilenet_v2": lambda classes, size: mobilenet_v2(classes),
    "vit_b_16": lambda classes, size: vit_b_16(classes, image_size=size),
}
PARAMETERS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenet_v2": 3_504_872,
              "vit_b_16": 86_567_656}  # torchvision's counts at 1,000 classes, 224 px
CALIB_IMAGES = 32  # images that calibrate a model (2 batches of 16)
CALIB_BATCH = 16
CALIB_SEED_OFFSET = 100  # calibration images of model seed s come from images(seed=100 + s)

_cache: dict[tuple, nn.Module] = {}


def available() -> list[str]:
    """The zoo's architecture names."""
    return list(_BUILDERS)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be an int >= 0, not {seed!r}")
    return int(seed)


def _torchvision_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    import torchvision

    kwargs = {"weights": None, "num_classes": num_classes}
    if name == "vit_b_16":
        kwargs["image_size"] = image_size
    return getattr(torchvision.models, name)(**kwargs)


def calibration_batches(image_size: int, seed: int = 0, n: int = CALIB_IMAGES,
                        batch_size: int = CALIB_BATCH) -> list[torch.Tensor]:
    """The seeded images a model of seed `seed` is calibrated on, in batches."""
    x = images(n, image_size, CALIB_SEED_OFFSET + _check_seed(seed))
    return list(x.split(batch_size))


def _make_input_dependent(model: nn.Module, name: str, seed: int = 0,
                          batches: list[torch.Tensor] | None = None) -> dict:
    """Make `model` (a zoo architecture `name`) decide by its input, in place; say what was done.

    BatchNorm statistics are re-estimated on `batches` (default: `calibration_batches(size,
    seed)`), then the head is re-initialised from seed `seed` on the same images (see
    `calibrate`). The model ends in eval mode.
    """
    if name not in HEADS:
        raise UnknownZooModelError(f"unknown zoo model {name!r}; the zoo has {', '.join(HEADS)}")
    seed = _check_seed(seed)
    if batches is None:
        size = getattr(model, "image_size", 224)
        batches = calibration_batches(size, seed)
    model.eval()
    n_bn = recalibrate_batchnorm(model, batches)
    info = init_head(model, HEADS[name], batches, seed)
    return {"batchnorm_layers": n_bn, "calibration_images": sum(len(b) for b in batches),
            "image_source": image_source(), **info}


def build(name: str, num_classes: int = 1000, image_size: int = 224, seed: int = 0,
          input_dependent: bool = True, prefer_torchvision: bool = False,
          weights: str | Path | None = None) -> nn.Module:
    """A zoo model in eval mode, fp32, on the CPU.

    `weights`: a folder written by `save-ros maintainer train-zoo` (or one `.pt` state dict): the
    trained weights are loaded (strictly, as fp32) instead of calibrating the init; see `zoo.train`.

    The architecture is initialised from `seed` (the global RNG is left as it was) as
    torchvision's constructor does; with `input_dependent` (default) it is then calibrated on
    `image_size` images (`input_dependent()`), cached per process. `image_size` only changes
    ViT's position embedding; ResNet and MobileNet take any size. `prefer_torchvision=True`
    builds torchvision's own class where torchvision imports (else ours), with the same steps.
    A policy name (`available_policies()`) gives `build_policy(name, seed)`; the image
    arguments do not apply to it.
    """
    if name in available_policies():  # several inputs: see save_ros.models.zoo.policies
        return build_policy(name, seed=_check_seed(seed))
    if name not in _BUILDERS:
        raise UnknownZooModelError(
            f"unknown zoo model {name!r}; the zoo has {', '.join(_BUILDERS)} and the policies "
            f"{', '.join(available_policies())}")
    seed = _check_seed(seed)
    if weights is not None:
        model = build(name, num_classes, image_size, seed, False, prefer_torchvision)
        return load_into(model, weights, name).eval()
    use_tv = False
    if prefer_torchvision:
        try:
            import torchvision  # noqa: F401
            use_tv = True
        except Exception:  # absent, or a build that does not load against this torch
            use_tv = False
    key = (name, num_classes, image_size, seed, input_dependent, use_tv)
    if key in _cache:
        return copy.deepcopy(_cache[key])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (_torchvision_model(name, num_classes, image_size) if use_tv
                 else _BUILDERS[name](num_classes, image_size))
    model = model.float().eval()
    if not input_dependent:
        return model
    _make_input_dependent(model, name, seed, calibration_batches(image_size, seed))
    _cache[key] = model
    return copy.deepcopy(model)


input_dependent = _make_input_dependent  # the public name (`build` has a flag of that name)


def clear_cache() -> None:
    """Forget the calibrated models of this process."""
    _cache.clear()


__all__ = ["CALIB_IMAGES", "LOGIT_STD", "PARAMETERS", "POLICY_PARAMETERS", "UnknownZooModelError",
           "WeightsError", "available", "available_policies", "build", "build_policy",
           "calibration_batches", "clear_cache", "decision_report", "example_inputs",
           "image_source", "images", "input_boxes", "input_dependent", "input_names"]
