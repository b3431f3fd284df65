"""The data of the zoo's models in the registry: seeded images, labelled by the model itself.

The zoo has no trained weights, so there is no ground truth: a split's labels are the clean
top-1 of the loaded (input-dependent) model, and accuracy under faults is the share of decisions
a fault leaves unchanged. Images come from `zoo.images` with fixed seeds, disjoint from the
images the models are calibrated on (`zoo.calibration_batches`, seeds 100 + model seed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

INPUT_SHAPE = (3, 224, 224)
NUM_CLASSES = 1000
SPLITS = ("calib", "test")
SIZES = {"calib": 64, "test": 256}
SEEDS = {"calib": 200, "test": 300}  # image seeds of the splits
LABEL_BATCH = 32

_cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def split_images(split: str) -> torch.Tensor:
    """The images of a split (N, 3, 224, 224) in [0, 1]."""
    from save_ros.models import zoo

    return zoo.images(SIZES[split], INPUT_SHAPE[-1], SEEDS[split])


def split(name: str, which: str, load: Callable[[], nn.Module]) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """(images, the model's own clean top-1) of split `which`, computed once per process.

    The returned tensors are shared by later calls: do not change them in place.
    """
    key = (name, which)
    if key not in _cache:
        x = split_images(which)
        model = load()
        with torch.no_grad():
            y = torch.cat([model(xb).argmax(1) for xb in x.split(LABEL_BATCH)])
        _cache[key] = (x, y)
    return _cache[key]
