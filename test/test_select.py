"""Bit attribution and analyze(): exact classes of hand-picked flips, and the robust claim."""

import math

import pytest
import torch
from test_select_intervals import _Block  # pytest puts test/ on sys.path

from save_ros.core import bits
from save_ros.core.analysis import BitClass, TensorKind
from save_ros.core.select import SelectConfig, analyze
from save_ros.core.select.attribution import FlipRule, classify
from save_ros.eval.validate import ValidationError, validate

R, G, V = int(BitClass.ROBUST), int(BitClass.RANGING), int(BitClass.VULNERABLE)


def _rule(low, high, sens=None, relu=False, fraction=0.1) -> FlipRule:
    s = None if sens is None else torch.tensor(sens)
    return FlipRule(torch.tensor(low), torch.tensor(high), s, fraction, relu)


def test_relu_masks_negative_flips_but_not_sign_flips_or_nan():
    v = torch.tensor([-1.0, -1.0, -3.0e38])
    rule = _rule(-4.0e38, 4.0e38, relu=True)
    # bit 22 (top mantissa bit) keeps -1.0 negative: masked by the ReLU
    assert classify(v, 22, rule)[:2].tolist() == [R, R]
    # the sign bit makes it +1.0: inside the range, not masked
    assert classify(v, 31, rule)[:2].tolist() == [V, V]
    # -3e38 has exponent 0xFE: flipping bit 23 gives 0xFF with a mantissa: NaN -> ranging
    assert math.isnan(bits.flipped(v[2:], 23).item())
    assert classify(v[2:], 23, rule).tolist() == [G]


def test_ranging_and_numerically_robust_follow_the_flipped_value():
    v = torch.tensor([0.5, 0.5, 0.5])
    rule = _rule([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], sens=[1.0, 1e9, 0.0])
    # bit 30 of 0.5 (exponent 126 -> 254): 0.5 * 2^128 -> leaves [0, 1]
    assert classify(v, 30, rule).tolist() == [G, G, G]
    # bit 0: |delta| = 2^-25; robust iff |delta| * R <= 0.1
    assert classify(v, 0, rule).tolist() == [R, V, R]
    # bit 22: 0.5 -> 0.75, |delta| = 0.25 * 1.0 > 0.1: vulnerable for R = 1
    assert classify(v, 22, rule).tolist() == [V, V, R]


def _data(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 4, 4, generator=g)
    x[:, 0] = x[:, 0] * 2 - 1  # channel 0 in [-1, 1], channel 1 in [0, 2]
    x[:, 1] = x[:, 1] * 2
    return x


@pytest.fixture(scope="module")
def block_analysis():
    torch.manual_seed(0)
    model = _Block(3).eval()
    calib = _data(0, 256)
    a = analyze(model, calib[:1], ([-1.0, 0.0], [1.0, 2.0]), calibration=calib)
    return model, a


def test_analysis_covers_every_weight_and_compute_node(block_analysis):
    model, a = block_analysis
    names = {n for n, _ in model.named_parameters()} | {"bn.running_mean", "bn.running_var"}
    assert names <= set(a.tensors)
    acts = {t.name for t in a.activations()}
    assert {"conv", "bn", "relu", "ln", "scaled_dot_product_attention", "add", "gelu", "out"} \
        <= acts
    assert not acts & {"flatten", "transpose", "chunk", "getitem"}  # views are not counted twice
    assert a.unsupported == [] and a.capture == "fx"
    for t in a.tensors.values():
        assert len(t.bit_shares) == 32
        for s in t.bit_shares:
            assert sum(s) == pytest.approx(1.0)
        assert t.vulnerable_bits == pytest.approx(sum(s[2] for s in t.bit_shares) * t.numel)
        assert t.score == pytest.approx(t.vulnerable_bits / t.nbytes)
    assert a.tensors["relu"].masked_by is None  # relu feeds the pool, not a relu
    assert a.tensors["bn"].masked_by == "relu"


def test_weight_shares_are_exact_counts_over_golden_values(block_analysis):
    model, a = block_analysis
    w = model.out.weight.detach()
    rule = a.rules["out.weight"]
    for bit in (0, 22, 27, 30, 31):
        codes = classify(w, bit, rule).reshape(-1)
        counts = torch.bincount(codes.long(), minlength=3).double() / codes.numel()
        assert tuple(counts.tolist()) == pytest.approx(a.tensors["out.weight"].bit_shares[bit])
    # exponent bit 30 of weights below 2 in magnitude: 2^128 times larger -> always ranging
    assert a.tensors["out.weight"].bit_shares[30][1] == 1.0


def test_robust_flips_do_not_change_an_unseen_architecture(block_analysis):
    model, a = block_analysis
    rep = validate(model, a, _data(1, 128), per_class=150, seed=0)
    assert rep.covered_inputs >= 100
    for part in (rep.weights, rep.activations):
        assert part["robust"].flips == 150
        assert part["robust"].changed == 0
        assert part["ranging"].inside_range == 0
    assert rep.weights["vulnerable"].inside_range == rep.weights["vulnerable"].flips
    assert rep.weights["ranging"].changed > 0  # the test can fail: ranging flips do harm


def test_fraction_trades_robust_for_vulnerable(block_analysis):
    model, a = block_analysis
    calib = _data(0, 256)
    tight = analyze(model, calib[:1], ([-1.0, 0.0], [1.0, 2.0]), calibration=calib,
                    config=SelectConfig(fraction=0.01))
    assert tight.totals(TensorKind.WEIGHT).robust < a.totals(TensorKind.WEIGHT).robust
    assert tight.key != a.key  # settings are part of the key


def test_untraceable_model_gets_a_weights_only_analysis_that_says_so():
    from test_graph import DataDependent

    torch.manual_seed(0)
    model = DataDependent().eval()
    x = torch.rand(32, 4)
    with pytest.warns(UserWarning, match="falling back to module hooks"):
        a = analyze(model, x[:1], (0.0, 1.0), calibration=x)
    assert a.capture == "hooks"
    assert set(a.tensors) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert "torch.fx could not trace" in a.unsupported[0]
    assert all(s[0] == 0.0 for t in a.tensors.values() for s in t.bit_shares)  # nothing robust


def test_a_regression_output_gets_the_tolerance_rule_and_validates_against_it():
    """Continuous outputs: robust = every output moves by less than its tolerance."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.rand(64, 3)
    # (N, 2) would be read as logits: a continuous policy declares its task
    a = analyze(model.eval(), x[:1], (0.0, 1.0), calibration=x,
                config=SelectConfig(task="regression"))
    assert a.task == "regression"
    out = model(x).detach()
    span = out.amax(0) - out.amin(0)
    assert torch.allclose(torch.tensor(a.settings["tolerance"]), 0.01 * span)
    w = a.tensors["0.weight"].bit_shares
    assert w[0][2] == 0.0 and w[0][0] > 0.5  # the lowest mantissa bit: robust (or ranging)
    assert w[30][0] == 0.0  # the top exponent bit never
    first = a.activations()[0]  # the first linear's output feeds the ReLU
    assert first.masked_by == "relu" and first.robust_bits > 0
    rep = validate(model, a, x, per_class=50)
    assert rep.task == "regression" and rep.covered_inputs == len(x)
    assert rep.weights["robust"].flips == 50 and rep.weights["robust"].changed == 0
    assert rep.weights["vulnerable"].changed > 0  # the claim is tested, not vacuous
    # an absolute tolerance is honoured as given
    b = analyze(model.eval(), x[:1], (0.0, 1.0), calibration=x,
                config=SelectConfig(task="regression", tolerance=1e-3))
    assert b.settings["tolerance"] == pytest.approx([1e-3, 1e-3])
    assert b.totals().robust < a.totals().robust  # a tighter tolerance, fewer robust bits


def test_a_scalar_output_is_detected_as_regression():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x = torch.rand(32, 3)
    assert analyze(model.eval(), x[:1], (0.0, 1.0), calibration=x).task == "regression"


def test_validation_refuses_to_report_when_no_input_is_covered():
    from save_ros.models import dataset, load

    model = load("digits_cnn")
    x, _ = dataset("digits_cnn", "calib")
    a = analyze(model, x[:1], (0.0, 1.0), calibration=x[:64])
    a.settings["min_gap"] = 1e9  # no input is that far from a decision boundary
    with pytest.raises(ValidationError, match="no evaluation input is covered"):
        validate(model, a, x[:32], per_class=5)


def test_multihead_attention_outputs_are_analysed_activations():
    from test_select_intervals import _MHA

    model = _MHA().eval()
    x = torch.rand(64, 5, 3) * 2 - 1
    a = analyze(model, x[:1], (-1.0, 1.0), calibration=x)
    acts = {t.name for t in a.activations()}
    assert {"inp", "getitem", "getitem_1", "add", "out"} <= acts  # MHA's (output, weights)
    assert a.unsupported == []
    assert a.tensors["getitem_1"].sound_low == 0.0 and a.tensors["getitem_1"].sound_high == 1.0


def test_max_pool_masks_flips_that_stay_below_the_window_max():
    from save_ros.core.select.attribution import pool_other_max

    v = torch.tensor([[[[1.0, 3.0, 5.0], [2.0, 0.5, 5.0], [9.0, 9.0, 9.0]]]])  # 3x3, k = 2
    other = pool_other_max(v, 2)
    assert other[0, 0, :2, :2].tolist() == [[3.0, 2.0], [3.0, 3.0]]  # 3 is the unique max
    assert torch.isinf(other[0, 0, 2]).all() and torch.isinf(other[0, 0, :, 2]).all()
    rule = FlipRule(torch.tensor(-100.0), torch.tensor(100.0), None, 0.1, False, 2)
    # bit 22 adds half the value for 1.0 -> 1.5 (<= 3: masked); 3.0 -> 2.0 drops the max
    codes = classify(v, 22, rule, other)[0, 0]
    assert codes[0, 0] == R and codes[0, 1] == V and codes[1, 1] == R
    assert codes[2, 2] == R  # never read by the pool
    pool = torch.nn.functional.max_pool2d
    for (i, j), c in (((0, 0), R), ((0, 1), V), ((1, 1), R)):
        f = v.clone()
        f[0, 0, i, j] = bits.flipped(v[0, 0, i, j].reshape(1), 22)[0]
        assert torch.equal(pool(f, 2), pool(v, 2)) == (c == R)
