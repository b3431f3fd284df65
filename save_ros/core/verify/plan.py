"""Choose each layer's check from the Analysis and the Placement, by measured cost.

Per layer (fx node that computes): nothing when its output is in reliable memory, has no float
tensor output, or holds robust bits only; a range check when its non-robust bits are all
ranging; redundancy when any bit is vulnerable: ABFT for linear / conv when it measured
clearly cheaper than re-computing the layer on this machine (`ABFT_GAIN`), else DMR. A view /
shape node the analysis does not count (it aliases its producer's memory) is checked where its
producer is, except a view *module* (e.g. `nn.Flatten`), which is a place an activation fault can
hit and gets a cheap DMR.
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
from save_ros.core.verify.checks import AbftCheck, CheckKind, LayerCheck, RangeBatch, abft_for
from save_ros.core.verify.kinds import best_time as _time
from save_ros.core.verify.kinds import offer_checksum, range_cost
from save_ros.core.weights import WeightStore
from save_ros.errors import UserError

ABFT_GAIN = 0.8  # ABFT must cost < 80 % of DMR to be picked (DMR is exact, ABFT has a tolerance)
FORCE_KINDS = ("auto", "dmr", "abft", "range", "checksum", "none")


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


def _aliases_input(out: Any, ins: Sequence[Any]) -> bool:
    """True when `out` shares storage with one of the tensors in `ins` (a view)."""
    if not isinstance(out, torch.Tensor):
        return False
    ptr = out.untyped_storage().data_ptr()
    return any(isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr for v in ins)


def _through_producers(c: LayerCheck, inst: Instrumented, values: Sequence[Any],
                       depth: int = 3) -> None:
    """Make a DMR that would compare a memory with itself re-compute through its producers.

    A node that only selects or views its input (`getitem` of a multi-output layer such as
    `nn.MultiheadAttention`, whose tuple output has no check of its own; a reshape) re-computes
    to the very tensor it saved, so its DMR compares the memory with itself and sees no flip.
    Such a check re-computes the producer first (up to `depth` levels), then the node.
    """
    saved = values[c.index]
    if not _aliases_input(c.recompute(values), [saved]):
        return
    chain, i = [], c.index
    for _ in range(depth):
        node = inst.node_of(i)
        src = next((n for n in node.all_input_nodes if n.name in inst.index), None)
        if src is None:
            break
        j = inst.index[src.name]
        if j in inst.placeholders:
            break
        chain.insert(0, j)

        def run(values: Sequence[Any], chain=tuple(chain), k=c.index) -> Any:
            local = list(values)
            for j in chain:
                local[j] = inst.recompute(j, local)
            return inst.recompute(k, local)

        if not _aliases_input(run(values), [saved]):
            c.recompute = run
            c.reason += f"; re-computed through {inst.names[chain[0]]} (its own re-computation " \
                "would read the saved memory back)"
            return
        i = j
    c.reason += "; re-computation reads the saved memory back (a flip here is not seen)"


def _abft(inst: Instrumented, i: int, store: WeightStore) -> AbftCheck | None:
    """ABFT data for node i if it is a Linear / Conv2d module whose weights the store holds."""
    mod = inst.module_of(i)
    if mod is None:
        return None
    target = inst.node_of(i).target
    wname, bname = f"{target}.weight", f"{target}.bias"
    if wname not in store.slots:
        return None
    gb = store.golden(bname) if bname in store.slots else None
    return abft_for(mod, store.golden(wname), gb)


def _range_check(c: LayerCheck, ta: Any, value: torch.Tensor) -> LayerCheck:
    """Fill the range bounds of a check from a TensorAnalysis."""
    lo, hi = ta.check_range()
    c.range_source = ta.check.value
    if isinstance(lo, list) and ta.channel_dim is not None and ta.channel_dim < value.dim() \
            and value.shape[ta.channel_dim] == len(lo):
        c.channel_dim = ta.channel_dim
        c.range_low, c.range_high = torch.tensor(lo), torch.tensor(hi)
    else:
        lo_s = min(lo) if isinstance(lo, list) else lo
        hi_s = max(hi) if isinstance(hi, list) else hi
        c.range_low, c.range_high = torch.tensor([lo_s]), torch.tensor([hi_s])
    return c


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
    `chain_dmr`: see `_chain` (off by default).
    `memory_checksums`: offer the memory checksum (`core.verify.kinds`) where it costs less
    than the check picked otherwise (the backend must run the checksummed forward).
    """
    if force not in FORCE_KINDS:
        raise CheckPlanError(f"checks={force!r}; use one of {', '.join(FORCE_KINDS)}")
    tensors = analysis.tensors if analysis is not None else {}
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
            ins = [values[inst.index[n.name]] for n in node.all_input_nodes]
            if any(val is v for v in ins):  # Dropout / Identity in eval: the same tensor
                c.reason = "returns its input: checked where the input is produced"
            elif _aliases_input(val, ins) and (node.op != "call_module" or memory_checksums):
                c.reason = "view of its input: checked where the input is produced"
            else:
                c.kind, c.reason = CheckKind.DMR, "not analysed: re-computed"
        elif force == "range" or (force == "auto" and ta.vulnerable_bits <= min_vulnerable_share
                                  * ta.numel * max(len(ta.bit_shares), 1)
                                  and ta.ranging_bits > 0):
            c.kind, c.reason = CheckKind.RANGE, f"{ta.ranging_bits:.0f} ranging bits, " \
                f"{ta.vulnerable_bits:.0f} vulnerable bits left unchecked" if force == "auto" \
                else "checks='range'"
            _range_check(c, ta, val)
        elif force == "auto" and ta.vulnerable_bits <= 0:
            c.reason = "robust bits only"
        else:
            c.kind = CheckKind.DMR
            c.reason = f"{ta.vulnerable_bits:.0f} vulnerable bits"
        if c.kind is CheckKind.DMR:
            _through_producers(c, inst, values)
            _choose_redundancy(c, inst, store, values, force, ta, robust_allowance)
        if memory_checksums and c.kind in (CheckKind.DMR, CheckKind.ABFT, CheckKind.RANGE):
            ins = [values[inst.index[n.name]] for n in node.all_input_nodes]
            rc = range_cost(c, val) if c.kind is CheckKind.RANGE else None
            offer_checksum(c, values, force, not _aliases_input(val, ins), rc)
        checks.append(c)
    coverage = _budget(inst, checks, tensors, values, redundancy_budget)
    redundant = [c for c in checks if c.kind in (CheckKind.DMR, CheckKind.ABFT)]
    if chain_dmr:
        redundant = _chain(inst, redundant)
    batch = RangeBatch([c for c in checks if c.kind is CheckKind.RANGE])
    summed = [c for c in checks if c.kind is CheckKind.CHECKSUM]
    return CheckPlan(analysis, placement, checks, batch, redundant, param_readers, layer_params,
                     reliable_sites, coverage, summed,
                     inst.last_readers(values) if summed else {})


# relative slack of range bounds for the runtime's own arithmetic: a GPU computes fp32 convs
# in TF32 (10-bit mantissa) by default, and fp16 / bf16 models round every layer
_SLACK = {torch.float32: 2.0**-10, torch.float16: 2.0**-6, torch.bfloat16: 2.0**-4}


def fit_ranges(plan: CheckPlan, inst: Instrumented, calibration: Any,
               example: Any) -> None:
    """Widen every range check to what this runtime computes: its dtype and math mode.

    The analysis runs in exact fp32; the runtime may not (TF32 convolutions, an fp16 model).
    Bounds are widened by a slack of each channel's scale (`_SLACK` by dtype) and, with
    calibration inputs, to the hull of what the runtime itself computes on them, so a
    calibration input never raises a range alarm. A flip that scales a value by a power of two
    still leaves the widened range.
    """
    checks = plan.range_batch.checks
    if not checks:
        return
    seen_lo = [None] * len(checks)
    seen_hi = [None] * len(checks)
    if calibration is not None:
        n = len(example)
        calib = calibration.to(example.device, example.dtype)  # InputBatch: floats cast
        batches = [calib[i : i + n] for i in range(0, min(len(calib), 256), n)
                   if len(calib[i : i + n]) == n]
        slices = _owner_slices(plan.range_batch)
        with torch.inference_mode():
            for xb in batches:
                _, values = inst.forward(*xb.tensors)  # an InputBatch (core.inputs)
                mn, mx = plan.range_batch.reduce(values)
                mn, mx = mn.cpu(), mx.cpu()
                for k, (a, b) in enumerate(slices):
                    lo, hi = mn[a:b], mx[a:b]
                    seen_lo[k] = lo if seen_lo[k] is None else torch.minimum(seen_lo[k], lo)
                    seen_hi[k] = hi if seen_hi[k] is None else torch.maximum(seen_hi[k], hi)
    for k, c in enumerate(checks):
        lo, hi = c.range_low.float(), c.range_high.float()
        if seen_lo[k] is not None:
            lo, hi = torch.minimum(lo, seen_lo[k]), torch.maximum(hi, seen_hi[k])
        c.range_low, c.range_high = _widen(lo, hi, _SLACK.get(example.dtype, 2.0**-10))
    plan.range_batch = RangeBatch(checks)


def _widen(lo: torch.Tensor, hi: torch.Tensor, slack: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds widened by `slack` of each channel's own scale (plus a sliver of the tensor's).

    Per channel, not per tensor: Selection classed a flip *ranging* against its own channel's
    bounds, so a slack sized by the tensor's largest channel would let a flip in a small channel
    (0.005 -> 0.08 beside a channel reaching 100) pass a check that was counted on to catch it.
    The sliver (`slack` / 64 of the tensor's scale) keeps a channel that was exactly 0 on every
    calibration input from alarming on rounding.
    """
    scale = torch.maximum(lo.abs(), hi.abs())
    pad = slack * scale + slack / 64 * float(scale.max())
    return lo - pad, hi + pad


def _owner_slices(batch: RangeBatch) -> list[tuple[int, int]]:
    """Rows of each check in the batch's concatenated bounds."""
    out, start = [], 0
    for k in range(len(batch.checks)):
        end = start
        while end < len(batch.owner) and batch.owner[end] == k:
            end += 1
        out.append((start, end))
        start = end
    return out


def _budget(inst: Instrumented, checks: list[LayerCheck], tensors: dict, values: Sequence[Any],
            budget: float | None) -> dict[str, float]:
    """Keep redundancy where it buys most within `budget` x forward time; report coverage."""
    red = [c for c in checks if c.kind in (CheckKind.DMR, CheckKind.ABFT)]
    vul = {c.index: float(tensors[c.name].vulnerable_bits) if c.name in tensors else 0.0
           for c in red}
    summed = sum(float(tensors[c.name].vulnerable_bits) for c in checks
                 if c.kind is CheckKind.CHECKSUM and c.name in tensors)
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
    forward_s = _time(lambda: inst.forward(*x), reps=5, cuda=cuda)
    cost = {c.index: c.cost_s.get(c.kind.value, c.cost_s.get("dmr", 0.0)) for c in red}
    allowed, spent, covered = budget * forward_s, 0.0, 0.0
    for c in sorted(red, key=lambda c: -vul[c.index] / max(cost[c.index], 1e-9)):
        if spent + cost[c.index] <= allowed:
            spent += cost[c.index]
            covered += vul[c.index]
            continue
        ta = tensors.get(c.name)
        if ta is None:
            continue  # not analysed: nothing to range-check against; keep its DMR
        c.kind, c.abft = CheckKind.RANGE, None
        c.reason = f"{vul[c.index]:.0f} vulnerable bits left to the range check " \
            f"(redundancy budget {budget:g} of a forward pass)"
        _range_check(c, ta, values[c.index])
    out.update(covered_bits=covered + summed, forward_s=forward_s, spent_s=spent)
    return out


def _chain(inst: Instrumented, redundant: list[LayerCheck]) -> list[LayerCheck]:
    """Merge runs of exact DMR layers, each the only reader of the one before, into segments.

    A segment is re-computed from its first layer's saved inputs, each layer from the one
    re-computed before it, and compared once, at its last layer. A flip in an inner layer's
    output is caught when it changes the segment's output; one that the segment masks (e.g. a
    negative value made more negative before a ReLU) changes nothing any other layer reads, so
    the verified output is still the fault-free one, but it is not reported as a detection.
    Saves one compare per inner layer. Returns the checks to run.
    """
    by_index = {c.index: c for c in redundant}
    feeds: dict[int, LayerCheck] = {}  # layer -> the one DMR layer that alone reads it
    fed: set[int] = set()
    for c in redundant:
        if c.kind is not CheckKind.DMR or not c.exact:
            continue
        users = list(inst.node_of(c.index).users)
        u = by_index.get(inst.index.get(users[0].name, -1)) if len(users) == 1 else None
        if u is not None and u.kind is CheckKind.DMR and u.exact and u.index not in fed:
            feeds[c.index] = u
            fed.add(u.index)  # one feeder per layer: a segment is a path, not a tree
    out = []
    for c in redundant:
        if c.index in fed:
            continue  # compared at its segment's end
        seg = [c]
        while seg[-1].index in feeds:
            seg.append(feeds[seg[-1].index])
        if len(seg) == 1:
            out.append(c)
            continue
        tail = seg[-1]
        fns, idx = [m.recompute for m in seg], [m.index for m in seg[:-1]]

        def run(values: Sequence[Any], fns=fns, idx=idx) -> Any:
            local = list(values)
            for f, j in zip(fns, idx, strict=False):
                local[j] = f(local)
            return fns[-1](local)

        for m in seg[:-1]:
            m.reason += f"; compared at {tail.name} (chained DMR)"
        tail.recompute, tail.head = run, seg[0].index
        tail.members = tuple(m.index for m in seg)
        tail.reason += f"; chained DMR from {seg[0].name} ({len(seg)} layers)"
        out.append(tail)
    return out


def _params_of(inst: Instrumented, i: int) -> list[str]:
    """Weight names node i reads: its module's parameters and buffers, or get_attr inputs."""
    node = inst.node_of(i)
    modules = {node.target: inst.module_of(i)} if node.op == "call_module" else {}
    return node_params(node, modules)


def _robust_mantissa_bits(ta: Any) -> int:
    """Number of low mantissa bits that are (almost) always robust in a tensor."""
    n = 0
    for robust, _ranging, _vul in (ta.bit_shares if ta is not None else [])[:23]:
        if robust < 0.999:
            break
        n += 1
    return n


def _choose_redundancy(c: LayerCheck, inst: Instrumented, store: WeightStore,
                       values: Sequence[Any], force: str, ta: Any,
                       robust_allowance: bool) -> None:
    """DMR or ABFT for a layer with vulnerable bits, by measured cost; probe DMR determinism."""
    saved = values[c.index]
    again = c.recompute(values)
    c.exact = isinstance(again, torch.Tensor) and torch.equal(again, saved)
    cuda = isinstance(saved, torch.Tensor) and saved.is_cuda
    c.cost_s["dmr"] = _time(lambda: c.recompute(values), cuda=cuda)
    abft = _abft(inst, c.index, store)
    if abft is None or force == "dmr":
        return
    node = inst.node_of(c.index)
    x = values[inst.index[node.args[0].name]]
    if robust_allowance:
        m = _robust_mantissa_bits(ta)
        abft.robust_allowance = 2.0 ** (m - 23) if m else 0.0
    excess, _ = abft.violation(x, saved)
    if excess > 0:  # the bound does not hold on a fault-free run: never use it here
        c.reason += "; ABFT bound failed on the example run, DMR used"
        return
    c.cost_s["abft"] = _time(lambda: abft.fails(x, saved), cuda=cuda)
    if force == "abft" or c.cost_s["abft"] < ABFT_GAIN * c.cost_s["dmr"]:
        c.kind, c.abft = CheckKind.ABFT, abft
        c.reason += f"; ABFT {c.cost_s['abft'] * 1e6:.0f} us < DMR {c.cost_s['dmr'] * 1e6:.0f} us"
    else:
        c.reason += f"; DMR {c.cost_s['dmr'] * 1e6:.0f} us <= ABFT {c.cost_s['abft'] * 1e6:.0f} us"
