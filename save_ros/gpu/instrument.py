"""The instrumented model of the CUDA path: SAVE's checks attached to a model, ready to run.

`InstrumentedModel` builds everything an inference needs and nothing that decides about one:
the weight plan with its rotating checksum slices, golden copies and golden checksum rows; the
activation ranges (from an Analysis, else profiled); the tapped activations and their (min, max)
reducers; the side streams; and the forward and checksum CUDA graphs (with fused verification
where it applies). `save_ros.gpu.runtime.CudaProtectedModel` runs, verifies and repairs it.

Everything also runs eagerly (no graph) and on the CPU with the torch reference reductions,
which is how its logic is unit-tested on machines without a GPU.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from save_ros.core.bits import LAYOUTS
from save_ros.core.cuda.chunks import CHUNK, ChunkPlan, even_ends, plan_chunks
from save_ros.core.cuda.reducer import Backend, ChunkReducer, Reduction
from save_ros.gpu import require_cuda, triton_available
from save_ros.gpu.ranges import (
    DEFAULT_TAPS,
    OUTPUT,
    RangeError,
    RangeTable,
    first_tensor,
    profile_ranges,
    ranges_from_analysis,
    select_taps,
    tapped,
)
from save_ros.gpu.verdict import RowVerifier


@dataclass
class GpuProtectConfig:
    """Settings of the CUDA path."""

    dtype: torch.dtype | None = None  # run the model in this dtype (None: as given)
    use_graph: bool = True  # capture forward + checks as CUDA graphs (CUDA only)
    backend: Backend | None = None  # None: Triton when available, else torch
    taps: tuple[str, ...] = DEFAULT_TAPS
    margin: float = 0.5  # fallback ranges: widen observed [min, max] by margin x span
    # weight checksum schedule: every weight is checked once per `checksum_every` inferences,
    # 1/n of them (a rotating slice) per inference; 0: only on a range alarm
    checksum_every: int = 1
    stat_groups: int = 8  # side-stream reductions per forward (fork points)
    golden: str = "device"  # where golden weight copies live: "device" or "host" (pinned)
    max_reruns: int = 2
    chunk: int = CHUNK  # weight elements per checksum row
    act_chunk: int = 4096  # activation elements per (min, max) row: short programs, low latency
    tap_budget: float = 1.0  # share of the tapped activation bytes to check (narrowest first)
    keep_failed_output: bool = False  # campaigns: keep a copy of the output that failed checks
    # graphs + Triton: rotating checksum and the comparison itself inside the forward's graph;
    # the host reads 8 bytes of flags (save_ros.gpu.fused)
    fused: bool = True


@dataclass
class _Taps:
    """The checked activations of one forward, in execution order."""

    tensors: list[torch.Tensor] = field(default_factory=list)


ALL = -1  # checksum slice index meaning every weight
FUSED = -2  # the slice the forward graph checks itself (fused verification)


class GpuConfigError(ValueError):
    """A configuration the CUDA path cannot run."""


def _weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Float parameters and buffers with a bit layout, grouped by dtype (stable order)."""
    seen: set[int] = set()
    out = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype in LAYOUTS and t.is_floating_point() and id(t) not in seen and t.numel():
            seen.add(id(t))
            out.append((name, t))
    order = {d: i for i, d in enumerate(dict.fromkeys(t.dtype for _, t in out))}
    return sorted(out, key=lambda nt: order[nt[1].dtype])


class InstrumentedModel:
    """A model with its checks built: plans, golden copies, ranges, taps, streams and graphs."""

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        config: GpuProtectConfig | None = None,
        analysis: object | None = None,
        calibration: Sequence[torch.Tensor] | torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        cfg = config or GpuProtectConfig()
        self.config = cfg
        dev = torch.device(device) if device is not None else require_cuda()
        if dev.type == "cuda":
            require_cuda()
        elif cfg.use_graph:
            raise GpuConfigError("CUDA graphs need a CUDA device; pass use_graph=False on CPU")
        if cfg.golden not in ("device", "host"):
            raise GpuConfigError(f"golden must be 'device' or 'host', not {cfg.golden!r}")
        backend = cfg.backend or (
            Backend.TRITON if dev.type == "cuda" and triton_available() else Backend.TORCH
        )
        self.device, self.backend = dev, backend
        self.model = model.eval().to(dev)
        if cfg.dtype is not None:
            self.model = self.model.to(cfg.dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = cfg.dtype or example_input.dtype
        self._lock = threading.RLock()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpu-verify")
        self._pending: concurrent.futures.Future | None = None
        self._count = 0
        self._cuda = dev.type == "cuda"
        x0 = example_input.to(dev, self.dtype)
        if isinstance(calibration, torch.Tensor):  # one batch, as the CPU runtime takes it
            calibration = [calibration]
        calib = [c.to(dev, self.dtype) for c in (calibration or [])]
        self._init_weights()
        self._init_ranges(x0, analysis, calib)
        self._init_taps(x0)
        self._init_streams_and_graphs(x0)

    # -- construction ----------------------------------------------------------------------
    def _init_weights(self) -> None:
        """Weight plan, checksum reducers, golden copies and golden checksum rows."""
        ws = _weights(self.model)
        if not ws:
            raise GpuConfigError("the model has no float weights to protect")
        self.weight_names = [n for n, _ in ws]
        self._live = dict(ws)
        self.weight_plan = plan_chunks(self.weight_names, [t.numel() for _, t in ws],
                                       self.config.chunk)
        self._cs_dev = torch.zeros(self.weight_plan.n_chunks, 2, dtype=torch.int64,
                                   device=self.device)
        # rotating slices of about equal size; each slice is one reducer per dtype run
        ends = even_ends([t.numel() for _, t in ws], self.config.checksum_every) + [len(ws)]
        bounds = [0] + sorted(set(ends))
        self._cs_slices: list[tuple[int, int, list[tuple[ChunkReducer, list[torch.Tensor]]]]] = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            reds = []
            start = a
            while start < b:
                dt = ws[start][1].dtype
                stop = start
                while stop < b and ws[stop][1].dtype == dt:
                    stop += 1
                r0, r1 = self.weight_plan.offsets[start], self.weight_plan.offsets[stop]
                red = ChunkReducer(self.weight_plan.sub(start, stop), dt, Reduction.CHECKSUM,
                                   self.device, self.backend, out=self._cs_dev[r0:r1])
                tensors = [t for _, t in ws[start:stop]]
                red.bind(tensors)
                reds.append((red, tensors))
                start = stop
            self._cs_slices.append((self.weight_plan.offsets[a], self.weight_plan.offsets[b], reds))
        pin = self._cuda
        if self.config.golden == "host":
            self._golden = {}
            for n, t in ws:
                g = t.detach().to("cpu", copy=True)
                self._golden[n] = g.pin_memory() if pin else g
        else:
            self._golden = {n: t.detach().clone() for n, t in ws}
        self._cs_host = torch.zeros_like(self._cs_dev, device="cpu", pin_memory=pin)
        self._launch_checksum()
        self._cs_host.copy_(self._cs_dev)
        self._golden_rows = self._cs_host.numpy().copy()

    def _init_ranges(self, x0: torch.Tensor, analysis: object | None,
                     calib: list[torch.Tensor]) -> None:
        """Ranges from the Analysis where it has them, profiled (the fallback) elsewhere."""
        names: list[str] = []
        with torch.no_grad(), tapped(self.model, lambda n, t: names.append(n), self.config.taps):
            self.model(x0)
        names.append(OUTPUT)
        table, missing = RangeTable(), list(names)
        if analysis is not None:
            table, missing = ranges_from_analysis(analysis, names)
        if missing:
            if not calib:
                if analysis is None:
                    raise RangeError(
                        "no Analysis and no calibration inputs: pass analysis= (from "
                        "save_ros.core.select.analyze) or calibration= (a few typical batches)")
                calib = [x0]
            prof = profile_ranges(self.model, calib, self.config.taps, self.config.margin)
            for n in missing:
                if n in prof.low:
                    table.set(n, prof.low[n], prof.high[n], prof.source[n])
        self.ranges = table
        self.range_sources = {s: list(table.source.values()).count(s)
                              for s in set(table.source.values())}

    def _init_taps(self, x0: torch.Tensor) -> None:
        """Pick the checkable taps (contiguous, not modified in place later) and plan them."""
        seen: list[tuple[str, torch.Tensor, int]] = []
        with torch.no_grad(), tapped(self.model, lambda n, t: seen.append((n, t, t._version)),
                                     self.config.taps) as info:
            out = first_tensor(self.model(x0))
        self._tap_output = not seen or seen[-1][1] is not out
        if self._tap_output:  # else the last tap already is the output
            seen.append((OUTPUT, out, out._version))
        keep, self.skipped_taps = select_taps(seen, info, self.ranges, self.dtype,
                                              self.config.tap_budget)
        if not keep:
            raise GpuConfigError("no activation can be range-checked (see skipped_taps)")
        self.act_plan: ChunkPlan = plan_chunks([n for n, _ in keep], [k for _, k in keep],
                                               self.config.act_chunk)
        self._checked = {n: i for i, (n, _) in enumerate(keep)}
        # groups of about equal bytes, so each side-stream reduction overlaps later layers; the
        # last group also holds the model output and is reduced after the forward
        n = len(keep)
        ends = even_ends([k for _, k in keep[:-1]], self.config.stat_groups)
        bounds = [0] + sorted(set(e for e in ends if 0 < e < n)) + [n]
        self._stats_dev = torch.zeros(self.act_plan.n_chunks, 2, dtype=torch.float32,
                                      device=self.device)
        self._stats_host = torch.zeros_like(self._stats_dev, device="cpu", pin_memory=self._cuda)
        self._act_reducers: list[ChunkReducer] = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if a == b:
                continue
            r0, r1 = self.act_plan.offsets[a], self.act_plan.offsets[b]
            self._act_reducers.append(ChunkReducer(
                self.act_plan.sub(a, b), self.dtype, Reduction.MINMAX, self.device,
                self.backend, out=self._stats_dev[r0:r1]))
        self._group_bounds = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                              if a != b]
        self.verifier = RowVerifier(self.act_plan, self.ranges.low, self.ranges.high,
                                    self.weight_plan, self._golden_rows)

    def _init_streams_and_graphs(self, x0: torch.Tensor) -> None:
        """Side streams, warm-up (compiles kernels), and the two CUDA graphs."""
        self._graph = None
        self._cs_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._side = self._cs_stream = self._main = None
        self._static_in = x0.clone()
        if self._cuda:
            # the forward gets the high-priority stream, so its kernels win free SMs over the
            # weight checksum, which fills what the forward leaves idle
            self._main = torch.cuda.Stream(priority=-1)
            self._side = torch.cuda.Stream()
            self._cs_stream = torch.cuda.Stream(priority=0)
            self._done = torch.cuda.Event()
            self._cs_done = torch.cuda.Event()
        self._fused = None
        self._replays = 0
        self._last_slice = 0
        cfg = self.config
        if (cfg.use_graph and cfg.fused and self.backend is Backend.TRITON
                and cfg.checksum_every >= 1
                and len({t.dtype for t in self._live.values()}) == 1):
            from save_ros.gpu.fused import FusedVerify

            self._fused = FusedVerify(
                self.weight_plan, [self._live[n] for n in self.weight_names],
                self._live[self.weight_names[0]].dtype, self.verifier.low, self.verifier.high,
                self._golden_rows, cfg.checksum_every, self.device)
        warm = torch.cuda.Stream() if self._cuda else None
        if warm is not None:
            warm.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warm) if warm is not None else _null():
            for _ in range(3):
                self._forward(self._static_in, capture=False)
                self._launch_checksum()
                if self._fused is not None:  # compiles the fused kernels before capture
                    self._fused.flags.zero_()
                    self._fused.launch_checksum()
                    self._fused.launch_verify(self._stats_dev)
        if warm is not None:
            torch.cuda.current_stream().wait_stream(warm)
            torch.cuda.synchronize()
        if self._fused is not None:
            self._fused.counter.zero_()
            self._fused.sums.copy_(self._fused.golden)
            torch.cuda.synchronize()
        self._static_out = None
        if self.config.use_graph:
            self._graph = torch.cuda.CUDAGraph()
            fz = self._fused
            with torch.cuda.graph(self._graph):
                if fz is not None:
                    fz.flags.zero_()
                    self._cs_stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(self._cs_stream):
                        fz.launch_checksum()
                self._static_out = self._forward(self._static_in, capture=True)
                if fz is not None:
                    torch.cuda.current_stream().wait_stream(self._cs_stream)
                    fz.launch_verify(self._stats_dev)
            # self._taps keeps every tapped buffer of the graph's pool alive: addresses stay fixed
            for red, (a, b) in zip(self._act_reducers, self._group_bounds, strict=True):
                red.bind(self._taps.tensors[a:b])
            for sl in [ALL] + list(range(len(self._cs_slices)) if len(self._cs_slices) > 1 else []):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    self._launch_checksum(sl)
                self._cs_graphs[sl] = g
            if len(self._cs_slices) == 1:
                self._cs_graphs[0] = self._cs_graphs[ALL]
            torch.cuda.synchronize()

    # -- the instrumented forward -------------------------------------------------------------
    def _forward(self, x: torch.Tensor, capture: bool) -> torch.Tensor:
        """Forward with taps; launches each group's reduction on the side stream as it fills."""
        taps = _Taps()
        self._taps = taps
        state = {"group": 0}

        def launch_group(g: int) -> None:
            a, b = self._group_bounds[g]
            tensors = taps.tensors[a:b]
            red = self._act_reducers[g]
            if self._side is None:
                red.bind(tensors)
                red.launch(tensors)
                return
            main = torch.cuda.current_stream()
            self._side.wait_stream(main)
            with torch.cuda.stream(self._side):
                if not capture:
                    red.bind(tensors)
                    for t in tensors:  # eager: keep the allocator from reusing them early
                        t.record_stream(self._side)
                red.launch(tensors)

        def on_output(name: str, t: torch.Tensor) -> None:
            i = self._checked.get(name)
            if i is None:
                return
            if i != len(taps.tensors):
                raise GpuConfigError(f"tap order changed at {name}: the model is not static")
            taps.tensors.append(t)
            g = state["group"]
            if g < len(self._group_bounds) - 1 and len(taps.tensors) == self._group_bounds[g][1]:
                launch_group(g)
                state["group"] = g + 1

        with torch.no_grad(), tapped(self.model, on_output, self.config.taps):
            out = first_tensor(self.model(x))
        if self._tap_output:
            taps.tensors.append(out)
        while state["group"] < len(self._group_bounds):
            launch_group(state["group"])
            state["group"] += 1
        if self._side is not None:
            torch.cuda.current_stream().wait_stream(self._side)
        return out

    def _launch_checksum(self, sl: int = -1) -> None:
        """Enqueue the checksum of slice `sl` (ALL: every weight) on the current stream."""
        for i, (_, _, reds) in enumerate(self._cs_slices):
            if sl in (ALL, i):
                for red, tensors in reds:
                    red.launch(tensors)

    def _rows(self, cs: int | None) -> tuple[int, int] | np.ndarray | None:
        """Checksum rows written by slice `cs` (None: no checksum)."""
        if cs is None:
            return None
        if cs == FUSED:
            return self._fused.slice_rows(self._last_slice)
        if cs == ALL:
            return 0, self.weight_plan.n_chunks
        return self._cs_slices[cs][0], self._cs_slices[cs][1]


class _null:
    """A do-nothing context manager (no stream on the CPU)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
