"""A short seeded SGD fine-tune: its settings, batch order, result record and checks.

`save_ros.faults.training.fine_tune` runs it with faults; this module holds what does not depend
on the fault: the configuration (`FineTuneConfig`), the seeded mini-batch order (`batches`), the
result record (`FineTuneResult`), held-out `accuracy`, and the `finite` / `check_loss` checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from save_ros.errors import UserError


class TrainingFaultError(UserError, ValueError):
    """A training-fault request that cannot run (the message says what to change)."""


SPIKE_WINDOW = 16


@dataclass(frozen=True)
class FineTuneConfig:
    """A short SGD fine-tune: epochs over the train split, batch size, learning rate, seed."""

    epochs: int = 3
    batch: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0  # the order of mini-batches
    checkpoint_every: int = 8  # steps between in-memory checkpoints (rollback)
    max_rollbacks: int = 3
    # Optional loss-spike guard (None = off): a finite loss above spike_factor times the largest
    # of the last SPIKE_WINDOW losses is flagged, and with rollback it is rolled back like NaN.
    spike_factor: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or self.checkpoint_every < 1 or self.lr <= 0:
            raise TrainingFaultError("epochs, batch and checkpoint_every must be >= 1, lr > 0")


@dataclass
class FineTuneResult:
    """What one fine-tune did: losses, whether it crashed, rollbacks, held-out accuracy."""

    steps: int
    losses: list[float]
    crashed: bool
    first_nonfinite_step: int | None  # first NaN/Inf loss (or spike, when rollback acts on it)
    rollbacks: int
    accuracy: float  # held-out, fault-free evaluation of the final weights (nan when crashed)
    fault_step: int | None = None
    first_spike_step: int | None = None  # first loss spike (recorded even without rollback)
    faults_applied: int = 0  # bit faults applied (all steps), or faulty PEs
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def batches(n: int, cfg: FineTuneConfig) -> list[torch.Tensor]:
    """The seeded mini-batch index order of the whole fine-tune (full batches only)."""
    if n < cfg.batch:
        raise TrainingFaultError(f"the train split has {n} samples, fewer than one batch")
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        out.extend(perm[i:i + cfg.batch] for i in range(0, n - cfg.batch + 1, cfg.batch))
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of correct argmax predictions (a non-finite logit row counts as wrong)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        model.train(was)
    ok = (logits.argmax(1) == y) & torch.isfinite(logits).all(1)
    return float(ok.float().mean())


def finite(params: dict[str, torch.Tensor]) -> bool:
    """True when every parameter is finite."""
    return all(bool(torch.isfinite(p).all()) for p in params.values())


def check_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """The loss of one batch in eval mode without gradients (the hand-over check)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(loss_fn(model(x), y))
    finally:
        model.train(was)
