"""Choose each layer's check from the Analysis and the Placement, by measured cost.

Per layer (fx node that computes): nothing when its output is in reliable memory, has no float
tensor output, or holds robust bits only; a range check when its non-robust bits are all
ranging; redundancy (DMR) when any bit is vulnerable. A view / shape node the analysis does not
count (it aliases its producer's memory) is checked where its producer is, except a view
*module* (e.g. `nn.Flatten`), which is a place an activation fault can hit and gets a cheap DMR.

The kind objects (`core.verify.kinds`) do the rest: the chosen kind fills the check (`enter`:
bounds, re-computation, measured cost), then every kind in `CheckKind` order may take it over
where it is eligible and cheaper (`offer`: ABFT from DMR, the memory checksum from DMR, ABFT
and range), and the plan groups the checks the way each kind runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from save_ros.core.allocate import Placement
from save_ros.core.analysis import Analysis
from save_ros.core.graph import node_params
from save_ros.core.instrument import Instrumented
from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds import CHECKSUM, DMR, FORCE_KINDS, KINDS, RANGE, kind_of
from save_ros.core.verify.kinds.base import PlanContext, aliases_input, best_time
from save_ros.core.verify.kinds.range import RangeBatch
from save_ros.core.weights import WeightStore
from save_ros.errors import UserError


class CheckPlanError(UserError, ValueError):
    """A check setting that cannot be applied (the message says which values exist)."""


@dataclass
class CheckPlan:
    """Every layer's check and everything a verdict needs; `reanalyze` swaps it as a whole."""

    analysis: Analysis | None
    placement: Placement
    checks: list[LayerCheck]
    range_batch: RangeBatch
    redundant: list[LayerCheck]
    param_readers: dict[str, list[str]]  # weight -> layers that read it
    layer_params: dict[int, list[str]]  # node position -> weights it reads
    reliable_sites: list[str] = field(default_factory=list)  # module paths of reliable outputs
    # vulnerable activation bits in normal memory, and those a redundancy check covers
    coverage: dict[str, Any] = field(default_factory=dict)
    checksummed: list[LayerCheck] = field(default_factory=list)  # memory checksums, in order
    last_read: dict[int, int] = field(default_factory=dict)  # node -> its memory's last reader
    # the forward the runtime runs for this plan: `Instrumented.checksummed` (returns the
    # write and read sums too) where checksums or fault sites need it, else None (plain)
    forward: Any = None
    # nodes whose values `forward` keeps for the verifier (None: every node); with a partial set
    # Edit re-runs the whole checksummed forward from the input (`ProtectedModel._rerun`)
    keep: set[int] | None = None

    def by_kind(self) -> dict[str, int]:
        """How many layers use each check."""
        out: dict[str, int] = {}
        for c in self.checks:
            out[c.kind.value] = out.get(c.kind.value, 0) + 1
        return out


def plan_checks(inst: Instrumented, analysis: Analysis | None, placement: Placement,
                store: WeightStore, values: Sequence[Any], force: str = "auto",
                robust_allowance: bool = True, min_vulnerable_share: float = 0.0,
                chain_dmr: bool = False, redundancy_budget: float | None = None,
                memory_checksums: bool = False) -> CheckPlan:
    """The check of every layer, decided on the example run's `values`.

    `redundancy_budget`: at most this share of one forward pass's time is spent on redundancy
    (DMR / ABFT); the layers with the most vulnerable bits per second of check keep it, the
    others fall back to a range check and their vulnerable bits are left unchecked (counted in
    `CheckPlan.coverage`). None (the default) checks every vulnerable bit.
    `min_vulnerable_share`: a layer whose output has at most this share of vulnerable bits (of
    all its bits) gets a range check instead of redundancy; its few vulnerable bits are then left
    unchecked (counted in the reason). 0 (the default) checks every vulnerable bit.
    `chain_dmr`: see `kinds.dmr.DmrKind.chain` (off by default).
    `memory_checksums`: offer the memory checksum (`core.verify.kinds`) where it costs less
    than the check picked otherwise (the backend must run the checksummed forward).
    """
    if force not in FORCE_KINDS:
        raise CheckPlanError(f"checks={force!r}; use one of {', '.join(FORCE_KINDS)}")
    tensors = analysis.tensors if analysis is not None else {}
    ctx = PlanContext(inst, store, values, force, robust_allowance, memory_checksums)
    checks: list[LayerCheck] = []
    layer_params: dict[int, list[str]] = {}
    param_readers: dict[str, list[str]] = {}
    reliable_sites: list[str] = []
    for i in inst.layer_indices:
        node = inst.node_of(i)
        name = inst.names[i]
        params = [p for p in _params_of(inst, i) if p in store.slots]
        layer_params[i] = params
        for p in params:
            param_readers.setdefault(p, []).append(name)
        val = values[i]
        c = LayerCheck(index=i, name=name, kind=CheckKind.NONE, reason="",
                       recompute=inst.recomputer(i))
        ta = tensors.get(name)
        if placement.is_reliable(name):
            if node.op == "call_module":
                reliable_sites.append(str(node.target))
            c.reason = "output in reliable memory"
        elif not (isinstance(val, torch.Tensor) and val.is_floating_point()):
            c.reason = "no float tensor output"
        elif force == "none":
            c.reason = "checks disabled (checks='none')"
        elif ta is None:
            ins = ctx.inputs_of(i)
            if any(val is v for v in ins):  # Dropout / Identity in eval: the same tensor
                c.reason = "returns its input: checked where the input is produced"
            elif aliases_input(val, ins) and (node.op != "call_module" or memory_checksums):
                c.reason = "view of its input: checked where the input is produced"
            else:
                c.kind, c.reason = DMR.kind, "not analysed: re-computed"
        elif force == "range" or (force == "auto" and ta.vulnerable_bits <= min_vulnerable_share
                                  * ta.numel * max(len(ta.bit_shares), 1)
                                  and ta.ranging_bits > 0):
            c.kind, c.reason = RANGE.kind, f"{ta.ranging_bits:.0f} ranging bits, " \
                f"{ta.vulnerable_bits:.0f} vulnerable bits left unchecked" if force == "auto" \
                else "checks='range'"
        elif force == "auto" and ta.vulnerable_bits <= 0:
            c.reason = "robust bits only"
        else:
            c.kind = DMR.kind
            c.reason = f"{ta.vulnerable_bits:.0f} vulnerable bits"
        kind_of(c).enter(c, ctx, ta)  # bounds, re-computation, measured cost
        for kind in KINDS.values():  # cheaper kinds take it over (ABFT, memory checksum)
            kind.offer(c, ctx, ta)
        checks.append(c)
    coverage = _budget(ctx, checks, tensors, redundancy_budget)
    redundant = [c for c in checks if kind_of(c).redundant]  # checked one layer at a time
    if chain_dmr:
        redundant = DMR.chain(inst, redundant)
    batch = RANGE.batch(checks)
    summed = [c for c in checks if c.kind is CHECKSUM.kind]
    return CheckPlan(analysis, placement, checks, batch, redundant, param_readers, layer_params,
                     reliable_sites, coverage, summed,
                     inst.last_readers(values) if summed else {})


def _budget(ctx: PlanContext, checks: list[LayerCheck], tensors: dict, budget: float | None
            ) -> dict[str, float]:
    """Keep redundancy where it buys most within `budget` x forward time; report coverage."""
    inst, values = ctx.inst, ctx.values
    red = [c for c in checks if kind_of(c).redundant]
    vul = {c.index: float(tensors[c.name].vulnerable_bits) if c.name in tensors else 0.0
           for c in red}
    summed = sum(float(tensors[c.name].vulnerable_bits) for c in checks
                 if c.kind is CHECKSUM.kind and c.name in tensors)
    total = sum(vul.values()) + summed
    out = {"vulnerable_bits": total, "covered_bits": total, "budget": budget,
           "checksum_bits": summed}
    if budget is None or not red:
        return out
    if budget < 0:
        raise CheckPlanError(f"redundancy_budget must be >= 0 (a share of one forward pass), "
                             f"got {budget}")
    x = [values[i] for i in inst.placeholders]
    cuda = any(isinstance(v, torch.Tensor) and v.is_cuda for v in x)
    forward_s = best_time(lambda: inst.forward(*x), reps=5, cuda=cuda)
    cost = {c.index: c.cost_s.get(c.kind.value, c.cost_s.get(DMR.name, 0.0)) for c in red}
    allowed, spent, covered = budget * forward_s, 0.0, 0.0
    for c in sorted(red, key=lambda c: -vul[c.index] / max(cost[c.index], 1e-9)):
        if spent + cost[c.index] <= allowed:
            spent += cost[c.index]
            covered += vul[c.index]
            continue
        ta = tensors.get(c.name)
        if ta is None:
            continue  # not analysed: nothing to range-check against; keep its DMR
        c.kind, c.abft = RANGE.kind, None
        c.reason = f"{vul[c.index]:.0f} vulnerable bits left to the range check " \
            f"(redundancy budget {budget:g} of a forward pass)"
        RANGE.enter(c, ctx, ta)
    out.update(covered_bits=covered + summed, forward_s=forward_s, spent_s=spent)
    return out


def _params_of(inst: Instrumented, i: int) -> list[str]:
    """Weight names node i reads: its module's parameters and buffers, or get_attr inputs."""
    node = inst.node_of(i)
    modules = {node.target: inst.module_of(i)} if node.op == "call_module" else {}
    return node_params(node, modules)
