"""Activation faults at torch.fx nodes: functional ops are sites, flips are bit-exact, fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from save_ros.core import bits
from save_ros.faults import (
    ActivationFaults,
    BitFault,
    EmptyTargetError,
    FaultPlan,
    RandomFlips,
    Target,
    TargetKind,
    UnknownNameError,
    UntraceableModelError,
    activation_sites,
    apply_faults,
    resolve_sites,
)

ACT = TargetKind.ACTIVATIONS
FX = Target(ACT, sites="fx")


class SENet(nn.Module):
    """conv, SiLU, squeeze-excite gate (mean, sigmoid, mul), conv + residual add, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        gate = torch.sigmoid(h.mean((2, 3), keepdim=True))
        h = torch.mul(h, gate)
        out = self.conv2(h) + h
        pooled = torch.flatten(out.mean((2, 3)), 1)
        return self.fc(self.drop(pooled))

    def parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate value, computed by hand (the reference for exact assertions)."""
        v = {"conv1": self.conv1(x)}
        v["silu"] = F.silu(v["conv1"])
        v["mean"] = v["silu"].mean((2, 3), keepdim=True)
        v["sigmoid"] = torch.sigmoid(v["mean"])
        v["mul"] = torch.mul(v["silu"], v["sigmoid"])
        v["conv2"] = self.conv2(v["mul"])
        v["add"] = v["conv2"] + v["mul"]
        v["mean_1"] = v["add"].mean((2, 3))
        return v

    def tail(self, node: str, value: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output with node `node`'s value replaced by `value` (the rest recomputed)."""
        v = dict(v)
        v[node] = value
        if node in ("silu", "mean", "sigmoid"):
            if node == "silu":
                v["mean"] = v["silu"].mean((2, 3), keepdim=True)
            if node in ("silu", "mean"):
                v["sigmoid"] = torch.sigmoid(v["mean"])
            v["mul"] = torch.mul(v["silu"], v["sigmoid"])
        if node in ("silu", "mean", "sigmoid", "mul"):
            v["conv2"] = self.conv2(v["mul"])
        if node != "mean_1":
            v["add"] = value if node == "add" else v["conv2"] + v["mul"]
            v["mean_1"] = v["add"].mean((2, 3))
        return self.fc(torch.flatten(v["mean_1"], 1))


@pytest.fixture
def se() -> tuple[SENet, torch.Tensor]:
    torch.manual_seed(0)
    return SENet().eval(), torch.randn(2, 3, 6, 6)


def test_sites_are_computing_nodes_including_functional_ops_not_views(se):
    m, x = se
    sites = activation_sites(m, x, FX)
    assert [s.name for s in sites] == ["conv1", "silu", "mean", "sigmoid", "mul", "conv2",
                                       "add", "mean_1", "fc"]  # flatten and dropout alias
    assert {s.name: s.numel for s in sites}["add"] == 2 * 4 * 6 * 6
    # the old way sees only the leaf modules' outputs
    assert [s.name for s in activation_sites(m, x, Target(ACT))] == ["conv1", "conv2", "drop",
                                                                     "fc"]
    assert resolve_sites(m, "auto") == "fx"


@pytest.mark.parametrize("node,bit", [("add", 30), ("mul", 31), ("silu", 27), ("add", 0)])
def test_flip_at_a_functional_node_changes_exactly_that_bit(se, node, bit):
    """A flip at the residual add / squeeze-excite mul / F.silu corrupts exactly that node's
    output element bit, and the model output is the clean downstream of that value."""
    m, x = se
    with torch.inference_mode():
        v = m.parts(x)
        clean = m(x)
        k = 37
        expected_value = v[node].contiguous().clone()
        bits.flip_(expected_value, k, bit)
        with ActivationFaults(m, [BitFault(node, k, bit)], sites="fx") as af:
            faulty = m(x)
            again = m(x)
        expected = m.tail(node, expected_value, v)
    (r,) = af.records
    assert r.tensor == node and r.flat_index == k and r.bit == bit
    assert r.old_bits == bits.to_bits(v[node].reshape(-1)[k].item(), torch.float32)
    assert r.new_bits == r.old_bits ^ (1 << bit)
    assert torch.equal(faulty, expected)
    assert not torch.equal(faulty, clean) or bit == 0
    assert torch.equal(again, clean)  # transient: fired once per pass
    assert af.fired == {node}
    assert "forward" not in m.__dict__  # the model's own forward is back


def test_flip_at_the_residual_add_of_a_resnet_block_propagates():
    from save_ros.models import zoo

    model = zoo.build("resnet18", num_classes=10, input_dependent=False)
    x = torch.rand(1, 3, 32, 32)
    sites = {s.name: s for s in activation_sites(model, x, FX)}
    assert {"add", "add_7", "relu", "layer1_0_relu_1", "flatten"} - set(sites) == {"flatten"}
    with torch.inference_mode():
        clean = model(x)
        with ActivationFaults(model, [BitFault("add", 5, 31)], sites="fx") as af:
            faulty = model(x)
    assert af.records[0].changed and not torch.equal(faulty, clean)


def test_attention_output_getitem_is_a_site_and_the_tuple_is_not():
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            y, _ = self.mha(x, x, x, need_weights=False)
            q, k = y.chunk(2, dim=-1)
            return q * k

    m = Attn().eval()
    names = [s.name for s in activation_sites(m, torch.randn(2, 5, 8), FX)]
    assert names == ["getitem", "mul"]  # mha returns a tuple; the chunk pieces are views


def test_untraceable_model_falls_back_to_module_hooks():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 2
            return self.b(torch.relu(self.a(x)))

    m, x = Branchy().eval(), torch.ones(3, 4)
    with pytest.raises(UntraceableModelError, match="modules"):
        activation_sites(m, x, FX)
    assert resolve_sites(m, "auto") == "modules"
    sites = activation_sites(m, x, Target(ACT, sites="auto"))
    assert [s.name for s in sites] == ["a", "b"]
    with torch.inference_mode():
        clean = m(x)
        with ActivationFaults(m, [BitFault("b", 1, 31)], sites="auto") as af:
            faulty = m(x)
    assert faulty.reshape(-1)[1] == -clean.reshape(-1)[1] and af.fired == {"b"}


def test_exclude_and_layers_take_node_names_or_module_paths(se):
    m, x = se
    names = [s.name for s in activation_sites(m, x, Target(ACT, sites="fx",
                                                           exclude={"conv2", "mean*"}))]
    assert names == ["conv1", "silu", "sigmoid", "mul", "add", "fc"]
    assert [s.name for s in activation_sites(m, x, Target(ACT, sites="fx",
                                                          types=(nn.Conv2d,)))] == ["conv1",
                                                                                    "conv2"]
    with pytest.raises(UnknownNameError, match="did you mean 'silu'"):
        activation_sites(m, x, Target(ACT, sites="fx", exclude={"siul"}))
    with pytest.raises(EmptyTargetError):
        activation_sites(m, x, Target(ACT, sites="fx", layers=("nothing*",)))


def test_a_fault_plan_records_fx_naming_and_replays_it(se):
    m, x = se
    plan = FaultPlan().add(Target(ACT, sites="fx"), RandomFlips(6, bits=(30,)))
    faults = plan.sample(m, seed=4, example_input=x)
    assert faults.meta["activation_sites"] == "fx"
    with torch.inference_mode():
        clean = m(x)
        with apply_faults(m, faults) as applied:
            faulty = m(x)
    assert len(applied.activation_records) == 6
    assert not torch.equal(faulty, clean)
    with torch.inference_mode():
        assert torch.equal(m(x), clean)


def test_tapped_forward_is_the_model_and_an_error_inside_restores_it(se):
    m, x = se
    with torch.inference_mode():
        clean = m(x)
        with ActivationFaults(m, [BitFault("fc", 0, 0)], sites="fx"):
            with pytest.raises(RuntimeError):
                m(torch.randn(2, 5, 6, 6))  # wrong channel count: conv1 raises
    assert "forward" not in m.__dict__
    with torch.inference_mode():
        assert torch.equal(m(x), clean)
    with pytest.raises(KeyError, match="nodes the model's graph lacks"):
        ActivationFaults(m, [BitFault("relu_9", 0, 0)], sites="fx")


def test_a_replaced_module_is_traced_again(se):
    """The taps are cached per model; a module swapped in afterwards must be the one that runs."""
    m, x = se
    activation_sites(m, x, FX)
    m.fc = nn.Linear(4, 7)
    with torch.inference_mode():
        with ActivationFaults(m, [BitFault("fc", 0, 31)], sites="fx"):
            faulty = m(x)
        clean = m(x)
    assert faulty.shape == (2, 7) and faulty[0, 0] == -clean[0, 0]
    assert torch.equal(faulty.reshape(-1)[1:], clean.reshape(-1)[1:])
