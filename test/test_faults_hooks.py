"""Activation faults, the faulty processing element, and mixed fault plans."""

import pytest
import torch
from torch import nn

from save_ros.core import bits
from save_ros.faults import (
    ActivationFaults,
    BitErrorRate,
    BitFault,
    FaultList,
    FaultPlan,
    PEFaults,
    PEFaultSpec,
    PEMode,
    PESite,
    ProcessingElementFault,
    RandomFlips,
    StuckAt,
    Target,
    TargetKind,
    activation_sites,
    apply_faults,
    sample_pe_faults,
)

ACT = TargetKind.ACTIVATIONS


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 4)).eval()


def test_activation_sites_are_the_selected_leaf_outputs():
    m, x = net(), torch.randn(2, 2, 5, 5)
    sites = activation_sites(m, x, Target(ACT))
    assert [(s.name, s.numel) for s in sites] == [("0", 150), ("1", 150), ("2", 150), ("3", 8)]
    assert [s.name for s in activation_sites(m, x, Target(ACT, types=(nn.ReLU,)))] == ["1"]
    assert [s.name for s in activation_sites(m, x, Target(ACT, exclude={"0", "2"}))] == ["1", "3"]


def test_activation_flip_is_exact_and_transient():
    m, x = net(), torch.randn(2, 2, 5, 5)
    with torch.inference_mode():
        clean = m(x)
        relu_out = m[1](m[0](x))
        # Sign flip of a positive ReLU output element of sample 1, seen by the Linear layer.
        k = int((relu_out[1].reshape(-1) > 0).nonzero()[0]) + 75
        with ActivationFaults(m, [BitFault("1", k, 31)]) as active:
            faulty = m(x)
            again = m(x)  # transient: the second pass inside the context is clean
        (r,) = active.records
        assert r.new_value == -r.old_value and r.old_value == relu_out.reshape(-1)[k].item()
        corrupted = relu_out.reshape(2, -1).clone()
        corrupted[1, k - 75] *= -1
        assert torch.allclose(faulty, m[3](corrupted), atol=0, rtol=0)
        assert torch.equal(faulty[0], clean[0]) and not torch.equal(faulty[1], clean[1])
        assert torch.equal(again, clean)
        with ActivationFaults(m, [BitFault("1", k, 31)], once=False):
            assert torch.equal(m(x), faulty) and torch.equal(m(x), faulty)
        assert torch.equal(m(x), clean)  # hooks removed on exit


def test_pe_linear_changes_only_output_j_and_only_through_input_i():
    torch.manual_seed(1)
    lin = nn.Linear(6, 5).eval()
    x = torch.randn(3, 6)
    model = nn.Sequential(lin)
    spec = PEFaultSpec("0", 2, 4, 24, PEMode.FLIP, PESite.PRODUCT)
    with torch.inference_mode():
        clean = model(x)
        with PEFaults(model, [spec]):
            faulty = model(x)
            x2 = x.clone()
            x2[:, [0, 1, 3, 4, 5]] = torch.randn(3, 5)  # other inputs change, input 2 kept
            faulty2 = model(x2)
        clean2 = lin(x2)
    p = x[:, 2] * lin.weight[4, 2]
    expected_delta = bits.flipped(p, 24) - p
    assert torch.equal(faulty[:, :4], clean[:, :4])
    assert torch.allclose(faulty[:, 4] - clean[:, 4], expected_delta, rtol=1e-5, atol=1e-5)
    assert torch.allclose(faulty2[:, 4] - clean2[:, 4], faulty[:, 4] - clean[:, 4],
                          rtol=1e-5, atol=1e-5)


def test_pe_weight_register_sign_flip_is_exact():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    w = model[0].weight[1, 3].item()
    with torch.inference_mode(), PEFaults(model, [PEFaultSpec("0", 3, 1, 31, PEMode.FLIP,
                                                               PESite.WEIGHT)]):
        faulty = model(x)
    clean = model(x).detach()
    assert torch.allclose(faulty[:, 1], clean[:, 1] - 2 * w * x[:, 3], atol=1e-6)
    assert torch.equal(faulty[:, [0, 2]], clean[:, [0, 2]])


def reference_conv_pe(conv: nn.Conv2d, x: torch.Tensor, i: int, j: int, spec: PEFaultSpec):
    """Slow loop reference: rebuild channel j with every (i, j) product corrupted."""
    w = conv.weight.detach()
    xp = nn.functional.pad(x, (1, 1, 1, 1))
    out = conv(x).detach().clone()
    B, _, H, W = out.shape
    for b in range(B):
        for h in range(H):
            for v in range(W):
                delta = 0.0
                for kh in range(3):
                    for kw in range(3):
                        p = xp[b, i, h + kh, v + kw] * w[j, i, kh, kw]
                        pc = bits.flipped(p.reshape(1), spec.bit)[0]
                        delta += (pc - p).item()
                out[b, j, h, v] += delta
    return out


def test_pe_conv_matches_the_product_by_product_reference():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 4, 4)
    spec = PEFaultSpec("0", 1, 2, 24, PEMode.FLIP, PESite.PRODUCT)
    with torch.inference_mode(), PEFaults(model, [spec]):
        faulty = model(x)
    with torch.inference_mode():
        ref = reference_conv_pe(model[0], x, 1, 2, spec)
        clean = model(x)
    assert torch.allclose(faulty, ref, rtol=1e-4, atol=1e-4)
    changed = (faulty != clean).any(dim=(0, 2, 3))
    assert changed.tolist() == [False, False, True, False]


def test_pe_stuck_at_and_sampling_and_group_check():
    m, x = net(), torch.randn(1, 2, 5, 5)
    specs = sample_pe_faults(m, ProcessingElementFault(bit=31, mode=PEMode.STUCK1), seed=4)
    assert [s.layer for s in specs] == ["0", "3"]
    assert specs == sample_pe_faults(m, ProcessingElementFault(bit=31, mode="stuck1"), seed=4)
    with torch.inference_mode():
        clean = m(x)
        with PEFaults(m, specs):
            faulty = m(x)
    assert not torch.equal(clean, faulty)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="different groups"):
        PEFaults(grouped, [PEFaultSpec("0", 0, 3, 30, PEMode.FLIP, PESite.PRODUCT)])
    drawn = sample_pe_faults(grouped, ProcessingElementFault(), seed=0)
    assert drawn[0].in_ch // 2 == drawn[0].out_ch // 2


def test_mixed_plan_replays_exactly_from_json_and_cleans_up(tmp_path):
    m, x = net(), torch.randn(4, 2, 5, 5)
    plan = (FaultPlan()
            .add(Target(layers=("0",)), BitErrorRate(2e-3))
            .add(Target(layers=("3",)), StuckAt(30, 1, n=2))
            .add(Target(ACT, types=(nn.ReLU,)), RandomFlips(5))
            .add(Target(types=(nn.Linear,)), ProcessingElementFault(bit=29)))
    faults = plan.sample(m, seed=9, example_input=x)
    assert faults.weights and len(faults.activations) == 5 and len(faults.pe) == 1
    assert {f.site for f in faults.activations} == {"1"}
    faults.save(tmp_path / "plan.json")
    with torch.inference_mode():
        clean = m(x)
        with apply_faults(m, faults) as applied:
            first = m(x)
        assert len(applied.log) == 0 and len(applied.activation_records) == 5
        assert torch.equal(m(x), clean)
        with apply_faults(m, FaultList.load(tmp_path / "plan.json")):
            second = m(x)
        assert torch.equal(m(x), clean)
    assert torch.equal(torch.nan_to_num(first), torch.nan_to_num(second))
    assert not torch.equal(torch.nan_to_num(first), clean)
    assert plan.sample(m, seed=9, example_input=x).to_json() == faults.to_json()
