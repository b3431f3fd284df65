"""Mixed fault plans: several (target, fault model) entries drawn together, saved, replayed.

A `FaultPlan` is what to inject; `FaultPlan.sample` draws a concrete `FaultList` (seeded); the
list saves to JSON and `apply_faults(model, faults)` applies it: weight faults in place (undone on
exit), activation faults as transient hooks, PE faults as layer hooks, all in one inference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from save_ros.faults.activations import ActivationFaults, activation_sites, resolve_sites
from save_ros.faults.faultmodels import (
    BitFault,
    FaultModel,
    ProcessingElementFault,
    _generator,
    model_to_dict,
)
from save_ros.faults.inject import apply_bit_faults
from save_ros.faults.pe import PEFaults, PEFaultSpec, sample_pe_faults
from save_ros.faults.records import UndoLog, tensors_of
from save_ros.faults.targets import Target, TargetKind, select_weights, weight_sites


@dataclass(frozen=True)
class PlanEntry:
    """One fault model aimed at one target."""

    target: Target
    model: FaultModel


@dataclass
class FaultList:
    """Concrete faults: weight and activation `BitFault`s and faulty PEs, ready to apply."""

    weights: list[BitFault] = field(default_factory=list)
    activations: list[BitFault] = field(default_factory=list)
    pe: list[PEFaultSpec] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # seed, plan description: for the record only

    def to_json(self) -> str:
        """The list as a JSON document."""
        return json.dumps({
            "weights": [f.to_list() for f in self.weights],
            "activations": [f.to_list() for f in self.activations],
            "pe": [s.to_dict() for s in self.pe],
            "meta": self.meta,
        })

    @classmethod
    def from_json(cls, text: str) -> FaultList:
        """Inverse of `to_json`."""
        d = json.loads(text)
        return cls([BitFault.from_list(x) for x in d.get("weights", [])],
                   [BitFault.from_list(x) for x in d.get("activations", [])],
                   [PEFaultSpec.from_dict(x) for x in d.get("pe", [])], d.get("meta", {}))

    def save(self, path: str | Path) -> None:
        """Write the list as JSON."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> FaultList:
        """Read a list written by `save`."""
        return cls.from_json(Path(path).read_text())


@dataclass
class FaultPlan:
    """Several (target, fault model) entries, drawn together from one seed."""

    entries: list[PlanEntry] = field(default_factory=list)

    def add(self, target: Target, model: FaultModel) -> FaultPlan:
        """Append an entry; returns self for chaining."""
        self.entries.append(PlanEntry(target, model))
        return self

    def describe(self) -> list[dict]:
        """JSON-safe description of the entries."""
        return [{"target": e.target.to_dict(), "model": model_to_dict(e.model)}
                for e in self.entries]

    def sample(self, model: nn.Module, seed: int | torch.Generator = 0,
               example_input: torch.Tensor | None = None,
               tensors: Mapping[str, torch.Tensor] | None = None) -> FaultList:
        """Draw a FaultList; `example_input` (batch shape as run) is needed for activations.

        Entries draw in order from one generator, so a seed fixes the whole list. The naming of
        the activation sites (`"fx"` or `"modules"`, from the targets' `sites`) is recorded in
        `meta["activation_sites"]`; all activation entries of a plan must resolve to one.
        """
        gen = _generator(seed)
        out = FaultList(meta={"seed": seed if isinstance(seed, int) else None,
                              "plan": self.describe()})
        modes = {resolve_sites(model, e.target.sites) for e in self.entries
                 if e.target.kind is TargetKind.ACTIVATIONS
                 and not isinstance(e.model, ProcessingElementFault)}
        if len(modes) > 1:
            raise ValueError("a plan's activation entries name sites one way: all fx or all "
                             f"module paths, not {sorted(modes)}")
        if modes:
            out.meta["activation_sites"] = modes.pop()
        for e in self.entries:
            if isinstance(e.model, ProcessingElementFault):
                out.pe.extend(sample_pe_faults(model, e.model, e.target, gen))
            elif e.target.kind is TargetKind.WEIGHTS:
                sites = weight_sites(select_weights(model, e.target, tensors))
                out.weights.extend(e.model.sample(sites, gen))
            else:
                if example_input is None:
                    raise ValueError("activation faults need example_input (the batch as run)")
                out.activations.extend(e.model.sample(
                    activation_sites(model, example_input, e.target), gen))
        return out


class AppliedFaults:
    """A FaultList in effect on a model; the context exits by undoing weights and removing hooks.

    `log` is the weight UndoLog; `activation_records` what the transient faults changed.
    """

    def __init__(self, model: nn.Module, faults: FaultList,
                 tensors: Mapping[str, torch.Tensor] | None = None, once: bool = True):
        self.model = model
        self.faults = faults
        self._tensors = dict(tensors) if tensors is not None else tensors_of(model)
        self._act = ActivationFaults(model, faults.activations, once,
                                     faults.meta.get("activation_sites", "modules"))
        self._pe = PEFaults(model, faults.pe)
        self.log = UndoLog()

    @property
    def activation_records(self):
        """Records of the activation faults applied so far."""
        return self._act.records

    def __enter__(self) -> AppliedFaults:
        self.log = UndoLog(apply_bit_faults(self._tensors, self.faults.weights))
        try:  # all or nothing: if the hooks cannot go in, the weights are restored
            self._act.__enter__()
            try:
                self._pe.__enter__()
            except BaseException:
                self._act.__exit__(None, None, None)
                raise
        except BaseException:
            self.log.undo(self._tensors)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._pe.__exit__(*exc)
        self._act.__exit__(*exc)
        self.log.undo(self._tensors)


def apply_faults(model: nn.Module, faults: FaultList,
                 tensors: Mapping[str, torch.Tensor] | None = None,
                 once: bool = True) -> AppliedFaults:
    """Context manager that applies a FaultList to `model` (see AppliedFaults)."""
    return AppliedFaults(model, faults, tensors, once)
