"""One buffer per dtype: how a model's weights travel to worker processes.

A worker gets the parent's weights by reference, not by value: CPU shared memory (a file
descriptor per storage, sent over a socket) or CUDA IPC (a handle per storage, opened by the
worker). Per tensor that breaks at robot scale: MobileNetV2 has 314 parameters and buffers, more
file descriptors than one message may carry ("too many fds"), and each CUDA IPC handle costs the
standby an open call. `PackedWeights` moves every parameter and buffer of the parent's module into
one contiguous buffer per dtype (the parent's module keeps working: its tensors become views of
those buffers) and pickles as the module's skeleton (no tensors) plus the buffers plus a layout.
A worker rebuilds the module with views of the same memory: one descriptor or handle per dtype.
Tied weights stay tied (one slot, every owner points at it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class _Slot:
    """Where one distinct tensor lives in its dtype's buffer."""

    dtype: str
    offset: int
    shape: tuple[int, ...]
    parameter: bool
    requires_grad: bool


class PackedWeights:
    """A module's parameters and buffers packed into one shared buffer per dtype."""

    def __init__(self, module: nn.Module, share: bool = True) -> None:
        owners = _owners(module)
        distinct: dict[int, torch.Tensor] = {}
        for _, _, _, tensor in owners:
            distinct.setdefault(id(tensor), tensor)
        sizes: dict[torch.dtype, int] = {}
        slots: dict[int, _Slot] = {}
        for key, tensor in distinct.items():
            offset = sizes.get(tensor.dtype, 0)
            slots[key] = _Slot(str(tensor.dtype).removeprefix("torch."), offset,
                               tuple(tensor.shape), isinstance(tensor, nn.Parameter),
                               tensor.requires_grad)
            sizes[tensor.dtype] = offset + tensor.numel()
        device = next(iter(distinct.values())).device if distinct else torch.device("cpu")
        self.buffers = {str(d).removeprefix("torch."): torch.empty(n, dtype=d, device=device)
                        for d, n in sizes.items()}
        with torch.no_grad():
            for key, tensor in distinct.items():
                self._view(slots[key]).copy_(tensor)
        if share and device.type == "cpu":
            for buffer in self.buffers.values():
                buffer.share_memory_()
        # the parent's module now runs on the packed memory (a flip there is seen everywhere)
        for key, tensor in distinct.items():
            tensor.data = self._view(slots[key])
        # the module without its tensors (each distinct tensor -> None), pickled as plain objects
        self.skeleton = copy.deepcopy(module, {key: None for key in distinct})
        self.layout = [(path, kind, name, slots[id(tensor)])
                       for path, kind, name, tensor in owners]

    def _view(self, slot: _Slot) -> torch.Tensor:
        numel = 1
        for n in slot.shape:
            numel *= n
        return self.buffers[slot.dtype][slot.offset:slot.offset + numel].view(slot.shape)

    def module(self) -> nn.Module:
        """A module whose parameters and buffers are views of the packed buffers (no copy)."""
        module = copy.deepcopy(self.skeleton)
        made: dict[_Slot, torch.Tensor] = {}  # one object per slot: tied weights stay tied
        for path, kind, name, slot in self.layout:
            if slot not in made:
                view = self._view(slot)
                made[slot] = (nn.Parameter(view, requires_grad=slot.requires_grad)
                              if slot.parameter else view)
            owner = module.get_submodule(path)
            getattr(owner, kind)[name] = made[slot]
        return module

    def nbytes(self) -> int:
        """Bytes in the packed buffers."""
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


def _owners(module: nn.Module) -> list[tuple[str, str, str, torch.Tensor]]:
    """(submodule path, '_parameters' or '_buffers', name, tensor) for every registration,
    tied ones included."""
    out = []
    for path, sub in module.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(sub, kind).items():
                if tensor is not None:
                    out.append((path, kind, name, tensor))
    return out
