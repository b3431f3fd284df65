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


class SEBackbone(nn.Module):
    """A camera backbone in the MobileNetV3 style: hardswish, squeeze-excite (a functional
    multiply), residual adds; 3 x 224 x 224 -> 10 classes (the GPU stream benchmark's own model)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.Hardswish(),
                          nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) for c in (16, 16, 16))
        self.se = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1),
                                              nn.ReLU(), nn.Conv2d(4, 16, 1), nn.Hardsigmoid())
                                for _ in range(3))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, se in zip(self.blocks, self.se, strict=True):
            y = block(x)
            x = x + y * se(y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def se_backbone() -> nn.Module:
    """Factory: `model: robot_nets:se_backbone` (input_shape [3, 224, 224])."""
    return SEBackbone()


def _stuck_bit(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
    """A memory cell of the output that flips bit 30 of element 0 on every write."""
    out.view(torch.int32).view(-1)[0] ^= 1 << 30


class StuckCellNet(nn.Module):
    """A 3x16x16 classifier whose head output has a stuck memory cell: bit 30 of its first
    element flips right after every write (a forward hook, i.e. in memory, after the producer's
    write sum), in the first run and in every re-run. To SAVE a fault that survives every
    repair, so no result of it is ever verified (the tests that nothing unverified reaches
    ~/output, with the default memory-checksum plan)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.head = nn.Linear(3, 4)
        self.head.register_forward_hook(_stuck_bit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3))) * 1.0


class NoisyNet(nn.Module):
    """A 3x16x16 classifier whose output carries fresh noise on every run: to SAVE, a fault that
    persists through every re-run (its range check fails again on each re-computation), so no
    result of it is ever verified (the tests that nothing unverified reaches ~/output)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x.mean(dim=(2, 3)))
        return h + torch.rand_like(h) * 1e-3
