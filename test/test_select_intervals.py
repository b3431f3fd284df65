"""Interval rules: exact boxes on hand-made cases, and soundness on real and random models."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from save_ros import models
from save_ros.core.box import InputBox, InputRangeError
from save_ros.core.graph import capture
from save_ros.core.select.intervals import Interval
from save_ros.core.select.propagate import IntervalInterpreter
from save_ros.core.select.ranges import node_ranges

TOL = 1e-4  # the rules widen by 2^-16 relative for float rounding


def _box(module: nn.Module, lo, hi) -> Interval:
    gm = fx.symbolic_trace(module)
    boxes = IntervalInterpreter(gm).propagate(Interval(torch.as_tensor(lo), torch.as_tensor(hi)))
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    return boxes[out.name]


def _corners(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """All vertices of a small box (the extremes of an affine map lie there)."""
    flat_lo, flat_hi = lo.reshape(-1), hi.reshape(-1)
    pts = [torch.where(torch.tensor(c, dtype=torch.bool), flat_hi, flat_lo)
           for c in itertools.product([0, 1], repeat=flat_lo.numel())]
    return torch.stack(pts).reshape(-1, *lo.shape[1:])


def test_linear_box_is_exact_with_the_w_plus_w_minus_split():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0]]))
        lin.bias.fill_(0.5)
    b = _box(nn.Sequential(lin), [[0.0, 0.0]], [[1.0, 1.0]])
    # min: x1 = 0, x2 = 1 -> -1.5; max: x1 = 1, x2 = 0 -> 1.5
    assert b.lo.item() == pytest.approx(-1.5, abs=TOL)
    assert b.hi.item() == pytest.approx(1.5, abs=TOL)


def test_conv_box_matches_vertex_enumeration():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 2).eval()
    lo = torch.rand(1, 1, 3, 3) - 0.5
    hi = lo + torch.rand(1, 1, 3, 3)
    b = _box(nn.Sequential(conv), lo, hi)
    with torch.no_grad():
        ys = conv(_corners(lo, hi))  # 512 vertices
    assert torch.allclose(b.lo[0], ys.amin(0), atol=TOL)
    assert torch.allclose(b.hi[0], ys.amax(0), atol=TOL)


def test_relu_sigmoid_and_maxpool_are_monotone_maps_of_the_bounds():
    b = _box(nn.Sequential(nn.ReLU()), [[-1.0, 0.5]], [[2.0, 0.7]])
    assert torch.equal(b.lo, torch.tensor([[0.0, 0.5]]))
    assert torch.equal(b.hi, torch.tensor([[2.0, 0.7]]))
    b = _box(nn.Sequential(nn.Sigmoid()), [[0.0]], [[1.0]])
    assert b.lo.item() == 0.5 and b.hi.item() == pytest.approx(1 / (1 + math.exp(-1)))
    b = _box(nn.Sequential(nn.MaxPool2d(2)), [[[[0.0, 1.0], [-1.0, 2.0]]]],
             [[[[0.5, 1.5], [0.0, 3.0]]]])
    assert b.lo.item() == 2.0 and b.hi.item() == 3.0


def test_softmax_box_is_exact_and_inside_unit_interval():
    b = _box(nn.Sequential(nn.Softmax(dim=-1)), [[0.0, 0.0]], [[1.0, 0.0]])
    assert b.lo[0, 0].item() == pytest.approx(0.5, abs=TOL)  # x1 = 0 = x2
    assert b.hi[0, 0].item() == pytest.approx(math.e / (math.e + 1), abs=TOL)
    assert b.lo[0, 1].item() == pytest.approx(1 / (math.e + 1), abs=TOL)
    b = _box(nn.Sequential(nn.Softmax(dim=-1)), [[-50.0] * 4], [[50.0] * 4])
    assert float(b.lo.min()) >= 0.0 and float(b.hi.max()) <= 1.0


def test_gelu_box_contains_the_minimum():
    b = _box(nn.Sequential(nn.GELU()), [[-2.0, 1.0]], [[0.0, 2.0]])
    assert b.lo[0, 0].item() == pytest.approx(-0.16997, abs=1e-4)
    assert b.hi[0, 0].item() == pytest.approx(0.0, abs=TOL)
    assert b.lo[0, 1].item() == pytest.approx(F.gelu(torch.tensor(1.0)).item(), abs=TOL)


class _Product(nn.Module):
    def forward(self, a):
        return torch.matmul(a, a.transpose(-2, -1)) * a.sum()


def test_interval_products_contain_every_sample():
    torch.manual_seed(1)
    lo = torch.rand(1, 3, 2) - 0.5
    hi = lo + 0.3
    b = _box(_Product(), lo, hi)
    xs = lo + (hi - lo) * torch.rand(2000, 3, 2)
    ys = torch.stack([_Product()(x[None])[0] for x in xs])
    assert bool(((ys >= b.lo[0]) & (ys <= b.hi[0])).all())


def test_input_box_forms_and_errors():
    shape = (2, 3, 3)
    b = InputBox.of(([0.0, -1.0], [1.0, 1.0]), shape)
    lo, hi = b.expand((1, *shape))
    assert lo[0, 1].unique().tolist() == [-1.0] and hi.shape == (1, *shape)
    assert b.contains(torch.zeros(4, *shape)) and not b.contains(torch.full((1, *shape), -0.5))
    assert not b.contains(torch.full((1, *shape), float("nan")))
    assert InputBox.of((0.0, 1.0), shape).expand((1, *shape))[0].shape == (1, *shape)
    # one box, one record, whichever form it was given in (the analysis key depends on it)
    full = (torch.zeros(1, *shape), torch.ones(1, *shape))
    assert InputBox.of(full, shape).as_record() == InputBox.of((0, 1), shape).as_record() \
        == {"low": 0.0, "high": 1.0}
    assert b.as_record() == {"low": [0.0, -1.0], "high": 1.0}
    with pytest.raises(InputRangeError, match="low <= high"):
        InputBox.of((1.0, 0.0), shape)
    with pytest.raises(InputRangeError, match="per-channel"):
        InputBox.of(([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), shape)
    with pytest.raises(InputRangeError, match="pair"):
        InputBox.of(0.5, shape)


class _Block(nn.Module):
    """conv, bn, relu, layernorm, gelu, attention (sdpa) and a residual add, never seen before."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)  # 4 tokens of 8 features
        self.ln = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.fc = nn.Linear(8, 16)
        self.gelu = nn.GELU()
        self.out = nn.Linear(16 * 4, 5)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.randn(8, generator=g) * 0.3)
            self.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            self.bn.weight.copy_(torch.randn(8, generator=g))
            self.ln.weight.copy_(torch.randn(8, generator=g))
            for p in (self.conv.weight, self.qkv.weight, self.fc.weight, self.out.weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        t = self.pool(y).flatten(2).transpose(1, 2)  # (N, 4, 8)
        q, k, v = self.qkv(self.ln(t)).chunk(3, dim=-1)
        t = t + F.scaled_dot_product_attention(q, k, v)
        return self.out(self.gelu(self.fc(t)).flatten(1))


def _random_inputs(box: Interval, n: int, seed: int) -> torch.Tensor:
    """Uniform points, box corners and points on the faces of the box."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *box.lo.shape[1:], generator=g)
    u[: n // 4] = (u[: n // 4] > 0.5).float()  # corners
    return box.lo + (box.hi - box.lo) * u


def _assert_sound(model: nn.Module, example: torch.Tensor, input_range, seed: int) -> None:
    g = capture(model, example)
    ranges, unsupported = node_ranges(g, example, InputBox.of(input_range, example.shape[1:]), None)
    assert unsupported == []
    x = _random_inputs(Interval(*InputBox.of(input_range, example.shape[1:])
                                .expand(example[:1].shape)), 400, seed)
    with torch.no_grad():
        _, values = g.record(x)
    checked = 0
    for name, r in ranges.items():
        if r.batch_dim != 0:
            continue
        v = values[name]
        ok = (v >= r.sound.lo) & (v <= r.sound.hi)
        assert bool(ok.all()), f"{name}: {int((~ok).sum())} values leave the sound box"
        checked += 1
    assert checked >= len(g.layers) // 2


@pytest.mark.parametrize("name", models.available())
def test_reference_models_never_leave_their_sound_boxes(name):
    spec = models.get_spec(name)
    model = models.load(name)
    example = torch.zeros(1, *spec.input_shape)
    _assert_sound(model, example, (list(spec.input_low), list(spec.input_high)), seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_unseen_random_architecture_never_leaves_its_sound_boxes(seed):
    model = _Block(seed).eval()
    _assert_sound(model, torch.zeros(1, 2, 4, 4), ([-1.0, 0.0], [1.0, 2.0]), seed)


class _Erf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.erf(x) * 2.0)


def test_an_op_without_rule_falls_back_to_calibration_and_is_named():
    torch.manual_seed(0)
    model = _Erf().eval()
    g = capture(model, torch.zeros(1, 3))
    calib = torch.rand(64, 3)
    ranges, unsupported = node_ranges(g, calib[:1], InputBox.of((0.0, 1.0), calib.shape[1:]), calib,
                                      margin=0.1)
    assert len(unsupported) == 1 and unsupported[0].startswith("erf: no interval rule")
    e = torch.erf(calib)
    lo, hi = e.amin(0), e.amax(0)
    assert torch.allclose(ranges["erf"].sound.lo[0], lo - 0.1 * (hi - lo))
    assert bool(torch.isfinite(ranges["fc"].sound.hi).all())  # propagation goes on after it


class _MHA(nn.Module):
    """nn.MultiheadAttention (a leaf module for fx) between two linears."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inp = nn.Linear(3, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        t = self.inp(x)
        a, w = self.mha(t, t, t)
        return self.out(a + t).mean(1) + w.sum(-1).mean(1, keepdim=True)


def test_multihead_attention_module_is_sound():
    _assert_sound(_MHA().eval(), torch.zeros(1, 5, 3), (-1.0, 1.0), seed=0)


class _Unknown(nn.Module):
    """A module type without a rule that returns a tuple."""

    def forward(self, x):
        return torch.sort(x, dim=-1)


class _TupleFallback(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sorter = _Unknown()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        values, _ = self.sorter(x)
        return self.fc(values)


def test_a_tuple_op_without_rule_falls_back_without_crashing():
    model = _TupleFallback().eval()
    g = capture(model, torch.zeros(1, 3))
    calib = torch.rand(32, 3)
    ranges, unsupported = node_ranges(g, calib[:1], InputBox.of((0.0, 1.0), calib.shape[1:]), calib)
    assert any(u.startswith("sort") for u in unsupported)
    assert torch.isinf(ranges["getitem"].sound.hi).all()  # unbounded, checked by calibration
    assert "fc" in ranges


def test_an_unbounded_box_through_an_affine_layer_stays_unbounded_not_nan():
    """(-inf + inf) / 2 is NaN: a NaN bound once made every range after it NaN (and every
    calibration range clipped to it), so a plan raised a range alarm on every inference."""
    import math

    from torch import fx

    from save_ros.core.select.intervals import Interval
    from save_ros.core.select.propagate import IntervalInterpreter

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()).eval()
    gm = fx.symbolic_trace(model)
    box = Interval(torch.full((1, 3), -math.inf), torch.full((1, 3), math.inf))
    boxes = IntervalInterpreter(gm).propagate(box)
    for b in boxes.values():
        assert not torch.isnan(b.lo).any() and not torch.isnan(b.hi).any()
    assert torch.isinf(boxes["_0"].lo).all() and torch.isinf(boxes["_0"].hi).all()


def test_a_torch_export_program_is_analysed_with_rules_for_its_aten_ops():
    """A .pt2 program's graph is ATen ops (aten.conv2d, aten.batch_norm, in-place aten.relu_ and
    aten.add_): every one has a rule, and the in-place ones run out of place, so the saved
    value a DMR compares against is not overwritten (a false alarm on every inference)."""
    import warnings

    from save_ros.core.protect import ProtectConfig, protect
    from save_ros.core.select import SelectConfig
    from save_ros.models import zoo

    model = zoo.build("resnet18", image_size=32, input_dependent=False)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = model(x[:1]).detach()
    gm = torch.export.export(model, (x[:1],)).module()
    assert any("relu_" in str(n.target) for n in gm.graph.nodes)
    gm.eval = lambda: gm  # an exported module refuses eval(); its mode was fixed at export
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UnsupportedOpWarning
        pm = protect(gm, x[:1], (0.0, 1.0),
                     ProtectConfig(calibration=x, reliable_budget_bytes=0,
                                   selection=SelectConfig(sens_samples=1)))
    assert pm.analysis.unsupported == [] and pm.analysis.unsound == []
    kinds = pm._plan.by_kind()
    assert kinds.get("dmr", 0) + kinds.get("range", 0) + kinds.get("checksum", 0) > 10, kinds
    r = pm.infer(x[:1])
    assert r.verified and not r.status.detections and torch.equal(r.output, ref)
    for i in range(1, 4):
        assert not pm.infer(x[i : i + 1]).status.detections
