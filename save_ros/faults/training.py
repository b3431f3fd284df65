"""Faults during training: a short seeded fine-tune with bit faults in weights, activations,
gradients or a processing element, and what they do to it.

A fine-tune runs SGD over a fixed, seeded order of mini-batches (equal batch sizes, so activation
sites keep their shape). A fault is one of:

- a transient memory fault (`RandomFlips`, `BitErrorRate`, `BitPositions`): drawn once from the
  trial seed and applied at one step (drawn from the seed too, unless given): weights before that
  step's forward pass (the flipped value stays until SGD moves it), activations during that
  forward pass, gradients after that step's backward pass;
- a stuck memory cell (`StuckAt`): the same elements forced at EVERY step (weights after every
  update, activations in every forward pass, gradients after every backward pass);
- a faulty processing element (`ProcessingElementFault`): every forward pass goes through
  `save_ros.faults.PEFaults` (one faulty PE per Linear/Conv2d layer; the backward pass is not
  corrupted).

Activation faults change the value a layer passes on but let its gradient through unchanged
(straight-through), so a transient upset does not also silence the layers before it.

Outcome of a faulty fine-tune, against the fault-free fine-tune with the same training seed:
`crash` (a NaN/Inf loss, including the hand-over check: the loss of the last batch once more
with the final weights, which sees a corruption of the last update), `degraded` (held-out accuracy,
measured without faults on the weights the fine-tune produced, drops by more than the threshold)
or `no_effect`. With `rollback=True` a NaN/Inf loss restores the last in-memory checkpoint
(model and optimizer, taken every `checkpoint_every` steps) and training goes on from there; a
failure before the next checkpoint rolls back one checkpoint further (a corruption can sit in a
checkpoint while the loss is still finite). A transient fault is not re-applied, a stuck cell or
faulty PE is; after `max_rollbacks` rollbacks the run counts as a crash. An optional loss-spike
guard (`spike_factor`) also rolls back a finite loss that jumps far above the recent ones.
"""

from __future__ import annotations

import copy
import enum
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from save_ros.faults import (
    BitErrorRate,
    BitFault,
    BitPositions,
    PEFaults,
    ProcessingElementFault,
    RandomFlips,
    Site,
    StuckAt,
    activation_sites,
    apply_bit_faults,
    model_to_dict,
    sample_pe_faults,
    weight_sites,
)
from save_ros.faults.faultmodels import _generator
from save_ros.faults.finetune import (
    SPIKE_WINDOW,
    FineTuneConfig,
    FineTuneResult,
    TrainingFaultError,
    accuracy,
    batches,
    check_loss,
    finite,
)

# the fine-tune's own names are re-exported: callers import the whole training API from here
__all__ = [
    "SPIKE_WINDOW", "TRANSIENT", "FaultTarget", "FineTuneConfig", "FineTuneResult", "Outcome",
    "TrainingFault", "TrainingFaultError", "accuracy", "batches", "check_loss", "classify",
    "fine_tune", "finite", "result_record",
]


class FaultTarget(str, enum.Enum):
    """Which memory of the training step a fault hits."""

    WEIGHTS = "weights"
    ACTIVATIONS = "activations"
    GRADIENTS = "gradients"
    PE = "pe"  # a faulty processing element (forward passes)


class Outcome(str, enum.Enum):
    """What a fault did to a fine-tune."""

    NO_EFFECT = "no_effect"
    CRASH = "crash"
    DEGRADED = "degraded"  # silent: finite loss, but held-out accuracy dropped


TRANSIENT = (RandomFlips, BitErrorRate, BitPositions)


@dataclass(frozen=True)
class TrainingFault:
    """A fault for one fine-tune: where, which fault model, and (transients) at which step.

    `explicit` replaces the draw with these concrete faults (the model still says transient or
    stuck); sites are parameter names for weights and gradients, module paths for activations.
    """

    target: FaultTarget
    model: RandomFlips | BitErrorRate | BitPositions | StuckAt | ProcessingElementFault
    step: int | None = None  # transient faults: None = drawn from the trial seed
    explicit: tuple[BitFault, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", FaultTarget(self.target))
        object.__setattr__(self, "explicit", tuple(self.explicit))
        is_pe = isinstance(self.model, ProcessingElementFault)
        if is_pe != (self.target is FaultTarget.PE):
            raise TrainingFaultError(
                "a ProcessingElementFault goes with target 'pe', and target 'pe' needs a "
                f"ProcessingElementFault (got {type(self.model).__name__} on {self.target.value})"
            )

    @property
    def persistent(self) -> bool:
        """Stuck cells and faulty PEs act at every step; flips happen once."""
        return not isinstance(self.model, TRANSIENT)

    def to_dict(self) -> dict:
        """JSON-safe form."""
        return {"target": self.target.value, "model": model_to_dict(self.model),
                "step": self.step, "explicit": [f.to_list() for f in self.explicit]}


class _StraightThrough(torch.autograd.Function):
    """Forward: the corrupted value, bit for bit. Backward: the gradient passes unchanged."""

    @staticmethod
    def forward(ctx, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        return corrupted

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _ActivationHooks:
    """Forward hooks that apply bit faults to layer outputs while keeping the gradient path."""

    def __init__(self, model: nn.Module, faults: Sequence[BitFault]) -> None:
        self.by_site: dict[str, list[BitFault]] = {}
        for f in faults:
            self.by_site.setdefault(f.site, []).append(f)
        modules = dict(model.named_modules())
        self.modules = {s: modules[s] for s in self.by_site}
        self.handles: list = []
        self.applied = 0

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            with torch.no_grad():
                bad = output.detach().clone().contiguous()
                self.applied += len(apply_bit_faults({site: bad}, self.by_site[site]))
            return _StraightThrough.apply(output, bad)
        return hook

    def __enter__(self) -> _ActivationHooks:
        for site, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _sites(fault: TrainingFault, model: nn.Module, example: torch.Tensor) -> list[Site]:
    if fault.target is FaultTarget.ACTIVATIONS:
        # probe a copy: a probe in train mode would move BatchNorm statistics of the real model
        return activation_sites(copy.deepcopy(model), example)
    return weight_sites({k: p.detach() for k, p in model.named_parameters()})


def fine_tune(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    cfg: FineTuneConfig = FineTuneConfig(),
    fault: TrainingFault | None = None,
    fault_seed: int = 0,
    rollback: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> FineTuneResult:
    """Fine-tune `model` in place (SGD with momentum), with an optional fault; see the module."""
    x, y = train
    order = batches(len(x), cfg)
    total = len(order)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    params = {k: p for k, p in model.named_parameters()}
    gen = _generator(fault_seed)  # TypeError for a non-int seed
    faults: list[BitFault] = []
    pe_specs = []
    fault_step = None
    if fault is not None:
        if fault.target is FaultTarget.PE:
            pe_specs = sample_pe_faults(model, fault.model, seed=gen)
        elif fault.explicit:
            faults = list(fault.explicit)
        else:
            faults = fault.model.sample(_sites(fault, model, x[order[0]]), gen)
        if not fault.persistent:
            fault_step = fault.step if fault.step is not None else int(
                torch.randint(0, total, (1,), generator=gen))
            if not 0 <= fault_step < total:
                raise TrainingFaultError(f"fault step {fault_step} outside 0..{total - 1}")
    fired = False
    applied = 0

    def acts(step: int) -> bool:
        if fault is None or fault.target is not FaultTarget.ACTIVATIONS:
            return False
        return fault.persistent or (step == fault_step and not fired)

    def stick(kind: FaultTarget, tensors: dict[str, torch.Tensor]) -> int:
        if fault is None or fault.target is not kind or not fault.persistent:
            return 0
        return len(apply_bit_faults(tensors, faults))

    def snapshot() -> tuple[int, dict, dict]:
        return step, copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    step = 0
    checkpoints = [snapshot()]
    losses: list[float] = []
    first_bad: int | None = None
    first_spike: int | None = None
    recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
    rollbacks = 0
    crashed = False
    failed_at: int | None = None  # step of the last failure
    restored = 0  # step of the checkpoint restored after it
    while True:
        bad = False
        while step < total:
            idx = order[step]
            weights = {k: p.detach() for k, p in params.items()}
            if fault is not None and fault.target is FaultTarget.WEIGHTS:
                if not fault.persistent and step == fault_step and not fired:
                    applied += len(apply_bit_faults(weights, faults))
                    fired = True
                applied += stick(FaultTarget.WEIGHTS, weights)
            opt.zero_grad(set_to_none=False)
            with _ActivationHooks(model, faults if acts(step) else []) as hooks, \
                    PEFaults(model, pe_specs):
                loss = loss_fn(model(x[idx]), y[idx])
            applied += hooks.applied
            if fault is not None and fault.target is FaultTarget.ACTIVATIONS:
                fired = fired or step == fault_step
            value = float(loss.detach())
            losses.append(value)
            spike = (cfg.spike_factor is not None and math.isfinite(value) and bool(recent)
                     and value > cfg.spike_factor * max(recent))
            if spike and first_spike is None:
                first_spike = step
            if not math.isfinite(value) or (spike and rollback):
                bad = True
                break
            recent.append(value)
            loss.backward()
            grads = {k: p.grad for k, p in params.items()}
            if fault is not None and fault.target is FaultTarget.GRADIENTS:
                if not fault.persistent and step == fault_step and not fired:
                    applied += len(apply_bit_faults(grads, faults))
                    fired = True
                applied += stick(FaultTarget.GRADIENTS, grads)
            opt.step()
            step += 1
            if rollback and step % cfg.checkpoint_every == 0 and finite(params):
                checkpoints.append(snapshot())
                if len(checkpoints) > cfg.max_rollbacks + 1:
                    del checkpoints[1]  # the initial state stays as the last resort
        if not bad:
            # Hand-over check: the last update (or a fault in it) has not met a forward pass yet,
            # so the trainer computes the loss of the last batch once more with the final weights
            # (eval mode: no BatchNorm statistics move) and treats it like a step's loss.
            value = check_loss(model, loss_fn, x[order[-1]], y[order[-1]])
            spike = (cfg.spike_factor is not None and math.isfinite(value) and bool(recent)
                     and value > cfg.spike_factor * max(recent))
            if spike and first_spike is None:
                first_spike = step
            bad = not math.isfinite(value) or not finite(params) or (spike and rollback)
        if not bad:
            break
        if first_bad is None:
            first_bad = step
        if not rollback or rollbacks >= cfg.max_rollbacks:
            crashed = True
            break
        rollbacks += 1
        # Failing again without getting past the previous failure means the checkpoint we
        # restored holds a corruption that had not made the loss NaN yet when it was taken:
        # go strictly further back than that checkpoint this time.
        limit = restored if failed_at is not None and step <= failed_at else step + 1
        failed_at = step
        keep = [c for c in checkpoints if c[0] < limit] or checkpoints[:1]
        checkpoints[:] = keep
        restored, model_state, opt_state = keep[-1]
        step = restored
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    if not crashed:  # a stuck weight cell is stuck in the model the fine-tune hands over, too
        applied += stick(FaultTarget.WEIGHTS, {k: p.detach() for k, p in params.items()})
    applied += len(pe_specs)
    acc = math.nan if crashed else accuracy(model, *test)
    return FineTuneResult(
        steps=total, losses=losses, crashed=crashed, first_nonfinite_step=first_bad,
        first_spike_step=first_spike,
        rollbacks=rollbacks, accuracy=acc, fault_step=fault_step, faults_applied=applied,
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def classify(result: FineTuneResult, reference_accuracy: float, threshold: float) -> Outcome:
    """crash / degraded (drop > threshold vs the fault-free reference) / no effect."""
    if threshold < 0:
        raise TrainingFaultError(f"the degradation threshold must be >= 0, not {threshold}")
    if result.crashed or not math.isfinite(result.accuracy):
        return Outcome.CRASH
    if reference_accuracy - result.accuracy > threshold:
        return Outcome.DEGRADED
    return Outcome.NO_EFFECT


def result_record(result: FineTuneResult, outcome: Outcome) -> dict:
    """JSON-ready summary of one faulty fine-tune (without the weights)."""
    d = {f.name: getattr(result, f.name) for f in fields(result)
         if f.name not in ("state", "losses")}
    d["final_loss"] = result.losses[-1] if result.losses else None
    d["outcome"] = outcome.value
    return d
