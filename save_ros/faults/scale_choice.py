"""Choosing a layer's weight scale: storage formats, the per-layer fault objective, the search.

Weight-scaling hardening (`save_ros.faults.scaling.harden`) stores each layer's weights times a
constant and rescales its outputs; this module decides the constant.

A linear or conv layer computes `y = (x (*) (s W) + s b) * (1 / s)`: the memory holds `s W` (and
`s b`), and the rescale is one multiply per output. The fault model changes with `s`: in fp32 a
flip of exponent bit 30 of a weight below 1 multiplies it by 2**128, while above 2 the same flip
divides it by 2**128 (the weight drops to about zero). So `s` decides which exponents the stored
weights use, hence how bad a random flip is.

The objective of one layer, in the output domain (errors of the stored tensor times `1 / s`):

    J(s) = rep_mse(s) + flips_per_weight * flip_mse(s)

`flip_mse` is the mean, over every stored element and every bit, of the squared error that a flip
of that bit makes, computed exactly with `save_ros.core.bits.flipped` on the actual stored values;
a flip to Inf/NaN counts as `NONFINITE_PENALTY` (the square of fp32's largest value: no finite
error is worse). `rep_mse` is the fault-free error of storing `s W` in the format (0 for fp32
with a power of two; rounding and clipping for int8). `s` is chosen from candidates (powers of two
keep the rescale exact) that keep every weight finite and, for float formats, do not store the
weights less precisely than `s = 1` does.

Formats: fp32, fp16 (fp32 compute from fp16 storage) and int8 (per-layer scale: `q = round(s w)`
clipped to [-128, 127], output times `1 / s`). Biases are stored in fp32 (times `s`, so the
rescale covers them too): the hardening is about the weights. The per-layer constant `1 / s` is
a Python float held by the code, not a tensor in fault-prone memory (a real deployment keeps it
with the program, or in the reliable pool: it is 4 bytes per layer).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from save_ros.core.bits import int_view, layout_of, mask_value
from save_ros.errors import UserError

FP32_MAX = float(torch.finfo(torch.float32).max)
NONFINITE_PENALTY = FP32_MAX**2


class StorageFormat(enum.Enum):
    """How a scaled layer stores its weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of the stored weights."""
        return {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}[self.value]


class ScalingError(UserError, ValueError):
    """A weight-scaling request that cannot be met (bad format, no admissible scale, ...)."""


def parse_format(fmt: str | StorageFormat) -> StorageFormat:
    """`"fp32" | "fp16" | "int8"` (or a StorageFormat) -> StorageFormat."""
    if isinstance(fmt, StorageFormat):
        return fmt
    try:
        return StorageFormat(str(fmt).lower())
    except ValueError:
        names = ", ".join(f.value for f in StorageFormat)
        raise ScalingError(f"unknown storage format {fmt!r}; use one of {names}") from None


def flips_per_weight(bit_error_rate: float, fmt: str | StorageFormat) -> float:
    """Expected flips per stored element at a per-bit error rate (the weight of flip_mse in J)."""
    if not 0.0 <= bit_error_rate <= 1.0:
        raise ScalingError(f"bit error rate must lie in [0, 1], not {bit_error_rate}")
    return bit_error_rate * layout_of(parse_format(fmt).dtype).width


def encode(w: torch.Tensor, scale: float, fmt: str | StorageFormat) -> torch.Tensor:
    """The stored tensor for weights `w` at `scale` in `fmt` (one rounding, from float64)."""
    fmt = parse_format(fmt)
    scaled = w.detach().to(torch.float64) * scale
    if fmt is StorageFormat.INT8:
        return torch.round(scaled).clamp_(-128, 127).to(torch.int8)
    return scaled.to(fmt.dtype)


def decode(stored: torch.Tensor, scale: float) -> torch.Tensor:
    """The weights a stored tensor stands for, in float64 (stored value times `1 / scale`)."""
    return stored.to(torch.float64) * (1.0 / scale)


@dataclass(frozen=True)
class Objective:
    """The terms of J(s) for one layer and one scale, in the output domain."""

    scale: float
    rep_mse: float  # fault-free storage error (rounding, clipping, underflow)
    rep_rel: float  # sqrt(sum of squared storage errors / sum of squared weights)
    flip_mse: float  # mean squared error of one flip of a random (element, bit)
    nonfinite_share: float  # share of (element, bit) flips that give Inf or NaN
    total: float  # rep_mse + flips_per_weight * flip_mse


def flip_errors(
    stored: torch.Tensor, input_peak: float = 0.0, output_offset: float = 0.0
) -> torch.Tensor:
    """Squared error of flipping each bit of each stored element: (width, numel) float64.

    In the stored domain (not yet times 1 / s). A flip is returned as +inf when its result is
    Inf/NaN, or when the fp32 computation would overflow with it: |new value| * `input_peak`
    (the largest input the weight meets) + `output_offset` (the largest fault-free scaled
    output) reaches fp32's largest value.
    """
    layout = layout_of(stored.dtype)
    width = layout.width
    flat = stored.detach().reshape(-1)
    # One replica of the tensor per bit position, replica b flipped at bit b in every element:
    # one broadcast XOR through bits.int_view instead of `width` separate passes.
    replicas = flat.repeat(width, 1)
    masks = [mask_value(layout, b) for b in range(width)]
    int_view(replicas).bitwise_xor_(torch.tensor(masks, dtype=layout.int_dtype)[:, None])
    new = replicas.to(torch.float64)
    d = new - flat.to(torch.float64)
    overflow = new.abs() * input_peak + output_offset >= FP32_MAX
    return torch.where(torch.isfinite(d) & ~overflow, d * d, torch.inf)


@dataclass(frozen=True)
class LayerBounds:
    """What the layer meets at run time: its largest |input| and largest fault-free |output|.

    Measured on calibration inputs by `harden`; the defaults (inputs up to 1, outputs ignored)
    are for a bare tensor. They keep the scaled computation from overflowing: a scale is
    admissible only if `scale * output_peak` stays `HEADROOM` below fp32's largest value, and a
    flip that would overflow the scaled accumulation counts as Inf.
    """

    input_peak: float = 1.0
    output_peak: float = 0.0


HEADROOM = 2.0**16  # fault-free scaled outputs stay this far below fp32's largest value


def objective(
    w: torch.Tensor,
    scale: float,
    fmt: str | StorageFormat,
    flips_per_weight: float,
    bounds: LayerBounds = LayerBounds(),
    saturate: bool = False,
) -> Objective:
    """J(scale) for weights `w` stored in `fmt` (see the module docstring).

    `saturate=True` caps each flip's squared error at max|w|**2: an error larger than the largest
    weight is ruinous whatever its size, so J then ranks scales by how many flips are ruinous
    (closer to what accuracy sees) instead of by how astronomically large the worst ones are.
    """
    fmt = parse_format(fmt)
    if not (math.isfinite(scale) and scale > 0):
        raise ScalingError(f"a scale must be a finite positive number, not {scale}")
    stored = encode(w, scale, fmt)
    w64 = w.detach().to(torch.float64).reshape(-1)
    err = decode(stored, scale).reshape(-1) - w64
    rep_sq = float((err * err).sum()) if torch.isfinite(err).all() else math.inf
    norm_sq = float((w64 * w64).sum())
    rep_rel = math.sqrt(rep_sq / norm_sq) if norm_sq > 0 else (0.0 if rep_sq == 0 else math.inf)
    offset = scale * bounds.output_peak
    sq = flip_errors(stored, bounds.input_peak, offset) * (1.0 / scale) ** 2
    nonfinite = ~torch.isfinite(sq)
    cap = float(w64.abs().max()) ** 2 if saturate and w64.numel() else NONFINITE_PENALTY
    sq = torch.where(nonfinite, NONFINITE_PENALTY if not saturate else cap,
                     torch.clamp(sq, max=cap))
    flip_mse = float(sq.mean())
    rep_mse = rep_sq / max(w64.numel(), 1)
    return Objective(
        scale=scale,
        rep_mse=rep_mse,
        rep_rel=rep_rel,
        flip_mse=flip_mse,
        nonfinite_share=float(nonfinite.to(torch.float64).mean()),
        total=rep_mse + flips_per_weight * flip_mse,
    )


def unit_scale(w: torch.Tensor, fmt: str | StorageFormat) -> float:
    """The scale of the plain (unhardened) format: 1 for floats, 127 / max|w| for int8."""
    fmt = parse_format(fmt)
    if fmt is not StorageFormat.INT8:
        return 1.0
    peak = float(w.detach().abs().max()) if w.numel() else 0.0
    return 127.0 / peak if peak > 0 else 1.0


def default_candidates(w: torch.Tensor, fmt: str | StorageFormat) -> list[float]:
    """Powers of two that keep `w` finite in `fmt` (int8: around the unit scale, plus it)."""
    fmt = parse_format(fmt)
    peak = float(w.detach().abs().max()) if w.numel() else 0.0
    if fmt is StorageFormat.INT8:
        k0 = math.floor(math.log2(unit_scale(w, fmt)))
        # Larger scales clip the largest weights; 12 octaves is far past any useful clip.
        return sorted({2.0**k for k in range(k0 - 4, k0 + 13)} | {unit_scale(w, fmt)})
    finfo = torch.finfo(fmt.dtype)
    emax = int(math.log2(finfo.max)) + 1
    top = math.floor(math.log2(finfo.max / peak)) if peak > 0 else emax
    return [2.0**k for k in range(-emax, min(emax, top) + 1)]


@dataclass
class ScaleChoice:
    """The scale chosen for one layer, with J at the unit scale and at the chosen one."""

    layer: str
    fmt: str
    scale: float
    unit: Objective
    chosen: Objective
    candidates: int  # how many candidates J was computed for on every weight
    # J (on every weight) per such candidate: the landscape around the choice
    landscape: dict[float, float] = field(default_factory=dict, repr=False)

    @property
    def gain(self) -> float:
        """J(unit) / J(chosen): how many times smaller the expected squared error got."""
        return self.unit.total / self.chosen.total if self.chosen.total > 0 else math.inf

    def to_dict(self) -> dict:
        """A JSON-ready record (without the landscape)."""
        return {
            "layer": self.layer,
            "fmt": self.fmt,
            "scale": self.scale,
            "log2_scale": math.log2(self.scale),
            "unit": asdict(self.unit),
            "chosen": asdict(self.chosen),
            "gain": self.gain,
            "candidates": self.candidates,
        }


def admissible(
    w: torch.Tensor,
    scale: float,
    fmt: str | StorageFormat,
    tol: float,
    bounds: LayerBounds = LayerBounds(),
) -> bool:
    """No stored weight is Inf, the scaled outputs keep HEADROOM below fp32's largest value, and
    (floats) the relative storage error is at most `tol`."""
    fmt = parse_format(fmt)
    if scale * bounds.output_peak * HEADROOM >= FP32_MAX:
        return False
    stored = encode(w, scale, fmt)
    if fmt is StorageFormat.INT8:
        return True
    if not bool(torch.isfinite(stored).all()):
        return False
    w64 = w.detach().to(torch.float64).reshape(-1)
    err = decode(stored, scale).reshape(-1) - w64
    norm = float((w64 * w64).sum())
    return float((err * err).sum()) <= tol * tol * norm


def choose_scale(
    w: torch.Tensor,
    fmt: str | StorageFormat,
    flips_per_weight: float,
    candidates: Sequence[float] | None = None,
    layer: str = "",
    sample: int | None = 1024,
    finalists: int = 6,
    seed: int = 0,
    bounds: LayerBounds = LayerBounds(),
    saturate: bool = False,
) -> ScaleChoice:
    """The admissible candidate with the smallest J (ties: the one closest to 1).

    Admissible: no weight becomes Inf, and for float formats the storage error is no larger than
    at the unit scale or half an ulp (fp32 with powers of two: exactly zero). With `sample`, J is
    first ranked on a seeded sample of that many weights (a layer of N weights costs
    width x N exact flips per candidate), then computed on every weight for the `finalists`
    best; `sample=None` (or a layer no larger than it) computes every candidate exactly.
    """
    fmt = parse_format(fmt)
    cands = [float(c) for c in (default_candidates(w, fmt) if candidates is None else candidates)]
    unit = objective(w, unit_scale(w, fmt), fmt, flips_per_weight, bounds, saturate)
    tol = max(unit.rep_rel, 2.0**-11) if fmt is StorageFormat.FP16 else 0.0
    cands = [c for c in cands if admissible(w, c, fmt, tol, bounds)]
    if not cands:
        raise ScalingError(
            f"no admissible scale for layer {layer or '?'} in {fmt.value}: every candidate "
            "overflows or loses precision; pass wider candidates or another format"
        )
    flat = w.detach().reshape(-1)
    if sample is not None and flat.numel() > sample:
        gen = torch.Generator().manual_seed(seed)
        part = flat[torch.randperm(flat.numel(), generator=gen)[:sample]]
        rough = {c: objective(part, c, fmt, flips_per_weight, bounds, saturate).total
                 for c in cands}
        cands = sorted(cands, key=lambda c: (rough[c], abs(math.log2(c))))[:finalists]
    best: Objective | None = None
    landscape: dict[float, float] = {}
    for c in cands:
        obj = objective(w, c, fmt, flips_per_weight, bounds, saturate)
        landscape[c] = obj.total
        closer = best is not None and abs(math.log2(c)) < abs(math.log2(best.scale))
        if best is None or obj.total < best.total or (obj.total == best.total and closer):
            best = obj
    assert best is not None
    return ScaleChoice(layer, fmt.value, best.scale, unit, best, len(landscape), landscape)
