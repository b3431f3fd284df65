"""Weight-scaling hardening: exact rescale, the objective and its minimum, where faults land."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from save_ros import models
from save_ros.core.bits import flipped, to_bits
from save_ros.eval.scaling_method import WeightScaling
from save_ros.faults import RandomFlips, inject_weights
from save_ros.faults.scaling import (
    NONFINITE_PENALTY,
    LayerBounds,
    ScaledLayer,
    ScalingError,
    admissible,
    choose_scale,
    default_candidates,
    encode,
    flip_errors,
    harden,
    objective,
)


@pytest.fixture(scope="module")
def cnn_and_data():
    torch.set_num_threads(1)
    x, _ = models.dataset("digits_cnn", "test")
    calib, _ = models.dataset("digits_cnn", "calib")
    return models.load("digits_cnn"), x[:128], calib


@pytest.fixture(scope="module")
def fp32_method(cnn_and_data):
    model, _, calib = cnn_and_data
    method = WeightScaling("fp32")
    method.prepare(model, None, (calib, None))
    return method


def test_fp32_power_of_two_rescale_is_bit_exact(cnn_and_data, fp32_method):
    model, x, calib = cnn_and_data
    hard, report = fp32_method.model, fp32_method.report
    assert all(math.log2(c.scale).is_integer() for c in report.choices)
    assert any(c.scale != 1.0 for c in report.choices)  # it really rescaled something
    assert isinstance(hard.conv1, ScaledLayer) and isinstance(hard.fc2, ScaledLayer)
    with torch.no_grad():
        assert torch.equal(hard(x), model(x))


@pytest.mark.parametrize(("fmt", "rel_tol"), [("fp16", 2e-3), ("int8", 5e-2)])
def test_fp16_and_int8_within_stated_tolerance(cnn_and_data, fmt, rel_tol):
    model, x, calib = cnn_and_data
    with torch.no_grad():
        ref = model(x)
        for policy in ("unit", "optimal"):
            out = harden(model, fmt, policy=policy, calibration=calib)[0](x)
            # tolerance relative to the largest logit; the classes must agree almost everywhere
            assert float((out - ref).abs().max()) <= rel_tol * float(ref.abs().max())
            assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.99


def test_stored_dtypes_and_unit_baseline(cnn_and_data):
    model, _, calib = cnn_and_data
    for fmt, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("int8", torch.int8)):
        hard, report = harden(model, fmt, policy="unit", calibration=calib)
        assert hard.conv2.weight.dtype == dtype and hard.conv2.bias.dtype == torch.float32
        if fmt == "int8":  # the usual max-abs scale: the largest weight maps to 127
            assert int(hard.fc1.weight.abs().max()) == 127
        else:
            assert all(c.scale == 1.0 for c in report.choices)


def test_flip_errors_match_single_bit_flips():
    w = torch.tensor([0.5, -0.03, 0.0, 3.0e-5], dtype=torch.float32)
    got = flip_errors(w)
    for bit in range(32):
        d = flipped(w, bit).double() - w.double()
        want = torch.where(torch.isfinite(d), d * d, torch.inf)
        assert torch.equal(got[bit], want)
    # bit 30 of 0.5 (exponent 126 -> 254): 0.5 * 2**128
    assert got[30, 0] == (0.5 * 2.0**128 - 0.5) ** 2


def test_scaling_moves_weights_out_of_the_blow_up_exponents():
    w = torch.full((8,), 0.5)
    lam = 32e-4
    plain = objective(w, 1.0, "fp32", lam)
    scaled = objective(w, 4.0, "fp32", lam)  # stored 2.0: exponent 128, bit 30 set
    # at s=1 the bit-30 flip gives 0.5 * 2**128; at s=4 it gives 2**-127 / 4, an error of ~0.5
    assert plain.flip_mse > 1e70 and scaled.flip_mse < plain.flip_mse / 1e30
    assert plain.rep_mse == scaled.rep_mse == 0.0


def test_overflowing_flips_count_as_nonfinite():
    w = torch.full((4,), 1.5)  # exponent 127: a bit-30 flip gives Inf
    obj = objective(w, 1.0, "fp32", 1.0)
    assert obj.nonfinite_share >= 1 / 32
    # with inputs up to 2**100 a flip to 1.5 * 2**64 (bit 29 of exponent 63...) overflows too
    big = objective(torch.full((4,), 2.0**-60), 1.0, "fp32", 1.0, LayerBounds(2.0**100, 0.0))
    small = objective(torch.full((4,), 2.0**-60), 1.0, "fp32", 1.0, LayerBounds(1.0, 0.0))
    assert big.nonfinite_share > small.nonfinite_share
    assert big.flip_mse >= NONFINITE_PENALTY * big.nonfinite_share


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "int8"])
def test_chosen_scale_minimises_the_objective(fmt):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(300, generator=gen) * 0.05
    lam = 1e-4 * {"fp32": 32, "fp16": 16, "int8": 8}[fmt]
    bounds = LayerBounds(1.0, 4.0)
    choice = choose_scale(w, fmt, lam, sample=None, bounds=bounds)
    unit = choice.unit
    tol = max(unit.rep_rel, 2.0**-11) if fmt == "fp16" else 0.0
    totals = {
        s: objective(w, s, fmt, lam, bounds).total
        for s in default_candidates(w, fmt)
        if admissible(w, s, fmt, tol, bounds)
    }
    assert choice.chosen.total == min(totals.values())
    assert choice.chosen.total <= unit.total
    assert choice.landscape == pytest.approx(totals)


def test_sampled_search_returns_the_best_finalist_exactly():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5000, generator=gen) * 0.05
    choice = choose_scale(w, "fp32", 32e-4, sample=512, finalists=4)
    assert len(choice.landscape) == 4
    assert choice.chosen.total == min(choice.landscape.values())
    assert choice.chosen.total == objective(w, choice.scale, "fp32", 32e-4).total


def test_injection_hits_the_stored_scaled_tensors(cnn_and_data, fp32_method):
    model, x, calib = cnn_and_data
    int8_method = WeightScaling("int8")
    int8_method.prepare(model, None, (calib, None))
    for method, fmt, width in ((fp32_method, "fp32", 32), (int8_method, "int8", 8)):
        tensors = method.injectable()
        stored = method.model.fc1.weight
        assert tensors["fc1.weight"].data_ptr() == stored.data_ptr()
        before = stored.clone()
        log = inject_weights(None, RandomFlips(64), seed=0, tensors={"fc1.weight": tensors[
            "fc1.weight"]})
        changed = (before.view(torch.uint8) != stored.view(torch.uint8)).any()
        assert bool(changed) and all(r.tensor == "fc1.weight" and r.bit < width
                                     for r in log.records)
        rec = log.records[0]
        old = before.reshape(-1)[rec.flat_index].item()
        assert to_bits(old, stored.dtype) ^ (1 << rec.bit) == to_bits(
            stored.reshape(-1)[rec.flat_index].item(), stored.dtype)
        log.undo(tensors)
        assert torch.equal(before.view(torch.uint8), stored.view(torch.uint8))
        # the stored tensor is the scaled encoding of the original weights
        assert torch.equal(stored, encode(model.fc1.weight, method.model.fc1.scale, fmt))


def test_bad_requests_raise_clear_errors():
    with pytest.raises(ScalingError, match="use one of fp32, fp16, int8"):
        harden(nn.Sequential(nn.Linear(2, 2)), "bf8")
    with pytest.raises(ScalingError, match="no Linear or Conv"):
        harden(nn.Sequential(nn.ReLU()))
    with pytest.raises(ScalingError, match="'optimal' or 'unit'"):
        harden(nn.Sequential(nn.Linear(2, 2)), policy="best")
    with pytest.raises(ScalingError, match="Linear, Conv1d and Conv2d"):
        ScaledLayer(nn.LSTM(2, 2), 2.0, "fp32")
    with pytest.raises(ScalingError, match="no admissible scale"):
        choose_scale(torch.ones(4), "fp32", 1.0, candidates=[2.0**200])


def test_scaled_model_is_fx_traceable(cnn_and_data, fp32_method):
    # SAVE's Selection captures the model with torch.fx: the scaled layers must trace
    model, x, _ = cnn_and_data
    for hard in (fp32_method.model, harden(model, "fp16", policy="unit")[0]):
        traced = torch.fx.symbolic_trace(hard)
        with torch.no_grad():
            assert torch.equal(traced(x), hard(x))
