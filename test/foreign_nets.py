"""Tiny models that the CLI tests load by import path (`foreign_nets:make_classifier`)."""

import torch
from torch import nn


def make_classifier() -> nn.Module:
    """A small CNN: 3x8x8 images to 5 classes, seeded weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


def make_regressor() -> nn.Module:
    """An MLP from 6 features to 2 continuous outputs, seeded weights."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def not_a_model() -> int:
    """A factory that returns something else."""
    return 3


def broken() -> nn.Module:
    """A factory that raises."""
    raise RuntimeError("no GPU here")


LAYERS = 3  # not callable
