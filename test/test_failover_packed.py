"""Weights packed one buffer per dtype: a robot-scale model reaches its workers by reference.

Before packing, a MobileNetV2 (314 parameters and buffers) could not reach a worker at all: one
file descriptor per tensor is more than one message carries ("too many fds").
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from save_ros.failover import FailoverConfig, FailoverModel
from save_ros.failover.packed import PackedWeights
from save_ros.models import zoo


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as language heads are
        self.norm = nn.BatchNorm1d(4)
        self.register_buffer("steps", torch.tensor(3, dtype=torch.int64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids))) + self.steps


def test_packing_keeps_the_module_and_its_ties_and_shares_one_buffer_per_dtype():
    torch.manual_seed(0)
    model = Tied().eval()
    ids = torch.arange(6)
    expected = model(ids).detach().clone()
    packed = PackedWeights(model)
    assert set(packed.buffers) == {"float32", "int64"}
    assert all(b.is_shared() for b in packed.buffers.values())
    # the parent's module runs on the packed memory, unchanged
    assert torch.equal(model(ids), expected)
    assert model.head.weight is model.embed.weight
    # a worker's copy: views of the same memory, ties kept, no tensor in the skeleton
    restored = pickle.loads(pickle.dumps(packed)).module()
    assert restored.head.weight is restored.embed.weight
    assert isinstance(restored.head.weight, nn.Parameter)
    assert torch.equal(restored.eval()(ids), expected)
    mine = packed.module()
    with torch.no_grad():
        model.embed.weight[0, 0] += 1.0  # a change in the parent is the worker's change
    assert torch.equal(mine.embed.weight, model.embed.weight)
    assert packed.nbytes() == sum(t.numel() * t.element_size() for t in
                                  [*model.parameters(), *model.buffers()])


def test_a_mobilenet_v2_instance_is_served_from_shared_memory():
    torch.manual_seed(0)
    model = zoo.build("mobilenet_v2", num_classes=10, image_size=32, input_dependent=False)
    assert len(list(model.parameters())) + len(list(model.buffers())) > 256
    x = torch.rand(1, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker runs: the same reduction order, bit for bit
    try:
        with torch.inference_mode():
            expected = model(x)
    finally:
        torch.set_num_threads(threads)
    config = FailoverConfig(weight_sharing="shared_memory", standby=False)
    with FailoverModel(model, x, (0.0, 1.0), config) as served:
        result = served.infer(x, timeout=120)
        assert torch.equal(result.output, expected)
        info = served.worker_info()
        total = sum(t.numel() * t.element_size()
                    for t in [*model.parameters(), *model.buffers()])
        assert info["shared_bytes"] == total  # every byte mapped, none copied


@pytest.mark.parametrize("sharing", ["nonsense"])
def test_a_bad_sharing_mode_is_a_clear_error(sharing):
    with pytest.raises(ValueError, match="weight_sharing"):
        FailoverConfig(weight_sharing=sharing)
