"""Activation faults: transient bit faults in layer outputs, through forward hooks.

An activation site is a selected leaf module's output, named by its module path (the hook
fallback of the naming convention in docs/design.md); flat indices address the whole output
tensor, batch included. Sites and sizes come from one probe forward pass on an input of the
batch shape you will run, so faults can be drawn uniformly per bit over all activations.
A module called more than once in a pass (a shared activation module) is one site: its first
call's output; later calls are left clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from save_ros.core import bits
from save_ros.faults.faultmodels import BitFault, MemoryFaultModel
from save_ros.faults.inject import apply_bit_faults
from save_ros.faults.records import FlipRecord
from save_ros.faults.targets import EmptyTargetError, Site, Target, TargetKind, select_modules


def activation_sites(model: nn.Module, example_input: torch.Tensor,
                     target: Target = Target(TargetKind.ACTIVATIONS)) -> list[Site]:
    """Run one probe forward pass and return the selected leaf modules' output sites, in order."""
    modules = {p: m for p, m in select_modules(model, target).items() if not target.excluded(p)}
    seen: dict[str, Site] = {}
    handles = []

    def probe(path: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dtype in bits.LAYOUTS:
                seen.setdefault(path, Site(path, output.numel(), output.dtype))
        return hook

    for path, module in modules.items():
        handles.append(module.register_forward_hook(probe(path)))
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise EmptyTargetError(
            f"target {target.to_dict()} selects no module with a tensor output; check the layer "
            "globs against model.named_modules()"
        )
    return list(seen.values())


def sample_activation_faults(model: nn.Module, fault_model: MemoryFaultModel,
                             example_input: torch.Tensor,
                             target: Target = Target(TargetKind.ACTIVATIONS),
                             seed: int | torch.Generator = 0) -> list[BitFault]:
    """Probe the sites, then draw concrete activation faults."""
    return fault_model.sample(activation_sites(model, example_input, target), seed)


class ActivationFaults:
    """Hooks that apply `faults` to layer outputs; use as a context manager around inference.

    `once=True` (the default) makes them transient: each site is corrupted the first time it runs
    inside the context and is clean afterwards, so a re-execution (SAVE's Edit stage) sees a
    fault-free value, as it would after a real upset in an activation buffer. `records` holds what
    was changed (old/new bits and values), in the order the faults were applied.
    """

    def __init__(self, model: nn.Module, faults: Sequence[BitFault], once: bool = True):
        self.model = model
        self.once = once
        self.records: list[FlipRecord] = []
        self._by_site: dict[str, list[BitFault]] = {}
        for f in faults:
            self._by_site.setdefault(f.site, []).append(f)
        modules = dict(model.named_modules())
        missing = [s for s in self._by_site if s not in modules]
        if missing:
            raise KeyError(f"activation faults name modules the model lacks: {missing}")
        self._modules = {s: modules[s] for s in self._by_site}
        self._fired: set[str] = set()
        self._handles: list = []

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            if self.once and site in self._fired:
                return None
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"activation site {site!r} returns {type(output).__name__}, "
                                "not a tensor; pick a module with a tensor output")
            self._fired.add(site)
            # Corrupt a copy: the module's own buffers (an in-place ReLU's input) stay clean.
            out = output.detach().clone().contiguous()
            self.records.extend(apply_bit_faults({site: out}, self._by_site[site]))
            return out
        return hook

    def __enter__(self) -> ActivationFaults:
        self._fired.clear()
        for site, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def fired(self) -> set[str]:
        """Sites whose faults were applied so far in this context."""
        return set(self._fired)


@contextmanager
def activation_faults(model: nn.Module, faults: Sequence[BitFault], once: bool = True):
    """Context manager form of `ActivationFaults`."""
    with ActivationFaults(model, faults, once) as active:
        yield active
