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


class _Policy(nn.Module):
    """Image (3x8x8) + joint state (7) -> an action chunk (N, 16, 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.joint = nn.Linear(7, 16)
        self.head = nn.Linear(4 * 4 + 16, 16 * 7)

    def forward(self, image: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(image)), 2).flatten(1)
        h = torch.cat([f, torch.tanh(self.joint(joints))], dim=1)
        return self.head(h).reshape(-1, 16, 7)


def make_policy() -> nn.Module:
    """A two-input visuomotor policy, seeded weights."""
    torch.manual_seed(2)
    return _Policy()


class _TokenPolicy(nn.Module):
    """Token ids (8, integer) + a state (4) -> 3 actions."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.state = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(tokens).mean(1) + self.state(state))


def make_token_policy() -> nn.Module:
    """A policy with an integer input, seeded weights."""
    torch.manual_seed(3)
    return _TokenPolicy()
