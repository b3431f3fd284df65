"""Where a worker's model comes from, and how one copy of the weights is shared between workers.

CPU: the parent loads the model once and moves every parameter and buffer into shared memory
(`Module.share_memory()`); torch.multiprocessing pickles such tensors as file descriptors of the
same memory, so a spawned worker maps the parent's copy and no byte is copied. GPU: the parent
keeps the weights on the device and torch.multiprocessing sends CUDA IPC handles; the worker
maps the same device memory (the parent must outlive it, which the supervisor guarantees).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from save_ros.failover.config import FailoverConfig, WeightSharing, WorkerModel
from save_ros.failover.packed import PackedWeights
from save_ros.failover.requests import as_tensors
from save_ros.models import loader


@dataclass(frozen=True)
class ModelSource:
    """A picklable recipe for a model: 'package.module:factory' called with `args`.

    Workers load it through `save_ros.models.loader` (its import-path rule, its
    `ModelLoadError`)."""

    factory: str
    args: tuple[Any, ...] = field(default_factory=tuple)

    @classmethod
    def named(cls, name: str, model_file: str = "") -> ModelSource:
        """A model as the node names it: bundled or zoo name (with a state dict or TorchScript
        `model_file`), `.pt2` file or import path; loaded by `loader.load_module`."""
        return cls("save_ros.models.loader:load_module", (name, model_file))

    @classmethod
    def instance(cls, module: nn.Module) -> ModelSource:
        """Stands for a model instance the parent shares; a worker can never load it itself."""
        kind = type(module)
        return cls(f"{kind.__module__}:{kind.__qualname__} instance (shared, not loadable)")

    def load(self) -> nn.Module:
        """Import the factory and build the model (eval mode); `ModelLoadError` if it cannot."""
        return loader.load_factory(self.factory, self.args).eval()


def prepare_shared(model: nn.Module, sharing: WeightSharing,
                   device: str) -> PackedWeights | None:
    """Put the parent's copy where workers can map it, packed one buffer per dtype (the
    parent's `model` runs on it from now on); None when workers load their own."""
    if sharing is WeightSharing.NONE:
        return None
    if sharing is WeightSharing.SHARED_MEMORY:
        return PackedWeights(model.cpu())
    if not torch.cuda.is_available():
        raise RuntimeError("weight_sharing='cuda_ipc' needs CUDA; this torch has none "
                           "(use 'shared_memory')")
    return PackedWeights(model.to(device))


def shared_bytes(model: nn.Module, received: dict[str, int]) -> int:
    """Bytes of parameters and buffers that still live where the parent shared them.

    `received` holds the data pointers the tensors had when they arrived (`storage_pointers`).
    """
    named = list(model.named_parameters()) + list(model.named_buffers())
    return sum(t.numel() * t.element_size() for name, t in named
               if received.get(name) == t.data_ptr() and (t.is_shared() or t.is_cuda))


def storage_pointers(model: nn.Module) -> dict[str, int]:
    """Data pointer of every parameter and buffer (to show which copy a process runs on)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return {name: tensor.data_ptr() for name, tensor in named}


def protect_parts(config: FailoverConfig, model: nn.Module | None, source: ModelSource,
                   example: Any, input_range: Any,
                   protect_config: Any) -> tuple[Any, dict[str, Any] | None]:
    """The ProtectConfig a worker gets (its Analysis taken out) and the Analysis as a dict."""
    if config.backend is not WorkerModel.PROTECT:
        return protect_config, None
    from save_ros.core.protect import ProtectConfig
    from save_ros.core.select import analyze

    protect_config = protect_config or ProtectConfig()
    analysis = protect_config.analysis
    # An Analysis holds its fx graph, which does not pickle; the dict form does.
    worker_config = replace(protect_config, analysis=None)
    if analysis is None and config.share_analysis:
        if model is None or config.weight_sharing is WeightSharing.CUDA_IPC:
            model = source.load()  # analyse a CPU copy
        analysis = analyze(model, as_tensors(example), input_range,
                           protect_config.calibration, protect_config.margin)
    return worker_config, None if analysis is None else analysis.to_dict()
