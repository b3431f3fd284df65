"""The `range` kind: every element of a layer's output within its channel's analysed range.

- plan entry (`enter`): the bounds from the layer's `TensorAnalysis` (per channel where known,
  else one pair), for a layer whose non-robust bits are all ranging (or `checks="range"`, or
  the redundancy budget's fallback); `fit` widens every range check to what the runtime
  computes (its dtype and math mode, and the calibration inputs run on it); `cost` measures
  the reduction on the device that runs it (the memory checksum weighs itself against it);
- eager check (`eager_batch`): the min / max of every range-checked output, compared in one
  vector op (`RangeBatch`); skipped while the input lies outside its box; an excursion whose
  layer re-computes equal with golden weights is the input's doing (`confirmable`: a note);
- device check (`DeviceRange`): per group of layers one flag: the same-dtype contiguous outputs
  in one multi-tensor launch (`core.cuda.range_check`: Triton on CUDA, torch elsewhere), every
  element against its own channel's bounds; the others by torch reductions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from save_ros.core.cuda import triton_available
from save_ros.core.cuda.range_check import Kernels, RangeChecker
from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds.base import EagerRun, Failures, Kind, PlanContext, best_time
from save_ros.core.verify.status import Detection

# relative slack of range bounds for the runtime's own arithmetic: a GPU computes fp32 convs
# in TF32 (10-bit mantissa) by default, and fp16 / bf16 models round every layer
_SLACK = {torch.float32: 2.0**-10, torch.float16: 2.0**-6, torch.bfloat16: 2.0**-4}


class RangeBatch:
    """All range checks of a plan, reduced layer by layer and compared in one vector op."""

    def __init__(self, checks: Sequence[LayerCheck]) -> None:
        self.checks = list(checks)
        lows, highs, self.owner = [], [], []
        for i, c in enumerate(self.checks):
            lo = c.range_low.reshape(-1).float()
            hi = c.range_high.reshape(-1).float()
            lows.append(lo)
            highs.append(hi)
            self.owner += [i] * lo.numel()
        self.low = torch.cat(lows) if lows else torch.empty(0)
        self.high = torch.cat(highs) if highs else torch.empty(0)
        self.owner_t = torch.tensor(self.owner, dtype=torch.int64)

    def reduce(self, values: Sequence[Any], checks: Sequence[LayerCheck] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated (mins, maxs) of the given checks' outputs (all by default), on device."""
        mins, maxs = [], []
        for c in self.checks if checks is None else checks:
            t = values[c.index]
            if c.channel_dim is None:
                mn, mx = torch.aminmax(t)
                mins.append(mn.reshape(1))
                maxs.append(mx.reshape(1))
            else:
                dims = [d for d in range(t.dim()) if d != c.channel_dim]
                mins.append(t.amin(dim=dims))
                maxs.append(t.amax(dim=dims))
        return torch.cat(mins).float(), torch.cat(maxs).float()

    def bounds_of(self, checks: Sequence[LayerCheck], device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (low, high) rows of the given checks, in `reduce` order, on `device`."""
        pos = {id(c): i for i, c in enumerate(self.checks)}
        rows = [j for c in checks for j, o in enumerate(self.owner) if o == pos[id(c)]]
        idx = torch.tensor(rows, dtype=torch.int64)
        return self.low[idx.to(self.low.device)].to(device), \
            self.high[idx.to(self.high.device)].to(device)

    def failures(self, values: Sequence[Any]) -> list[tuple[LayerCheck, str]]:
        """The checks whose layer output leaves its range (NaN always does)."""
        if not self.checks:
            return []
        mn, mx = self.reduce(values)
        if self.low.device != mn.device:
            self.low, self.high = self.low.to(mn.device), self.high.to(mn.device)
        ok = (mn >= self.low) & (mx <= self.high)  # NaN compares False: a failure
        if bool(ok.all()):
            return []
        out = []
        bad = (~ok).nonzero().flatten().tolist()
        seen: set[int] = set()
        for j in bad:
            i = self.owner[j]
            if i in seen:
                continue
            seen.add(i)
            c = self.checks[i]
            out.append((c, f"[{float(mn[j]):.4g}, {float(mx[j]):.4g}] outside "
                           f"{c.range_source} range [{float(self.low[j]):.4g}, "
                           f"{float(self.high[j]):.4g}]"))
        return out

    def slices(self) -> list[tuple[int, int]]:
        """Rows of each check in the concatenated bounds."""
        out, start = [], 0
        for k in range(len(self.checks)):
            end = start
            while end < len(self.owner) and self.owner[end] == k:
                end += 1
            out.append((start, end))
            start = end
        return out


class RangeKind(Kind):
    """Ranging bits: a flip that pushes a value out of its analysed range."""

    kind = CheckKind.RANGE
    verifies = "every element within its channel's analysed range"
    failure = "a layer output left its analysed range"
    covers = "flips of ranging bits (they push a value out of its range)"
    on_device = "per group of layers one flag: a multi-tensor per-channel range kernel " \
        "(Triton on CUDA) or torch reductions"
    confirmable = True
    device_detail = "device per-channel check"

    # ---- plan entry ----------------------------------------------------------------------
    def enter(self, c: LayerCheck, ctx: PlanContext, ta: Any) -> None:
        """Fill the range bounds of `c` from its TensorAnalysis."""
        value = ctx.values[c.index]
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

    def cost(self, c: LayerCheck, ctx: PlanContext) -> float:
        """Measured cost of one range check's reduction (its channel min and max)."""
        value = ctx.values[c.index]
        if c.channel_dim is None:
            return best_time(lambda: torch.aminmax(value), reps=9, cuda=value.is_cuda)
        dims = [d for d in range(value.dim()) if d != c.channel_dim]
        return best_time(lambda: (value.amin(dim=dims), value.amax(dim=dims)), reps=9,
                         cuda=value.is_cuda)

    def batch(self, checks: Sequence[LayerCheck]) -> RangeBatch:
        """The plan's range checks as one batch (`CheckPlan.range_batch`)."""
        return RangeBatch([c for c in checks if c.kind is self.kind])

    def fit(self, plan: Any, inst: Any, calibration: Any, example: Any) -> None:
        """Widen every range check of `plan` to what this runtime computes.

        The analysis runs in exact fp32; the runtime may not (TF32 convolutions, an fp16
        model). Bounds are widened by a slack of each channel's scale (`_SLACK` by dtype) and,
        with calibration inputs, to the hull of what the runtime itself computes on them, so a
        calibration input never raises a range alarm. A flip that scales a value by a power of
        two still leaves the widened range.
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
            slices = plan.range_batch.slices()
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

    # ---- eager check ---------------------------------------------------------------------
    def eager_batch(self, run: EagerRun) -> Failures:
        """Every range check in one comparison; input-driven excursions become notes."""
        batch = run.plan.range_batch
        if not (run.in_range and batch.checks):
            return []
        run.st.checks_run += len(batch.checks)
        out = []
        for c, detail in batch.failures(run.values):
            if c.index < run.start:
                continue
            if run.benign is not None and run.benign(c):
                run.st.notes.append(f"{c.name}: {detail}; re-computed equal with golden "
                                    "weights: input-driven, not a fault")
                continue
            out.append((c.index, Detection(c.name, c.name, self.name, detail)))
        return out

    def eager_check(self, c: LayerCheck, run: EagerRun) -> tuple[int, Detection] | None:
        fails = RangeBatch([c]).failures(run.values)
        return (c.index, Detection(c.name, c.name, self.name, fails[0][1])) if fails else None

    # ---- device check --------------------------------------------------------------------
    def device_batch(self, checks: Sequence[LayerCheck], values: Sequence[Any],
                     device: torch.device) -> DeviceRange:
        return DeviceRange(checks, values, device)

    def device_check(self, c: LayerCheck, vals: Sequence[Any], inst: Any
                     ) -> torch.Tensor | bool:
        batch = RangeBatch([c])
        mn, mx = batch.reduce(vals)
        lo, hi = batch.low.to(mn.device), batch.high.to(mn.device)
        return ~((mn >= lo) & (mx <= hi)).all()


RANGE = RangeKind()


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


class DeviceRange:
    """A group's range checks under one flag: one fused per-channel launch, or per layer."""

    detail = RANGE.device_detail

    def __init__(self, checks: Sequence[LayerCheck], values: Sequence[Any],
                 device: torch.device) -> None:
        self.checks = list(checks)
        self.device = device
        self.ranges: list[LayerCheck] = []  # per layer, torch reductions
        self.chunked: list[LayerCheck] = []  # one multi-tensor range launch
        self.ranger: RangeChecker | None = None
        self._pending: list[Any] = []
        dtype = None
        for c in self.checks:
            v = values[c.index]
            ok = isinstance(v, torch.Tensor) and v.is_contiguous() and v.numel() > 0 \
                and v.dtype in (torch.float32, torch.float16, torch.bfloat16)
            if ok and dtype in (None, v.dtype):
                dtype = v.dtype
                self.chunked.append(c)
            else:
                self.ranges.append(c)
        if self.ranges:
            self.batch = RangeBatch(self.ranges)
            self.low, self.high = self.batch.low.to(device), self.batch.high.to(device)
        if self.chunked:
            backend = Kernels.TRITON if device.type == "cuda" and triton_available() \
                else Kernels.TORCH
            vs = [values[c.index] for c in self.chunked]
            self.ranger = RangeChecker([c.name for c in self.chunked],
                                       [tuple(v.shape) for v in vs],
                                       [c.channel_dim for c in self.chunked],
                                       [c.range_low for c in self.chunked],
                                       [c.range_high for c in self.chunked], dtype, device,
                                       backend)

    def launch(self, vals: Sequence[Any], keep: list) -> torch.Tensor | None:
        """Enqueue the checks; a device bool (None: nothing to check)."""
        bads = []
        if self.ranges:
            mn, mx = self.batch.reduce(vals)
            bads.append(~((mn >= self.low) & (mx <= self.high)).all())
            keep += [mn, mx]
        if self.chunked:
            tensors = [vals[c.index] for c in self.chunked]
            rc = self.ranger
            if rc.backend is Kernels.TRITON and torch.cuda.is_current_stream_capturing():
                self._pending.append(rc.pointers(tensors))
            else:
                rc.bind(tensors)
            rc.launch(tensors)
            bads.append(rc.failed())
        keep += bads
        return torch.stack(bads).any() if bads else None

    def finish_capture(self) -> None:
        """Point the range kernel at the tensors the captured graph uses."""
        for ptrs in self._pending:
            self.ranger.bind((), ptrs)
        self._pending = []

    def localize(self, vals: Sequence[Any]) -> list[str]:
        """The layers behind a raised flag, re-checked eagerly on the saved values."""
        every = self.ranges + self.chunked
        batch = RangeBatch(every)
        lo, hi = batch.low.to(self.device), batch.high.to(self.device)
        mn, mx = batch.reduce(vals)
        bad = (~((mn >= lo) & (mx <= hi))).tolist()
        owners = [c.name for c in every for _ in range(
            c.range_low.numel() if c.channel_dim is not None else 1)]
        return list(dict.fromkeys(n for n, b in zip(owners, bad, strict=True) if b))
