"""Random-init and trained rows of `save-ros bench scale`: which models, with which weights, on
which calibration images.

A random-init row (`random`, key `NAME`) is the zoo's seeded init made input-dependent,
calibrated on `zoo.images` (photos and digits), as the tables had it. A trained row (`trained`,
key `NAME@trained`) loads the weights `save-ros maintainer train-zoo` wrote to the `--trained`
folder and is calibrated (and its clean trials run) on held-out scenes of the task it learned
(`scenes(n, size, CALIB_SEED + seed)`), the inputs such a model meets; its training record
(held-out accuracy, steps, time) goes into the row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from save_ros.errors import UserError
from save_ros.models.zoo.weights import find

INITS = ("random", "trained")


class InitError(UserError, ValueError):
    """`--init trained` without a `--trained` folder, or a model the folder lacks."""


def init_name(text: str) -> str:
    """argparse item type: random or trained."""
    if text not in INITS:
        raise ValueError(text)
    return text


def rows(models: list[str], inits: tuple[str, ...] | None,
         trained: Path | None) -> list[tuple[str, str, Path | None]]:
    """(result key, model name, trained-weights folder or None) per row, in run order."""
    if inits is None:
        inits = INITS if trained is not None else ("random",)
    if "trained" in inits and trained is None:
        raise InitError("--init trained needs --trained DIR (a folder written by save-ros "
                        "train-zoo)")
    out = []
    for name in models:
        for init in inits:
            if init == "random":
                out.append((name, name, None))
            elif ":" in name:
                raise InitError(f"{name}: trained rows are for the zoo's models; pass --init "
                                "random for a model given by import path")
            else:
                find(trained, name)  # missing weights fail now, not after the rows before
                out.append((f"{name}@trained", name, trained))
    return out


def build(name: str, size: int, weights: Path | None = None) -> torch.nn.Module:
    """The row's model in eval mode: a zoo name (seeded init, or `weights`), or an import path
    `package.module:factory` (called without arguments)."""
    if ":" in name:
        import importlib

        mod, _, fn = name.partition(":")
        return getattr(importlib.import_module(mod), fn)().eval()
    from save_ros.models import zoo

    return zoo.build(name, image_size=size, weights=weights)


def calibration(weights: Path | None, name: str, n: int, size: int, seed: int,
                device: torch.device) -> torch.Tensor:
    """The row's calibration images: zoo.images for random init, held-out scenes if trained."""
    if weights is None:
        from save_ros.models import zoo

        return zoo.images(n, size, seed=seed + 1).to(device)
    from save_ros.models.zoo.scenes import CALIB_SEED, SHAPES, scenes

    classes = record(weights, name).get("classes", len(SHAPES))
    return scenes(n, size, CALIB_SEED + seed, device, classes)[0]


def record(weights: Path, name: str) -> dict:
    """The training record beside trained weights (`<name>.json`), or {} if there is none."""
    path = weights / f"{name}.json" if weights.is_dir() else weights.with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(weights: Path | None, name: str) -> dict:
    """What the row's weights are, for the JSON: init, and a trained model's record summary."""
    if weights is None:
        return {"init": "random", "calibration_images": "zoo.images"}
    rec = record(weights, name)
    test = rec.get("test", {})
    return {"init": "trained", "weights": str(weights), "calibration_images": "scenes",
            "train": {k: rec.get(k) for k in ("classes", "size", "seed", "steps", "images_seen",
                                              "train_seconds", "device", "amp")},
            "test_accuracy": test.get("accuracy"), "test_gap_median": test.get("gap_median")}


def add_arguments(parser: argparse.ArgumentParser, comma_list) -> None:
    """`--trained DIR` and `--init random,trained`."""
    parser.add_argument("--trained", type=Path, default=None,
                        help="folder of `save-ros maintainer train-zoo` weights: each model also "
                             "runs trained (row NAME@trained) beside its random init")
    parser.add_argument("--init", type=comma_list(init_name, "random,trained"), default=None,
                        help="rows per model: random, trained (default: random, and trained "
                             "with --trained)")
