"""A robot team's own policy of several inputs, served by save_node from its import path.

`model: user_policy:make_policy` (with `examples/` on PYTHONPATH; in your workspace, your own
`package.module:factory`). The forward takes three inputs, as visuomotor policies do:
- `image`: a wrist camera frame, (3, 32, 32) in [0, 1];
- `state`: the 7 joint positions of a Panda arm, each inside its joint limits;
- `task`: a task id (an integer input, 0..3: which of four skills), looked up in an embedding;
and returns an action chunk of 4 x 7 joint positions. config/user_policy.yaml serves it on three
topics (an image, /joint_states and a std_msgs/Int32MultiArray task id), matched in time.
"""

from __future__ import annotations

import torch
from torch import nn

# Panda joint limits (rad), the box of the `state` input (input_ranges in the config)
LOW = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
HIGH = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
TASKS = 4
CHUNK, JOINTS = 4, 7


class UserPolicy(nn.Module):
    """Image encoder + proprioception + task embedding -> an action chunk (seeded init)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2024)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.state = nn.Linear(JOINTS, 16)
        self.task = nn.Embedding(TASKS, 16)
        self.head = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, CHUNK * JOINTS))

    def forward(self, image: torch.Tensor, state: torch.Tensor,
                task: torch.Tensor) -> torch.Tensor:
        features = torch.cat([torch.flatten(self.encoder(image), 1), self.state(state),
                              self.task(task[:, 0])], dim=1)
        return self.head(features).reshape(-1, CHUNK, JOINTS)


def make_policy() -> nn.Module:
    """Factory: what `model: user_policy:make_policy` calls."""
    return UserPolicy()
