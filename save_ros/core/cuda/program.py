"""One inference as a fixed sequence of device work: forward, checks, flags. Graph-capturable.

`CheckProgram(inst, plan, store, ...)` runs the model's fx nodes one by one (the same
callables `Instrumented` uses, so the same kernels and bits) and, after the last layer of each
check group, enqueues that group's checks on a side stream while the forward goes on:

- range checks: every element of the layer outputs against its own channel's analysed bounds
  (or the tensor's, `core.cuda.range_check`), one flag per group;
- redundancy: DMR (re-compute the layer from its saved inputs, compare) or ABFT (golden column
  sums), one flag per check;
- the weights: the 64-bit chunk sums of the flat weight store against the golden sums, once the
  forward is done (a flip that lands during the forward is then seen by the checksum whenever
  the forward could have read it), one flag per dtype group;
- every input against its declared box (`core.inputs`: one per input; NaN fails, and Inf where
  the box is finite), one flag; an integer input only against its valid values, if given.

Every flag is written into one small device tensor, copied to pinned host memory at the end.
Nothing in `run` synchronises with the host, so the whole of it can be captured once in a CUDA
graph and replayed; on a CPU (tests) it runs eagerly without streams.

Fault sites (campaigns only, `fault_sites=True`): after every injectable node the program XORs
one element with a mask read from a device table (zero: no change), so a transient activation
flip can be armed from the host and happens inside the replayed graph, after the node wrote its
output and before anything reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from save_ros.core import bits
from save_ros.core.cuda import triton_available
from save_ros.core.cuda.memsums import DeviceSums
from save_ros.core.cuda.range_check import Kernels, RangeChecker
from save_ros.core.instrument import Instrumented
from save_ros.core.verify.checks import CheckKind, LayerCheck, dmr_differs
from save_ros.core.verify.plan import CheckPlan
from save_ros.core.weights import WeightStore


@dataclass
class _Group:
    """Checks launched together once the forward has passed layer `after`.

    flags[slot]: the range checks; flags[slot + 1]: the fused bit-exact DMR compare;
    flags[slot + 2 + k]: redundant check k of `redundant` (ABFT, inexact DMR, tuple outputs).
    """

    after: int
    ranges: list[LayerCheck] = field(default_factory=list)  # per layer, torch reductions
    chunked: list[LayerCheck] = field(default_factory=list)  # one multi-tensor range launch
    ranger: RangeChecker | None = None
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    fused: list[LayerCheck] = field(default_factory=list)  # exact DMR, one compare per dtype
    redundant: list[LayerCheck] = field(default_factory=list)
    slot: int = 0


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
        # (input position, low, high, the box is open: Inf would pass the compare)
        self.bounds = []
        for k, (b, x) in enumerate(zip(bounds, example, strict=True)):
            if b is not None:
                lo, hi = b[0].to(self.device), b[1].to(self.device)
                finite = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
                self.bounds.append((k, lo, hi, x.is_floating_point() and not finite))
        # placeholders past the given inputs take forward's defaults
        self._defaults = [n.args[0] if n.args else None
                          for n in (inst.nodes[p] for p in inst.placeholders)]
        checks = {c.index: c for c in plan.range_batch.checks}
        red = {c.index: c for c in plan.redundant}
        checked = sorted(set(checks) | set(red))
        with torch.inference_mode():
            _, values = inst.forward(*example)
        backend = Kernels.TRITON if self.device.type == "cuda" and triton_available() \
            else Kernels.TORCH
        self.groups: list[_Group] = []
        slot = 0
        ends = _split(checked, groups)
        start = -1
        for end in ends:
            g = _Group(end, slot=slot)
            members = [i for i in checked if start < i <= end]
            self._plan_ranges(g, [checks[i] for i in members if i in checks], values, backend)
            for i in (i for i in members if i in red):
                c = red[i]
                v = values[c.index]
                if c.kind is CheckKind.DMR and c.exact and c.head is None \
                        and isinstance(v, torch.Tensor) and v.dtype in bits.LAYOUTS:
                    g.fused.append(c)
                else:
                    g.redundant.append(c)
            slot += 2 + len(g.redundant)
            self.groups.append(g)
            start = end
        self._pending_binds: list[tuple[RangeChecker, Any]] = []
        self._by_end = {g.after: g for g in self.groups}
        self.sums = DeviceSums(plan.checksummed, plan.last_read)  # memory checksums
        self.summed = self.sums.checks
        self.sum_slot = slot
        slot += 1
        self.input_slot = slot
        self.weight_slots = list(range(slot + 1, slot + 1 + len(store.groups)))
        self.n_slots = slot + 1 + len(store.groups)
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

    def _plan_ranges(self, g: _Group, ranges: list[LayerCheck], values, backend) -> None:
        """Split a group's range checks: one fused per-channel launch, or per layer (torch)."""
        dtype = None
        for c in ranges:
            v = values[c.index]
            ok = isinstance(v, torch.Tensor) and v.is_contiguous() and v.numel() > 0 \
                and v.dtype in (torch.float32, torch.float16, torch.bfloat16)
            if ok and dtype in (None, v.dtype):
                dtype = v.dtype
                g.chunked.append(c)
            else:
                g.ranges.append(c)
        if g.ranges:
            g.low, g.high = self.plan.range_batch.bounds_of(g.ranges, self.device)
        if not g.chunked:
            return
        vs = [values[c.index] for c in g.chunked]
        g.ranger = RangeChecker([c.name for c in g.chunked], [tuple(v.shape) for v in vs],
                                [c.channel_dim for c in g.chunked],
                                [c.range_low for c in g.chunked],
                                [c.range_high for c in g.chunked], dtype, self.device, backend)

    def finish_capture(self) -> None:
        """Point the range checkers at the tensors the captured graph uses."""
        for rc, ptrs in self._pending_binds:
            rc.bind((), ptrs)
        self._pending_binds = []

    def localize(self, failed: list[str], values: Sequence[Any]) -> list[str]:
        """Layer names behind group flags, re-checked eagerly on the saved values."""
        out = []
        for name in failed:
            g = next((g for g in self.groups if name in (f"range@{g.after}",
                                                         f"dmr@{g.after}")), None)
            if g is None:
                out.append(name)
            elif name.startswith("dmr@"):
                out += [c.name for c in g.fused
                        if bool(dmr_differs(c.recompute(values), values[c.index], True))]
            else:
                every = g.ranges + g.chunked
                lo, hi = self.plan.range_batch.bounds_of(every, self.device)
                mn, mx = self.plan.range_batch.reduce(values, every)
                bad = (~((mn >= lo) & (mx <= hi))).tolist()
                owners = [c.name for c in every for _ in range(
                    c.range_low.numel() if c.channel_dim is not None else 1)]
                out += list(dict.fromkeys(n for n, b in zip(owners, bad, strict=True) if b))
        return out

    # ---- what failed --------------------------------------------------------------------
    def failed_slots(self) -> list[str]:
        """Names of the raised flags (after the host copy landed)."""
        f = self.flags_host.tolist()
        out = []
        for g in self.groups:
            if f[g.slot]:
                out.append(f"range@{g.after}")
            if f[g.slot + 1]:
                out.append(f"dmr@{g.after}")
            out += [c.name for k, c in enumerate(g.redundant) if f[g.slot + 2 + k]]
        if f[self.sum_slot]:
            out += [f"checksum@{name}" for name in self.summed_failures()] or ["checksum@?"]
        if f[self.input_slot]:
            out.append("input")
        out += [f"weights[{k}]" for k, s in enumerate(self.weight_slots) if f[s]]
        return out

    def kind_of(self, name: str) -> str:
        """dmr | abft for a redundant check's layer name."""
        for g in self.groups:
            for c in g.redundant:
                if c.name == name:
                    return c.kind.value
        return "dmr"

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
        self.flags[self.input_slot] = self._inputs_bad(xs)
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

    def _inputs_bad(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """One device flag: some input outside its box (NaN compares False: outside)."""
        bad = []
        for k, lo, hi, open_box in self.bounds:
            x = xs[k]
            ok = ((x >= lo) & (x <= hi)).all()
            if open_box:
                ok = ok & torch.isfinite(x).all()
            bad.append(~ok)
        if not bad:
            return self._false
        return bad[0] if len(bad) == 1 else torch.stack(bad).any()

    def run_weights(self) -> None:
        """Only the weight checksums, on the current stream (their own graph on CUDA)."""
        for s, g in zip(self.weight_slots, self.store.groups, strict=True):
            sums = g._live_words.sum(1)
            self.flags[s] = (sums != g.golden_sums).any()

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
                sums = g._live_words.sum(1)
                bad = (sums != g.golden_sums).any()
                self.flags[s] = bad
                self._keep += [sums, bad]

    def _launch_group(self, g: _Group, vals: Sequence[Any], main) -> None:
        """Enqueue one group's checks (side stream when set)."""
        ctx = nullcontext()
        if self._side is not None:
            self._side.wait_stream(main)
            ctx = torch.cuda.stream(self._side)
        with ctx:
            bads = []
            if g.ranges:
                mn, mx = self.plan.range_batch.reduce(vals, g.ranges)
                bads.append(~((mn >= g.low) & (mx <= g.high)).all())
                self._keep += [mn, mx]
            if g.chunked:
                tensors = [vals[c.index] for c in g.chunked]
                rc = g.ranger
                if rc.backend is Kernels.TRITON and torch.cuda.is_current_stream_capturing():
                    self._pending_binds.append((rc, rc.pointers(tensors)))
                else:
                    rc.bind(tensors)
                rc.launch(tensors)
                bads.append(rc.failed())
            self.flags[g.slot] = torch.stack(bads).any() if bads else self._false
            self._keep += bads
            self.flags[g.slot + 1] = self._fused_dmr(g, vals)
            fails = []
            for c in g.redundant:
                if c.kind is CheckKind.ABFT:
                    node = self.inst.node_of(c.index)
                    xin = vals[self.inst.index[node.args[0].name]]
                    f = c.abft.fails(xin, vals[c.index])
                else:
                    f = dmr_differs(c.recompute(vals), vals[c.index], c.exact)
                fails.append(f if isinstance(f, torch.Tensor) else ~self._false if f
                             else self._false)
            if fails:
                a = g.slot + 2
                stacked = torch.stack([f.reshape(()) for f in fails])
                self.flags[a : a + len(fails)] = stacked
                self._keep += [*fails, stacked]

    def _fused_dmr(self, g: _Group, vals: Sequence[Any]) -> torch.Tensor:
        """Re-compute the group's exact-DMR layers; one bit-exact compare per dtype."""
        if not g.fused:
            return self._false
        by_dtype: dict[torch.dtype, tuple[list, list]] = {}
        for c in g.fused:
            again, saved = c.recompute(vals), vals[c.index]
            a, b = by_dtype.setdefault(saved.dtype, ([], []))
            a.append(bits.int_view(again.contiguous()).reshape(-1))
            b.append(bits.int_view(saved.contiguous()).reshape(-1))
        flags = [(torch.cat(a) != torch.cat(b)).any() for a, b in by_dtype.values()]
        out = flags[0] if len(flags) == 1 else torch.stack(flags).any()
        self._keep += [*flags, out, by_dtype]
        return out

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
