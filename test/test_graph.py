"""Graph capture (fx layers with inputs and parameters, hooks fallback) and the runtime's re-run
from any node (`Instrumented`, what Edit uses)."""

import pytest
import torch
from torch import nn

from save_ros.core.graph import ModelGraph, capture
from save_ros.core.instrument import Instrumented


class Residual(nn.Module):
    """Conv -> BN -> ReLU -> residual add -> pool -> linear, with a get_attr parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.full((1, 4, 1, 1), 0.5))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + self.conv2(y) * self.scale
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:
            y = torch.relu(y)
        return self.b(y)


def _model() -> Residual:
    torch.manual_seed(0)
    m = Residual().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def test_fx_layers_have_ops_inputs_and_params():
    m = _model()
    g = capture(m, torch.rand(1, 1, 6, 6))
    assert g.capture == "fx"
    kinds = [layer.kind for layer in g.layers]
    assert kinds[:3] == ["Conv2d", "BatchNorm2d", "relu"]
    assert g.layers[0].params == ["conv.weight", "conv.bias"]
    assert "bn.running_mean" in g.layers[1].params
    mul = next(layer for layer in g.layers if layer.kind == "mul")
    assert mul.params == ["scale"]
    add = next(layer for layer in g.layers if layer.kind == "add")
    assert len(add.inputs) == 2  # relu output and the scaled conv2 branch
    assert g.layers[0].inputs == ["x"]


def test_rerun_from_any_node_equals_the_full_run():
    m = _model()
    x = torch.rand(5, 1, 6, 6)
    inst = Instrumented(capture(m, x[:1]))
    assert len(inst.nodes) > 5
    with torch.no_grad():
        out, values = inst.forward(x)
        assert torch.equal(out, m(x))
        for k in range(len(inst.nodes)):  # every node, however many the graph has
            again, _ = inst.run_from(k, values)
            assert torch.equal(again, out), k


def test_rerun_uses_live_weights():
    m = _model()
    x = torch.rand(2, 1, 6, 6)
    inst = Instrumented(capture(m, x[:1]))
    k = inst.index[next(n.name for n in inst.nodes if n.name.startswith("add"))]
    with torch.no_grad():
        _, values = inst.forward(x)
        m.fc.weight.mul_(2.0)  # a repair or a fault changes a later layer's weight
        again, _ = inst.run_from(k, values)
        assert torch.allclose(again, m(x))


def test_recompute_gives_one_node_again():
    m = _model()
    x = torch.rand(2, 1, 6, 6)
    inst = Instrumented(capture(m, x[:1]))
    with torch.no_grad():
        _, values = inst.forward(x)
        for i in inst.layer_indices:
            assert torch.equal(inst.recompute(i, values), values[i]), inst.names[i]


def test_hooks_fallback_when_fx_fails():
    torch.manual_seed(0)
    m = DataDependent().eval()
    x = torch.rand(3, 4)
    with pytest.warns(UserWarning, match="falling back to module hooks"):
        g = capture(m, x[:1])
    assert isinstance(g, ModelGraph) and g.capture == "hooks"
    assert [layer.name for layer in g.layers] == ["a", "b"]
    assert g.layers[0].params == ["a.weight", "a.bias"]
    with torch.no_grad():
        out, values = g.record(x)
        assert set(values) == {"input", "a", "b"}
        assert torch.equal(values["b"], out)


@pytest.mark.parametrize("name", ["digits_resnet", "digits_vit"])
def test_rerun_from_every_layer_of_a_reference_model(name):
    from save_ros import models

    model = models.load(name)
    x, _ = models.dataset(name, "test")
    x = x[:4]
    g = capture(model, x[:1])
    assert g.capture == "fx"
    inst = Instrumented(g)
    with torch.no_grad():
        out, values = inst.forward(x)
        assert torch.equal(out, model(x))
        for k in inst.layer_indices:
            again, _ = inst.run_from(k, values)
            assert torch.equal(again, out), f"node {k} ({inst.names[k]})"
