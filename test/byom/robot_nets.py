"""A robot team's own networks, outside the save_ros package (the bring-your-own-model tests)."""

import torch
from torch import nn


class TinyColorNet(nn.Module):
    """A 3-channel 16x16 classifier with 4 classes (seeded init: the same weights every time)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1234)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def tiny_color_net() -> nn.Module:
    """Factory: what `model: robot_nets:tiny_color_net` calls."""
    return TinyColorNet()


class ArmPolicy(nn.Module):
    """A continuous policy: 6 joint positions -> 3 joint velocity commands."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(99)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SlowNet(nn.Module):
    """A 3x16x16 classifier that takes `delay_s` per inference (freshness tests, protect=false:
    the sleep is Python, so an fx trace would drop it)."""

    delay_s = float(__import__("os").environ.get("ROBOT_NETS_SLOW_S", "0.1"))

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyColorNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.delay_s)
        return self.net(x)


class LogMeanNet(nn.Module):
    """log of the mean pixel per channel: -inf for an all-black frame (a model/input problem)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)  # (core's Selection needs a weight to attribute)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.log(x.mean(dim=(2, 3))))
