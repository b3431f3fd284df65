"""One `robustness training` trial as a pure function of its key, for `save_ros.eval.shard`.

Trial (config c, trial t) fine-tunes the bundled classifier with fault configuration c and fault
seed `fault_seed(seed, c, t)` (the training seed stays the campaign seed), and, with rollback,
repeats the fine-tune with rollback when the plain one had a NaN/Inf loss (or a spike). A worker
prepares a `TrainContext` once (the data and the fault-free reference fine-tune every trial is
classified against) and runs trials by `TrialKey("train", c, t)`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from save_ros.eval.trial import TrialKey
from save_ros.faults import ProcessingElementFault, RandomFlips, StuckAt
from save_ros.faults.training import (
    FaultTarget,
    FineTuneConfig,
    TrainingFault,
    TrainingFaultError,
    classify,
    fine_tune,
    result_record,
)


def build_faults(targets: list[str], flips: tuple[int, ...], stuck_bit: int | None,
                 pe_bits: tuple[int, ...]) -> list[TrainingFault]:
    """The fault configurations of a campaign, in report order."""
    out: list[TrainingFault] = []
    for t in targets:
        try:
            kind = FaultTarget(t)
        except ValueError:
            raise TrainingFaultError(f"unknown target {t!r} in --targets; choose from "
                                     f"{', '.join(k.value for k in FaultTarget)}") from None
        if kind is FaultTarget.PE:
            out.extend(TrainingFault(kind, ProcessingElementFault(bit=b)) for b in pe_bits)
            continue
        out.extend(TrainingFault(kind, RandomFlips(n)) for n in flips)
        if stuck_bit is not None:
            out.append(TrainingFault(kind, StuckAt(stuck_bit, 1)))
    return out


def fault_seed(seed: int, config: int, trial: int) -> int:
    """The fault seed of one trial (the training seed stays the campaign seed)."""
    return (seed * 1_000_003 + config) * 10_007 + trial


@dataclass(frozen=True)
class TrainSpec:
    """Everything that decides a training campaign's trials (the `robustness training` options)."""

    model: str
    targets: str
    flips: tuple[int, ...]
    stuck_bit: int
    pe_bits: tuple[int, ...]
    trials: int
    epochs: int
    batch: int
    lr: float
    seed: int
    threshold: float
    rollback: bool
    spike_factor: float | None
    checkpoint_every: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSpec:
        """From the parsed `robustness training` options."""
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})

    def faults(self) -> list[TrainingFault]:
        """The fault configurations, in report order."""
        return build_faults([t for t in self.targets.split(",") if t], tuple(self.flips),
                            None if self.stuck_bit < 0 else self.stuck_bit, tuple(self.pe_bits))

    def fine_tune_config(self) -> FineTuneConfig:
        """The fine-tune every trial runs."""
        return FineTuneConfig(epochs=self.epochs, batch=self.batch, lr=self.lr, seed=self.seed,
                              checkpoint_every=self.checkpoint_every,
                              spike_factor=self.spike_factor)

    def keys(self) -> list[TrialKey]:
        """Every trial, in report order (config, trial)."""
        return [TrialKey("train", c, t) for c in range(len(self.faults()))
                for t in range(self.trials)]


@dataclass(frozen=True)
class TrainJob:
    """A training campaign for `save_ros.eval.shard` workers (CPU: the fine-tune runs there)."""

    spec: TrainSpec
    threads: int
    key: str
    device: str = "cpu"

    def prepare(self, device: str) -> TrainContext:
        """Load the data and run the fault-free reference fine-tune."""
        return TrainContext(self.spec)


class TrainContext:
    """A prepared training campaign: data, fault configurations, the reference fine-tune."""

    def __init__(self, spec: TrainSpec) -> None:
        from save_ros import models

        model_spec = models.get_spec(spec.model)
        if model_spec.task.value != "classification":
            raise TrainingFaultError(f"{spec.model} is a {model_spec.task.value} model; the "
                                     "training campaign fine-tunes classifiers (e.g. digits_cnn)")
        self.spec, self.faults, self.cfg = spec, spec.faults(), spec.fine_tune_config()
        self.train = models.dataset(spec.model, "train")
        self.test = models.dataset(spec.model, "test")
        self.ref = fine_tune(models.load(spec.model), self.train, self.test, self.cfg)
        if self.ref.crashed:
            raise TrainingFaultError("the fault-free fine-tune diverges; lower --lr")
        self.accuracy_before = models.evaluate(spec.model, models.load(spec.model))

    def meta(self) -> dict:
        """The reference fine-tune and the fine-tune config, for the result."""
        return {"fine_tune": asdict(self.cfg) | {"optimizer": "SGD"},
                "reference": {"accuracy": self.ref.accuracy, "final_loss": self.ref.losses[-1],
                              "steps": self.ref.steps, "accuracy_before": self.accuracy_before}}

    def _one(self, fault: TrainingFault, seed: int, rollback: bool = False):
        from save_ros import models

        r = fine_tune(models.load(self.spec.model), self.train, self.test, self.cfg, fault, seed,
                      rollback=rollback)
        rec = result_record(r, classify(r, self.ref.accuracy, self.spec.threshold))
        rec["fault_seed"] = seed
        return r, rec

    def run(self, key: TrialKey) -> dict:
        """One faulty fine-tune (and its rollback twin): {"plain", "rollback", seed, key}."""
        fault = self.faults[key.point]
        seed = fault_seed(self.spec.seed, key.point, key.trial)
        r, plain = self._one(fault, seed)
        rolled = None
        if self.spec.rollback:  # a run without NaN/Inf loss (nor spike) is the same with it
            rolled = plain
            if r.first_nonfinite_step is not None or r.first_spike_step is not None:
                rolled = self._one(fault, seed, rollback=True)[1]
        return {"method": key.method, "point": key.point, "trial": key.trial, "seed": seed,
                "plain": plain, "rollback": rolled}
