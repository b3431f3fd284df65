"""`digits_cnn`: a plain convolutional classifier for the 8x8 digits (the bundled default)."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Conv-ReLU x2, max-pool, conv-ReLU, flatten, two linear layers; input (N, 1, 8, 8)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 8x8 -> 4x4
        self.conv3 = nn.Conv2d(32, 32, kernel_size=3, padding=1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10)."""
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc2(self.relu4(self.fc1(self.flatten(x))))
