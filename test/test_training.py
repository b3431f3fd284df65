"""Faults during fine-tuning: determinism, crash and rollback, outcome classification."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from save_ros import models
from save_ros.core.bits import get_bit, to_bits
from save_ros.faults import BitFault, FaultOp, ProcessingElementFault, RandomFlips, StuckAt
from save_ros.faults.training import (
    FaultTarget,
    FineTuneConfig,
    FineTuneResult,
    Outcome,
    TrainingFault,
    TrainingFaultError,
    _ActivationHooks,
    classify,
    fine_tune,
)

# 256 training samples, batch 64, 2 epochs: 8 SGD steps, checkpoints every 2
CFG = FineTuneConfig(epochs=2, batch=64, checkpoint_every=2)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    x, y = models.dataset("digits_cnn", "train")
    xt, yt = models.dataset("digits_cnn", "test")
    return (x[:256], y[:256]), (xt[:200], yt[:200])


@pytest.fixture(scope="module")
def reference(data):
    return fine_tune(models.load("digits_cnn"), *data, CFG)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fault_free_fine_tune_is_deterministic(data, reference):
    again = fine_tune(models.load("digits_cnn"), *data, CFG)
    assert again.losses == reference.losses and _same_state(again.state, reference.state)
    assert not again.crashed and again.accuracy == reference.accuracy
    # rollback armed but never needed changes nothing (checkpoints only copy state)
    armed = fine_tune(models.load("digits_cnn"), *data, CFG, rollback=True)
    assert armed.rollbacks == 0 and _same_state(armed.state, reference.state)
    # ...and the training seed really matters, so the equality above is not vacuous
    other = fine_tune(models.load("digits_cnn"), *data, FineTuneConfig(2, 64, seed=1))
    assert not _same_state(other.state, reference.state)


# An exponent flip (bit 30) of one conv3 weight gradient at step 3: the update makes the weight
# ~1e32 times larger, the loss of step 4 is ~1e32 and step 5 overflows to NaN.
GRAD_FLIP = TrainingFault(FaultTarget.GRADIENTS, RandomFlips(1), step=3,
                          explicit=(BitFault("conv3.weight", 300, 30),))


def test_gradient_exponent_flip_crashes_and_rollback_recovers(data, reference):
    crashed = fine_tune(models.load("digits_cnn"), *data, CFG, GRAD_FLIP)
    assert crashed.faults_applied == 1 and crashed.fault_step == 3
    assert crashed.crashed and crashed.first_nonfinite_step == 5
    assert not math.isfinite(crashed.losses[-1]) and crashed.losses[4] > 1e20
    assert classify(crashed, reference.accuracy, 0.02) is Outcome.CRASH

    rolled = fine_tune(models.load("digits_cnn"), *data, CFG, GRAD_FLIP, rollback=True)
    assert not rolled.crashed and rolled.rollbacks >= 1 and rolled.first_nonfinite_step == 5
    assert classify(rolled, reference.accuracy, 0.02) is Outcome.NO_EFFECT
    # the transient fault is not replayed, so the recovered run ends where the clean one does
    assert _same_state(rolled.state, reference.state)


def test_stuck_gradient_bit_defeats_rollback(data, reference):
    fault = TrainingFault(FaultTarget.GRADIENTS, StuckAt(30, 1),
                          explicit=(BitFault("conv3.weight", 300, 30, FaultOp.SET1),))
    cfg = FineTuneConfig(epochs=2, batch=64, checkpoint_every=2, max_rollbacks=2)
    r = fine_tune(models.load("digits_cnn"), *data, cfg, fault, rollback=True)
    assert r.crashed and r.rollbacks == 2
    assert classify(r, reference.accuracy, 0.02) is Outcome.CRASH


def test_stuck_weight_cell_stays_stuck_in_the_result(data):
    fault = TrainingFault(FaultTarget.WEIGHTS, StuckAt(29, 0),
                          explicit=(BitFault("fc1.weight", 7, 29, FaultOp.SET0),))
    r = fine_tune(models.load("digits_cnn"), *data, CFG, fault)
    assert int(get_bit(r.state["fc1.weight"], 7, 29)) == 0
    assert r.faults_applied == CFG.epochs * 4 + 1  # every step, and the handed-over model


def test_activation_fault_is_bit_exact_and_passes_the_gradient():
    layer = nn.Linear(3, 2)
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.tensor([[1.0, 2.0, 3.0]])
    clean = layer(x).detach()
    with _ActivationHooks(model, [BitFault("0", 1, 22)]) as hooks:
        out = layer(x)
    assert hooks.applied == 1
    assert to_bits(out[0, 1].item(), torch.float32) == to_bits(clean[0, 1].item(),
                                                              torch.float32) ^ (1 << 22)
    out.sum().backward()
    assert torch.equal(layer.weight.grad, x.expand(2, 3))  # d(sum)/dW, as without the fault


def _result(crashed: bool, acc: float) -> FineTuneResult:
    return FineTuneResult(steps=1, losses=[0.0], crashed=crashed, first_nonfinite_step=None,
                          rollbacks=0, accuracy=acc)


def test_outcome_classification_is_exact():
    assert classify(_result(True, 0.9), 0.9, 0.02) is Outcome.CRASH
    assert classify(_result(False, math.nan), 0.9, 0.02) is Outcome.CRASH
    # exact binary fractions: a drop equal to the threshold is not "more than" it
    assert classify(_result(False, 0.5), 0.75, 0.25) is Outcome.NO_EFFECT
    assert classify(_result(False, 0.4375), 0.75, 0.25) is Outcome.DEGRADED
    assert classify(_result(False, 0.875), 0.75, 0.0) is Outcome.NO_EFFECT  # better is fine
    assert classify(_result(False, 0.75), 0.75, 0.0) is Outcome.NO_EFFECT
    with pytest.raises(TrainingFaultError, match=">= 0"):
        classify(_result(False, 0.5), 0.75, -0.1)


def test_bad_fault_requests_raise_clear_errors(data):
    with pytest.raises(TrainingFaultError, match="target 'pe'"):
        TrainingFault(FaultTarget.WEIGHTS, ProcessingElementFault())
    with pytest.raises(TrainingFaultError, match="target 'pe'"):
        TrainingFault(FaultTarget.PE, RandomFlips(1))
    with pytest.raises(ValueError):
        TrainingFault("memory", RandomFlips(1))
    with pytest.raises(TrainingFaultError, match="outside 0..7"):
        fine_tune(models.load("digits_cnn"), *data, CFG,
                  TrainingFault(FaultTarget.WEIGHTS, RandomFlips(1), step=8))
    with pytest.raises(TrainingFaultError, match="fewer than one batch"):
        fine_tune(models.load("digits_cnn"), (data[0][0][:10], data[0][1][:10]), data[1], CFG)


def test_loss_spike_guard_rolls_back_a_finite_blow_up(data, reference):
    # bit 30 of one output bias at the last step: the loss jumps to ~1e36 but stays finite
    fault = TrainingFault(FaultTarget.WEIGHTS, RandomFlips(1), step=7,
                          explicit=(BitFault("fc2.bias", 1, 30),))
    cfg = FineTuneConfig(epochs=2, batch=64, checkpoint_every=2, spike_factor=1000.0)
    silent = fine_tune(models.load("digits_cnn"), *data, cfg, fault)
    assert not silent.crashed and silent.first_spike_step == 7 and silent.losses[-1] > 1e30
    assert classify(silent, reference.accuracy, 0.02) is Outcome.DEGRADED
    # NaN/Inf-only rollback does not see it; the spike guard does, and recovers
    nan_only = fine_tune(models.load("digits_cnn"), *data, CFG, fault, rollback=True)
    assert nan_only.rollbacks == 0
    guarded = fine_tune(models.load("digits_cnn"), *data, cfg, fault, rollback=True)
    assert guarded.rollbacks == 1 and _same_state(guarded.state, reference.state)


def test_hand_over_check_sees_a_corrupted_last_update(data, reference):
    # a gradient exponent flip at the last step: no later forward pass sees it during training
    fault = TrainingFault(FaultTarget.GRADIENTS, RandomFlips(1), step=7,
                          explicit=(BitFault("conv3.weight", 300, 30),))
    plain = fine_tune(models.load("digits_cnn"), *data, CFG, fault, rollback=True)
    assert plain.rollbacks == 0 and plain.first_spike_step is None
    assert classify(plain, reference.accuracy, 0.02) is Outcome.DEGRADED
    cfg = FineTuneConfig(epochs=2, batch=64, checkpoint_every=2, spike_factor=1000.0)
    guarded = fine_tune(models.load("digits_cnn"), *data, cfg, fault, rollback=True)
    assert guarded.first_spike_step == 8 and guarded.rollbacks >= 1
    assert _same_state(guarded.state, reference.state)
