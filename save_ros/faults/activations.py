"""Activation faults: transient bit faults in layer outputs, at fx nodes or leaf modules.

Two ways to find and name sites (`Target.sites`):
- `"modules"` (the default): a selected leaf module's output, named by its module path, reached
  through a forward hook (the fallback of the naming convention in docs/design.md). A module
  called more than once in a pass is one site: its first call's output.
- `"fx"`: the output of every computing torch.fx node (functional ops such as residual adds,
  attention, `F.silu`, a squeeze-excite `torch.mul` included), named by fx node name, reached
  through taps in a traced copy of the forward (`save_ros.faults.fxsites`; pure views are not
  sites). `"auto"` takes fx when the model traces, else modules.

Flat indices address the whole output tensor, batch included. Sites and sizes come from one
probe forward pass on an input of the batch shape you will run, so faults can be drawn uniformly
per bit over all activations.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from save_ros.core import bits
from save_ros.faults import fxsites
from save_ros.faults.faultmodels import BitFault, MemoryFaultModel
from save_ros.faults.inject import apply_bit_faults
from save_ros.faults.records import FlipRecord
from save_ros.faults.targets import (
    EmptyTargetError,
    Site,
    Target,
    TargetKind,
    check_exclude,
    select_modules,
)


def resolve_sites(model: nn.Module, sites: str) -> str:
    """`"fx"` or `"modules"`: what `sites` (`modules | fx | auto`) means for this model.

    `"fx"` raises `UntraceableModelError` when torch.fx cannot trace the model.
    """
    if sites == "modules":
        return "modules"
    if sites == "fx":
        fxsites.fx_taps(model)
        return "fx"
    if sites != "auto":
        raise ValueError(f"sites must be modules, fx or auto, not {sites!r}")
    try:
        fxsites.fx_taps(model)
    except fxsites.UntraceableModelError:
        return "modules"
    return "fx"


def _module_sites(model: nn.Module, example_input: torch.Tensor, target: Target) -> list[Site]:
    check_exclude(target.exclude, (p for p, _ in model.named_modules() if p), "module")
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
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())


def _fx_sites(model: nn.Module, example_input: torch.Tensor, target: Target) -> list[Site]:
    taps, found = fxsites.probe(model, example_input)
    known = set(taps.nodes) | {n.module_path for n in taps.nodes.values() if n.module_path}
    check_exclude(target.exclude, known, "fx node or module")
    out = []
    for name, numel, dtype in found:
        info = taps.nodes[name]
        names = (name, info.module_path) if info.module_path else (name,)
        if any(target.excluded(n) for n in names):
            continue
        if not any(fnmatch.fnmatchcase(n, p) for n in names for p in target.layers):
            continue
        if target.types and (info.module is None or not issubclass(info.module, target.types)):
            continue
        out.append(Site(name, numel, dtype))
    return out


def activation_sites(model: nn.Module, example_input: torch.Tensor | tuple,
                     target: Target = Target(TargetKind.ACTIVATIONS)) -> list[Site]:
    """Run one probe forward pass and return the selected activation sites, in order.

    `example_input`: a tensor, or a tuple of the model's positional inputs (several inputs)."""
    mode = resolve_sites(model, target.sites)
    sites = (_fx_sites if mode == "fx" else _module_sites)(model, example_input, target)
    if not sites:
        what = "fx node" if mode == "fx" else "module"
        raise EmptyTargetError(
            f"target {target.to_dict()} selects no {what} with a float tensor output; check the "
            "layer globs against model.named_modules() (or the fx node names)"
        )
    return sites


def sample_activation_faults(model: nn.Module, fault_model: MemoryFaultModel,
                             example_input: torch.Tensor,
                             target: Target = Target(TargetKind.ACTIVATIONS),
                             seed: int | torch.Generator = 0) -> list[BitFault]:
    """Probe the sites, then draw concrete activation faults."""
    return fault_model.sample(activation_sites(model, example_input, target), seed)


class ActivationFaults:
    """Applies `faults` to activations; use as a context manager around inference.

    `sites` says how the fault sites are named (`Target.sites`; use what `activation_sites`
    was given). `once=True` (the default) makes faults transient: each site is corrupted the
    first time it runs inside the context and is clean afterwards, so a re-execution (SAVE's
    Edit stage) sees a fault-free value, as it would after a real upset in an activation buffer.
    `records` holds what was changed (old/new bits and values), in the order applied. The
    corrupted value is a copy: the producer's own memory (an in-place op's input) stays clean.
    """

    def __init__(self, model: nn.Module, faults: Sequence[BitFault], once: bool = True,
                 sites: str = "modules"):
        self.model = model
        self.once = once
        self._taps = None
        if sites == "fx" or sites == "auto":
            try:
                self._taps = fxsites.fx_taps(model)
            except fxsites.UntraceableModelError:
                if sites == "fx":
                    raise
        elif sites != "modules":
            raise ValueError(f"sites must be modules, fx or auto, not {sites!r}")
        self.mode = "fx" if self._taps is not None else "modules"
        self.records: list[FlipRecord] = []
        self._by_site: dict[str, list[BitFault]] = {}
        for f in faults:
            self._by_site.setdefault(f.site, []).append(f)
        self._fired: set[str] = set()
        self._handles: list = []
        self._tapped = None
        if self._taps is not None:
            names = self._taps.nodes
            missing = [s for s in self._by_site if s not in names]
            if missing:
                raise KeyError(f"activation faults name fx nodes the model's graph lacks: "
                               f"{missing}")
        else:
            modules = dict(model.named_modules())
            missing = [s for s in self._by_site if s not in modules]
            if missing:
                raise KeyError(f"activation faults name modules the model lacks: {missing}")
            self._modules = {s: modules[s] for s in self._by_site}

    def _corrupt(self, site: str, output):
        if (self.once and site in self._fired) or site not in self._by_site:
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"activation site {site!r} returns {type(output).__name__}, "
                            "not a tensor; pick a site with a tensor output")
        self._fired.add(site)
        out = output.detach().clone(memory_format=torch.contiguous_format)
        self.records.extend(apply_bit_faults({site: out}, self._by_site[site]))
        return out

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            return self._corrupt(site, output)
        return hook

    def _fire(self, value, name: str):
        out = self._corrupt(name, value) if name in self._by_site else None
        return value if out is None else out

    def __enter__(self) -> ActivationFaults:
        self._fired.clear()
        if self.mode == "fx":
            if self._by_site:  # nothing to inject: leave the model's forward alone
                self._tapped = fxsites.tapped(self.model, self._taps, self._fire)
                self._tapped.__enter__()
            return self
        for site, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        if self._tapped is not None:
            self._tapped.__exit__(*exc)
            self._tapped = None
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def fired(self) -> set[str]:
        """Sites whose faults were applied so far in this context."""
        return set(self._fired)


@contextmanager
def activation_faults(model: nn.Module, faults: Sequence[BitFault], once: bool = True,
                      sites: str = "modules"):
    """Context manager form of `ActivationFaults`."""
    with ActivationFaults(model, faults, once, sites) as active:
        yield active
