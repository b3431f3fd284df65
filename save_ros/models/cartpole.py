"""`cartpole_policy`: an MLP policy for gymnasium CartPole-v1, cloned from a linear expert.

The expert is a linear state-feedback law, push right iff
`x + x_dot + 10 theta + 2 theta_dot > 0`; it balances every seeded episode we tried for the full
500 steps. The policy is trained (supervised) on states from expert rollouts where, in some
episodes, a share of the actions is replaced by random ones (DART-style noise), so it also sees
the states a slightly wrong action leads to; every state is labelled with the expert's action.

Seeds: training rollouts use env seeds from 0, `calib` from 20_000, `test` from 30_000, and the
success-rate episodes of `evaluate` from 10_000, so none of them overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import nn

ENV_ID = "CartPole-v1"
MAX_STEPS = 500  # CartPole-v1 truncates here: reaching it without termination is a success
EXPERT_GAINS = np.array([1.0, 1.0, 10.0, 2.0])  # on (x, x_dot, theta, theta_dot)

# Input box (one interval per state component), see docs/results/models.md for the derivation:
# positions are the termination limits of CartPole-v1 (|x| > 2.4, |theta| > 12 deg end the
# episode, so the policy is never asked about a state beyond them); velocities are the largest
# |x_dot| = 2.26 and |theta_dot| = 2.23 seen over the 300 training rollouts (expert with 0-30 %
# random actions; the clean expert alone stays within 0.44 and 0.60), times 1.25, rounded up.
X_LIMIT = 2.4
THETA_LIMIT = 12 * 2 * math.pi / 360
INPUT_HIGH = (X_LIMIT, 2.9, THETA_LIMIT, 2.8)
INPUT_LOW = tuple(-v for v in INPUT_HIGH)

TRAIN_SEED0, EVAL_SEED0, CALIB_SEED0, TEST_SEED0 = 0, 10_000, 20_000, 30_000
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3)  # share of random actions, cycled over the rollouts
SPLIT_EPISODES = {"train": 300, "calib": 20, "test": 40}
SPLIT_SEED0 = {"train": TRAIN_SEED0, "calib": CALIB_SEED0, "test": TEST_SEED0}


class CartPolePolicy(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear: state (N, 4) -> action logits (N, 2) (0 left, 1 right)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Action logits (N, 2)."""
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def input_scale() -> torch.Tensor:
    """Per-component scale that maps the input box onto [-1, 1] (used while training)."""
    return 1.0 / torch.tensor(INPUT_HIGH, dtype=torch.float32)


@torch.no_grad()
def fold_input_scale(policy: CartPolePolicy, scale: torch.Tensor) -> None:
    """Fold `x * scale` into fc1, so the shipped policy takes raw states and has no extra op."""
    policy.fc1.weight.mul_(scale.unsqueeze(0))


def expert_action(states: np.ndarray) -> np.ndarray:
    """The expert's actions (int64) for states (N, 4) or one state (4,)."""
    return (np.asarray(states, dtype=np.float64) @ EXPERT_GAINS > 0).astype(np.int64)


def _make_env():  # noqa: ANN202 - gymnasium is imported lazily, so no annotation here
    import gymnasium as gym

    return gym.make(ENV_ID)


def expert_rollouts(
    episodes: int, seed0: int, noise_levels: tuple[float, ...] = NOISE_LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """States (N, 4) float32 visited by the noisy expert, and the expert's action at each."""
    env = _make_env()
    rng = np.random.default_rng(seed0)
    states: list[np.ndarray] = []
    for ep in range(episodes):
        noise = noise_levels[ep % len(noise_levels)]
        obs, _ = env.reset(seed=seed0 + ep)
        for _ in range(MAX_STEPS):
            states.append(obs)
            action = int(expert_action(obs))
            if noise and rng.random() < noise:
                action = int(rng.integers(2))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    env.close()
    x = np.stack(states).astype(np.float32)
    return x, expert_action(x)


@lru_cache(maxsize=3)
def _split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    return expert_rollouts(SPLIT_EPISODES[split], SPLIT_SEED0[split])


def policy_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """States (N, 4) float32 and expert actions (N,) int64 of one split (cached per process)."""
    if split not in SPLIT_EPISODES:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_EPISODES)}")
    x, y = _split_arrays(split)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def run_episodes(
    policy: Callable[[torch.Tensor], torch.Tensor], episodes: int, seed0: int = EVAL_SEED0
) -> list[int]:
    """Run seeded CartPole-v1 episodes with the greedy policy; the length of each episode.

    An episode of `MAX_STEPS` steps that did not terminate is a success; a shorter one failed.
    """
    env = _make_env()
    lengths: list[int] = []
    with torch.no_grad():
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed0 + ep)
            steps = 0
            for steps in range(1, MAX_STEPS + 1):  # noqa: B007 - steps is read after the loop
                logits = policy(torch.from_numpy(obs).reshape(1, 4))
                obs, _, terminated, truncated, _ = env.step(int(torch.argmax(logits[0])))
                if terminated:
                    steps -= 1  # the terminating step does not count as balanced
                    break
                if truncated:
                    break
            lengths.append(steps)
    env.close()
    return lengths


def success_rate(
    policy: Callable[[torch.Tensor], torch.Tensor], episodes: int, seed0: int = EVAL_SEED0
) -> float:
    """Share of seeded episodes that reach 500 steps without termination."""
    lengths = run_episodes(policy, episodes, seed0)
    return sum(n == MAX_STEPS for n in lengths) / len(lengths)
