"""Which activations the GPU path checks, and the range each must stay in.

Activations are tapped with forward hooks on leaf modules (so the same taps work in eager mode
and inside a CUDA graph capture) and named by module path, with `#k` for the k-th repeated call
of one module (torchvision's ResNet calls one ReLU three times per block). Ranges come from a
SAVE `Analysis` when one is given (its activation names are fx node names; call k of module
`a.b` is node `a_b` or `a_b_k`), else from `profile_ranges`, the fallback: observed min/max over
calibration inputs, widened by a margin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from save_ros.core.bits import LAYOUTS

# Leaf modules whose outputs are checked by default: nonlinearities, linear and attention
# outputs. Convolutions and normalisations are left out: in both reference families a checked
# nonlinearity, linear or attention layer reads their outputs (directly or through the residual
# stream), so a corrupted value shows there. A nonlinearity that reads a checked output directly
# (GELU after a checked Linear) is skipped at run time as redundant: elementwise and monotone.
DEFAULT_TAPS: tuple[str, ...] = (
    "ReLU", "ReLU6", "GELU", "SiLU", "Hardswish", "Linear",
    "NonDynamicallyQuantizableLinear", "MultiheadAttention",
)
DENSE_TAPS: tuple[str, ...] = DEFAULT_TAPS + (
    "LayerNorm", "Conv2d", "Conv1d", "BatchNorm2d", "BatchNorm1d")
ELEMENTWISE = frozenset({"ReLU", "ReLU6", "GELU", "SiLU", "Hardswish"})
OUTPUT = "output"  # name of the model's own output in every table


class RangeError(ValueError):
    """Ranges that cannot be built (no calibration data, no tapped activation)."""


@dataclass
class RangeTable:
    """Allowed [low, high] per checked activation, and where each range came from."""

    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # "analysis:<check>" or "profile"

    def names(self) -> list[str]:
        """Checked activation names in insertion (execution) order."""
        return list(self.low)

    def set(self, name: str, low: float, high: float, source: str) -> None:
        """Add or replace one range."""
        self.low[name], self.high[name], self.source[name] = float(low), float(high), source


def first_tensor(out: object) -> torch.Tensor | None:
    """The first floating tensor of a module output (MultiheadAttention returns a tuple)."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, (tuple, list)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def tap_modules(
    model: nn.Module, types: Iterable[str] = DEFAULT_TAPS
) -> list[tuple[str, nn.Module]]:
    """Leaf modules (path, module) whose class name is in `types`, in registration order."""
    wanted = set(types)
    return [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in wanted]


@contextmanager
def tapped(
    model: nn.Module,
    on_output: Callable[[str, torch.Tensor], None],
    types: Iterable[str] = DEFAULT_TAPS,
) -> Iterator[dict[str, tuple[str, int]]]:
    """Within the block, call `on_output(name, tensor)` for every tapped module call.

    The block gets a dict: tap name -> (module class name, data_ptr of the call's first input).
    """
    calls: dict[str, int] = {}
    handles = []
    info: dict[str, tuple[str, int]] = {}

    def make(path: str) -> Callable:
        def hook(m: nn.Module, inp: object, out: object) -> None:
            k = calls.get(path, 0)
            calls[path] = k + 1
            t = first_tensor(out)
            if t is not None:
                name = path if k == 0 else f"{path}#{k}"
                i = first_tensor(inp)
                info[name] = (type(m).__name__, -1 if i is None else i.data_ptr())
                on_output(name, t)

        return hook

    for path, m in tap_modules(model, types):
        handles.append(m.register_forward_hook(make(path)))
    try:
        yield info
    finally:
        for h in handles:
            h.remove()
        calls.clear()


def profile_ranges(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    types: Iterable[str] = DEFAULT_TAPS,
    margin: float = 0.5,
) -> RangeTable:
    """Fallback when no Analysis is given: observed min/max per tap, widened by margin x span."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def observe(name: str, t: torch.Tensor) -> None:
        a, b = torch.aminmax(t.detach().float())
        lo[name] = min(lo.get(name, float("inf")), float(a))
        hi[name] = max(hi.get(name, float("-inf")), float(b))

    n = 0
    with torch.no_grad(), tapped(model, observe, types):
        for x in calibration:
            out = model(x)
            observe(OUTPUT, first_tensor(out))
            n += 1
    if n == 0:
        raise RangeError("profile_ranges needs at least one calibration batch")
    table = RangeTable()
    for name in lo:
        span = max(hi[name] - lo[name], 1e-6 * max(abs(lo[name]), abs(hi[name]), 1.0))
        table.set(name, lo[name] - margin * span, hi[name] + margin * span, "profile")
    return table


def _fx_name(tap: str) -> str:
    """The fx node name of a tap: `a.b` -> `a_b`, `a.b#2` -> `a_b_2`."""
    path, _, k = tap.partition("#")
    base = path.replace(".", "_")
    return f"{base}_{k}" if k else base


def ranges_from_analysis(analysis: object, names: Iterable[str]) -> tuple[RangeTable, list[str]]:
    """Ranges of the taps an Analysis covers (scalar check range), and the taps it does not."""
    tensors = getattr(analysis, "tensors", {})
    by_layer: dict[str, str] = {}
    for rec in getattr(analysis, "layers", []) or []:
        # hook captures name activations by module path already; fx by node name
        by_layer.setdefault(str(rec.get("target", "")), str(rec.get("name", "")))
    table, missing = RangeTable(), []
    for name in names:
        ta = tensors.get(name) or tensors.get(_fx_name(name))
        if ta is None and "#" not in name and name in by_layer:
            ta = tensors.get(by_layer[name])
        if ta is None or getattr(ta, "kind", None) is None or str(ta.kind.value) != "activation":
            missing.append(name)
            continue
        rng = ta.check_range()
        low, high = rng
        if isinstance(low, list):  # per-channel ranges: the GPU path checks the envelope
            low, high = min(low), max(high)
        table.set(name, low, high, f"analysis:{ta.check.value}")
    return table, missing


def select_taps(
    seen: Sequence[tuple[str, torch.Tensor, int]],
    info: dict[str, tuple[str, int]],
    ranges: RangeTable,
    dtype: torch.dtype,
    budget: float = 1.0,
) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Checkable taps as (name, numel) in execution order, and why each other tap is skipped.

    `seen` holds (name, output, output._version at the hook) from one forward; a tap is skipped
    when it has no range, is not contiguous, is rewritten in place later (a side-stream read
    would race with that write), has another dtype, or is an elementwise nonlinearity of an
    output already checked. With budget < 1 only the narrowest taps up to that share of the
    bytes are kept (and always the last, the model output): a corrupted value in a wide tensor
    reaches the narrower checked tensors downstream.
    """
    keep: list[tuple[str, int]] = []
    skipped: dict[str, str] = {}
    kept_ptrs: set[int] = set()
    for name, t, ver in seen:
        kind, in_ptr = info.get(name, ("", -1))
        if kind in ELEMENTWISE and in_ptr in kept_ptrs and in_ptr != t.data_ptr():
            skipped[name] = "elementwise of a checked output"
        elif name not in ranges.low:
            skipped[name] = "no range"
        elif not t.is_contiguous():
            skipped[name] = "not contiguous"
        elif t._version != ver:
            skipped[name] = "modified in place later"
        elif t.dtype not in LAYOUTS or not t.is_floating_point():
            skipped[name] = f"dtype {t.dtype}"
        elif t.dtype != dtype:
            skipped[name] = f"dtype {t.dtype} differs from the model's"
        else:
            keep.append((name, t.numel()))
            kept_ptrs.add(t.data_ptr())
    if budget < 1.0 and keep:
        total = sum(k for _, k in keep)
        chosen, acc = {len(keep) - 1}, keep[-1][1]
        for i in sorted(range(len(keep) - 1), key=lambda i: keep[i][1]):
            if acc + keep[i][1] > budget * total:
                skipped[keep[i][0]] = "over tap_budget"
                continue
            chosen.add(i)
            acc += keep[i][1]
        keep = [kv for i, kv in enumerate(keep) if i in chosen]
    return keep, skipped
