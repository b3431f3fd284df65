"""scikit-learn's 8x8 digits as tensors: one fixed, seeded, stratified train/calib/test split.

All three digits models share this split, so their accuracies compare and a calibration set
never overlaps the test set. The data ships with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SPLIT_SEED = 0  # fixed for good: changing it changes every committed accuracy
TEST_FRACTION = 0.30
CALIB_FRACTION = 0.10  # of the whole set; the remaining 60 % is for training
SPLITS = ("train", "calib", "test")
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images (float64 holding integers 0..16) and labels; parsed once per process."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    """Indices of each split into `load_digits()`, stratified by class."""
    from sklearn.model_selection import train_test_split

    labels = _digits()[1]
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    train, calib = train_test_split(
        rest,
        test_size=CALIB_FRACTION / (1.0 - TEST_FRACTION),
        stratify=labels[rest],
        random_state=SPLIT_SEED,
    )
    return {"train": np.sort(train), "calib": np.sort(calib), "test": np.sort(test)}


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) float32 in [0, 1] and labels (N,) int64 of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    images, labels = _digits()
    idx = _split_indices()[split]
    # pixel values are integers 0..16; /16 maps them exactly onto [0, 1]
    x = torch.from_numpy(images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(labels[idx].astype(np.int64))
    return x.contiguous(), y


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y, filling with zeros (background)."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out
