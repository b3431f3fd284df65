"""One inference as a fixed sequence of device work: forward, checks, flags. Graph-capturable.

`CheckProgram(inst, plan, store, ...)` runs the model's fx nodes one by one (the same
callables `Instrumented` uses, so the same kernels and bits) and schedules every planned check;
what each check computes on the device is its kind object's (`core.verify.kinds`):

- after the last layer of each check group, on a side stream while the forward goes on: the
  kinds that batch a group's layers under one flag (`Kind.device_batch`: the range kernel, the
  fused bit-exact DMR compare), then one flag per remaining layer check (`Kind.device_check`:
  ABFT, inexact or tuple-valued DMR);
- the memory checksums (`CHECKSUM.device_sums`): write sums right after each producer, read
  sums after the last reader, one flag at the end;
- the weights (`WEIGHTS.device_flag`): the chunk sums of the flat weight store against the
  golden sums, once the forward is done, one flag per dtype group;
- every input against its declared box (`INPUT.device_inputs`), one flag.

Every flag is written into one small device tensor, copied to pinned host memory at the end,
and described by a `Slot` (its kind object and the layers it covers): `failed_slots()` reads
the raised ones back, and each dispatches to its kind (`slot.detection()`). Nothing in `run`
synchronises with the host, so the whole of it can be captured once in a CUDA graph and
replayed; on a CPU (tests) it runs eagerly without streams.

Fault sites (campaigns only, `fault_sites=True`): after every injectable node the program XORs
one element with a mask read from a device table (zero: no change), so a transient activation
flip can be armed from the host and happens inside the replayed graph, after the node wrote its
output and before anything reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from save_ros.core import bits
from save_ros.core.instrument import Instrumented
from save_ros.core.verify.checks import LayerCheck
from save_ros.core.verify.kinds import CHECKSUM, INPUT, KINDS, WEIGHTS, Slot, kind_of
from save_ros.core.verify.plan import CheckPlan
from save_ros.core.weights import WeightStore


@dataclass
class _Group:
    """Checks launched together once the forward has passed layer `after`: the kinds' batches
    (flag slot, part) and then one flag per single check, from slot `first_single` on."""

    after: int
    parts: list[tuple[int, Any]] = field(default_factory=list)
    singles: list[LayerCheck] = field(default_factory=list)
    first_single: int = 0


@dataclass
class FaultSites:
    """Activation fault sites compiled into the program: node index -> table row."""

    rows: dict[int, int]  # node position -> row in the tables
    names: list[str]  # node name per row
    numel: list[int]  # elements per row's tensor (batch included)
    index: torch.Tensor  # int64 [rows]: flat element to flip
    mask: torch.Tensor  # int view dtype [rows]: XOR mask (0: nothing)
    dtype: torch.dtype  # the activations' dtype


def _split(checked: list[int], groups: int) -> list[int]:
    """Layer positions after which each group starts its checks (about equal counts)."""
    if not checked:
        return []
    groups = max(1, min(groups, len(checked)))
    ends = []
    for g in range(1, groups + 1):
        ends.append(checked[min(len(checked) - 1, round(g * len(checked) / groups) - 1)])
    return sorted(set(ends))


class CheckProgram:
    """The device work of one inference; `run(x)` is capturable, `flags` says what failed."""

    def __init__(self, inst: Instrumented, plan: CheckPlan, store: WeightStore,
                 bounds: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
                 example: Sequence[torch.Tensor], groups: int = 8, fault_sites: bool = False,
                 streams: bool = False, side_stream: bool = True,
                 checksum_stream: bool = True) -> None:
        """`bounds`: per model input its (low, high) or None (`ModelInputs.bounds`);
        `example`: the positional inputs, one tensor each (the static buffers on CUDA)."""
        self.inst, self.plan, self.store = inst, plan, store
        example = tuple(example)
        self.device = example[0].device
        self.inputs = INPUT.device_inputs(bounds, example, self.device)
        # placeholders past the given inputs take forward's defaults
        self._defaults = [n.args[0] if n.args else None
                          for n in (inst.nodes[p] for p in inst.placeholders)]
        layer = {c.index: c for c in (*plan.range_batch.checks, *plan.redundant)}
        checked = sorted(layer)
        with torch.inference_mode():
            _, values = inst.forward(*example)
        self.slots: list[Slot] = []  # flag k is described by slots[k]
        self._parts: dict[Slot, Any] = {}  # a group flag's slot -> the part that writes it
        self._readback: dict[int, Callable[[], list[Slot]]] = {}  # flags that name layers
        self.groups: list[_Group] = []
        start = -1
        for end in _split(checked, groups):
            self.groups.append(self._group(end, [layer[i] for i in checked if start < i <= end],
                                           values))
            start = end
        self._by_end = {g.after: g for g in self.groups}
        self.sums = CHECKSUM.device_sums(plan.checksummed, plan.last_read)  # memory checksums
        self.summed = self.sums.checks
        self.sum_slot = self._slot(Slot(CHECKSUM, CHECKSUM.name, tuple(c.name for c in
                                                                      self.summed),
                                        CHECKSUM.device_detail))
        self._readback[self.sum_slot] = self.sums.raised
        self.input_slot = self._slot(Slot(INPUT, INPUT.name))
        self.weight_slots = [self._slot(Slot(WEIGHTS, f"{WEIGHTS.name}[{k}]"))
                             for k in range(len(store.groups))]
        self.n_slots = len(self.slots)
        self.flags = torch.zeros(self.n_slots, dtype=torch.bool, device=self.device)
        self.flags_host = torch.zeros(self.n_slots, dtype=torch.bool,
                                      pin_memory=self.device.type == "cuda")
        self._side = torch.cuda.Stream(self.device) if streams and side_stream else None
        self._cs = torch.cuda.Stream(self.device) if streams and checksum_stream else None
        self._streams = streams
        self._keep: list[Any] = []  # temporaries of the side streams, alive until the join
        self._false = torch.zeros((), dtype=torch.bool, device=self.device)
        self.sites = self._fault_sites(example) if fault_sites else None
        self.checks_run = len(plan.range_batch.checks) + len(plan.redundant) + len(self.summed)

    def _slot(self, slot: Slot) -> int:
        """Give `slot` the next flag; its position."""
        self.slots.append(slot)
        return len(self.slots) - 1

    def _group(self, end: int, members: list[LayerCheck], values: Sequence[Any]) -> _Group:
        """One group's flags: each kind's batch of its layers, then the single checks."""
        g = _Group(end)
        by_kind: dict[Any, list[LayerCheck]] = {}
        for c in members:
            by_kind.setdefault(kind_of(c), []).append(c)
        taken: set[int] = set()
        for kind in KINDS.values():
            part = kind.device_batch(by_kind[kind], values, self.device) \
                if kind in by_kind else None
            if part is None:
                continue
            slot = Slot(kind, f"{kind.name}@{end}", tuple(c.name for c in part.checks),
                        part.detail)
            g.parts.append((self._slot(slot), part))
            self._parts[slot] = part
            taken.update(id(c) for c in part.checks)
        g.singles = [c for c in members if id(c) not in taken]
        g.first_single = len(self.slots)
        for c in g.singles:
            self._slot(Slot(kind_of(c), c.name, (c.name,)))
        return g

    def finish_capture(self) -> None:
        """Point the kinds' kernels at the tensors the captured graph uses."""
        for g in self.groups:
            for _, part in g.parts:
                if hasattr(part, "finish_capture"):
                    part.finish_capture()

    def localize(self, failed: list[Slot], values: Sequence[Any]) -> list[str]:
        """Layer names behind raised flags; group flags re-checked eagerly on the saved values."""
        out = []
        for slot in failed:
            part = self._parts.get(slot)
            out += part.localize(values) if part is not None else [slot.label]
        return out

    # ---- what failed --------------------------------------------------------------------
    def failed_slots(self) -> list[Slot]:
        """The raised flags (after the host copy landed), each as what it checked."""
        f = self.flags_host.tolist()
        out: list[Slot] = []
        for k, slot in enumerate(self.slots):
            if f[k]:
                read = self._readback.get(k)
                out += read() if read is not None else [slot]
        return out

    def reader_of(self, weight: str) -> str:
        """The first layer that reads a weight (for reports)."""
        k = self.inst.first_reader([weight], self.plan.param_readers)
        return self.inst.names[k]

    # ---- the program --------------------------------------------------------------------
    def run(self, xs: Sequence[torch.Tensor], check_weights: bool | None = True,
            copy_flags: bool = True) -> tuple[Any, list[Any]]:
        """Forward + checks on the current stream (side streams where set); flags to host.

        `check_weights`: True checks the weights beside the forward, False clears their flags,
        None leaves them to `run_weights` (a graph of their own, replayed when due).
        """
        main = torch.cuda.current_stream(self.device) if self._streams else None
        self._keep = []
        if check_weights is False:
            for s in self.weight_slots:
                self.flags[s] = False
        self.flags[self.input_slot] = self.inputs.flag(xs, self._false)
        inst = self.inst
        vals: list[Any] = [None] * len(inst.nodes)
        for k, p in enumerate(inst.placeholders):
            vals[p] = xs[k] if k < len(xs) else self._defaults[k]
        sites = self.sites.rows if self.sites is not None else {}
        sums = self.sums
        sums.start()
        for i, node in enumerate(inst.nodes):
            if node.op == "placeholder":
                continue
            vals[i] = inst.recompute(i, vals)
            sums.after(i, vals, self._side, main, self._keep)  # write sum before the site
            if i in sites:
                self._inject(sites[i], vals[i])
            g = self._by_end.get(i)
            if g is not None:
                self._launch_group(g, vals, main)
        out = fx.node.map_arg(inst._out_template, lambda n: vals[inst.index[n.name]])
        if check_weights:
            # after the forward, never beside it: a flip that lands while the forward runs
            # has then either been read by the checksum or not been read by the forward
            self._launch_weights(main)
        if self._side is not None:
            main.wait_stream(self._side)
        self.flags[self.sum_slot] = sums.flag(vals, self._side, main, self._keep, self._false)
        if check_weights and self._cs is not None:
            main.wait_stream(self._cs)
        if copy_flags:
            self.flags_host.copy_(self.flags, non_blocking=main is not None)
        self._keep = []
        return out, vals

    def summed_failures(self) -> list[str]:
        """Layers whose read sum differed from their write sum in the last run."""
        return self.sums.failures()

    def run_weights(self) -> None:
        """Only the weight checksums, on the current stream (their own graph on CUDA)."""
        for s, g in zip(self.weight_slots, self.store.groups, strict=True):
            self.flags[s] = WEIGHTS.device_flag(g)[0]

    def clear_weight_flags(self) -> None:
        """Weight flags to False (an inference whose turn it is not)."""
        self.flags[self.weight_slots[0] : self.weight_slots[-1] + 1] = False

    def _launch_weights(self, main) -> None:
        """Chunk sums of every weight group against the golden sums (third stream)."""
        ctx = nullcontext()
        if self._cs is not None:
            self._cs.wait_stream(main)
            ctx = torch.cuda.stream(self._cs)
        with ctx:
            for s, g in zip(self.weight_slots, self.store.groups, strict=True):
                bad, sums = WEIGHTS.device_flag(g)
                self.flags[s] = bad
                self._keep += [sums, bad]

    def _launch_group(self, g: _Group, vals: Sequence[Any], main) -> None:
        """Enqueue one group's checks (side stream when set): each kind's own."""
        ctx = nullcontext()
        if self._side is not None:
            self._side.wait_stream(main)
            ctx = torch.cuda.stream(self._side)
        with ctx:
            for s, part in g.parts:
                f = part.launch(vals, self._keep)
                self.flags[s] = f if f is not None else self._false
            fails = []
            for c in g.singles:
                f = kind_of(c).device_check(c, vals, self.inst)
                fails.append(f if isinstance(f, torch.Tensor) else ~self._false if f
                             else self._false)
            if fails:
                a = g.first_single
                stacked = torch.stack([f.reshape(()) for f in fails])
                self.flags[a : a + len(fails)] = stacked
                self._keep += [*fails, stacked]

    # ---- fault sites (campaigns) --------------------------------------------------------
    def _fault_sites(self, example: Sequence[torch.Tensor]) -> FaultSites:
        """Probe the nodes once: injectable = analysed, normal-memory, contiguous float outputs."""
        inst, plan = self.inst, self.plan
        analysed = set(plan.analysis.tensors) if plan.analysis is not None else set()
        _, values = inst.forward(*example)
        rows: dict[int, int] = {}
        names, numel = [], []
        dtype = None
        for i in inst.layer_indices:
            v, name = values[i], inst.names[i]
            if not (isinstance(v, torch.Tensor) and v.is_floating_point()
                    and v.dtype in bits.LAYOUTS and v.is_contiguous() and v.numel()):
                continue
            if analysed and name not in analysed:
                continue  # views and unanalysed nodes: not a memory of their own
            if plan.placement.is_reliable(name):
                continue
            if dtype is None:
                dtype = v.dtype
            if v.dtype != dtype:
                continue
            rows[i] = len(names)
            names.append(name)
            numel.append(v.numel())
        dtype = dtype or torch.float32
        int_dtype = bits.layout_of(dtype).int_dtype
        return FaultSites(rows, names, numel,
                          torch.zeros(len(names), dtype=torch.int64, device=self.device),
                          torch.zeros(len(names), dtype=int_dtype, device=self.device), dtype)

    def _inject(self, row: int, v: torch.Tensor) -> None:
        """XOR element index[row] of v with mask[row] (a no-op while the mask is 0)."""
        iv = bits.int_view(v).view(-1)
        idx = self.sites.index[row : row + 1]
        iv.scatter_(0, idx, iv.index_select(0, idx) ^ self.sites.mask[row : row + 1])

    def arm(self, name: str, index: int, bit: int) -> None:
        """Flip `bit` of element `index` of node `name` during the next run only."""
        if self.sites is None:
            raise RuntimeError("protect(..., fault_sites=True) compiles activation fault sites")
        row = self.sites.names.index(name)
        if not 0 <= index < self.sites.numel[row]:
            raise IndexError(f"{name} has {self.sites.numel[row]} elements, not index {index}")
        layout = bits.layout_of(self.sites.dtype)
        self.sites.index[row] = index
        self.sites.mask[row] = bits.mask_value(layout, bit)

    def disarm(self) -> None:
        """Clear every armed fault."""
        if self.sites is not None:
            self.sites.mask.zero_()
