"""Fault models: dataclasses that turn a set of sites and a seeded generator into concrete faults.

Memory-cell models (`RandomFlips`, `BitErrorRate`, `BitPositions`, `StuckAt`) sample `BitFault`s
over all selected sites, uniformly per BIT: a site with more elements (or wider elements) draws
proportionally more faults. `ProcessingElementFault` is the accelerator model; it is applied to
layers by `save_ros.faults.pe`, not to memory.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from save_ros.core import bits
from save_ros.errors import UserError
from save_ros.faults.targets import Site


class FaultOp(enum.Enum):
    """What a fault does to its bit."""

    FLIP = "flip"
    SET0 = "set0"  # stuck-at-0
    SET1 = "set1"  # stuck-at-1


@dataclass(frozen=True)
class BitFault:
    """One concrete fault: `op` applied to `bit` of element `flat_index` of tensor `site`."""

    site: str
    flat_index: int
    bit: int
    op: FaultOp = FaultOp.FLIP

    def __post_init__(self) -> None:
        # checked here, not when applied: a bad fault must not get into a saved list
        if self.flat_index < 0:
            raise ValueError(f"fault on {self.site!r}: flat_index must be >= 0, got "
                             f"{self.flat_index}")
        check_bit_position(self.bit)

    def to_list(self) -> list:
        """Compact JSON form: [site, flat_index, bit, op]."""
        return [self.site, self.flat_index, self.bit, self.op.value]

    @classmethod
    def from_list(cls, item: Sequence) -> BitFault:
        """Inverse of `to_list`."""
        return cls(str(item[0]), int(item[1]), int(item[2]), FaultOp(item[3]))


MAX_WIDTH = max(layout.width for layout in bits.LAYOUTS.values())  # 32: no dtype has more bits


def check_bit_position(bit: int) -> None:
    """Raise ValueError unless `bit` is an int in 0..31 (0 = least significant).

    A position no supported dtype has is refused when a fault model or fault is made; whether
    the hit tensor's dtype has it (bit 20 of an fp16) is checked before a fault is applied.
    """
    if isinstance(bit, bool) or not isinstance(bit, numbers.Integral) \
            or not 0 <= bit < MAX_WIDTH:
        raise ValueError(f"bit positions lie in 0..{MAX_WIDTH - 1} (0 = least significant), "
                         f"got {bit!r}")


def bit_range(low: int, high: int) -> tuple[int, ...]:
    """Bit positions low..high inclusive (0 = least significant), for `bits=` arguments."""
    if low > high or low < 0:
        raise ValueError(f"bit range {low}..{high} is empty or negative")
    return tuple(range(low, high + 1))


def _bits_tuple(value: Iterable[int] | int | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral):
        check_bit_position(value)
        return (int(value),)
    value = tuple(value)
    for b in value:
        check_bit_position(b)
    out = tuple(sorted({int(b) for b in value}))
    if not out:
        raise ValueError("an empty bit set selects nothing; pass None for all bits")
    return out


class NoBitsError(UserError, ValueError):
    """The chosen bit positions exist in none of the selected tensors."""


def _allowed(site: Site, bit_set: tuple[int, ...] | None) -> list[int]:
    width = site.width
    return list(range(width)) if bit_set is None else [b for b in bit_set if b < width]


def _bit_space(sites: Sequence[Site], bit_set: tuple[int, ...] | None):
    """Per-site allowed bits and the cumulative count of (element, bit) pairs."""
    allowed = [_allowed(s, bit_set) for s in sites]
    sizes = torch.tensor([s.numel * len(a) for s, a in zip(sites, allowed, strict=True)],
                         dtype=torch.int64)
    if int(sizes.sum()) == 0:
        raise NoBitsError(f"bit positions {bit_set} exist in none of the selected tensors")
    return allowed, torch.cumsum(sizes, 0)


def _distinct_draws(total: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n distinct integers uniform in [0, total), in draw order (rejection of repeats)."""
    if n > total:
        raise ValueError(f"cannot draw {n} distinct faults from {total} candidate bits")
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    if 2 * n > total:  # dense: a permutation is cheap enough and exact
        return torch.randperm(total, generator=gen)[:n]
    got = torch.randint(0, total, (n,), generator=gen)
    while True:
        uniq, first = _first_occurrences(got)
        if uniq.numel() == n:
            return got[first.sort().values]
        kept = got[first.sort().values]
        extra = torch.randint(0, total, (n - kept.numel(),), generator=gen)
        got = torch.cat([kept, extra])


def _first_occurrences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inverse = torch.unique(x, return_inverse=True)
    pos = torch.arange(x.numel())
    first = torch.full((uniq.numel(),), x.numel(), dtype=torch.int64).scatter_reduce(
        0, inverse, pos, reduce="amin")
    return uniq, first


def _locate(draws: torch.Tensor, sites: Sequence[Site], allowed, cum: torch.Tensor,
            op: FaultOp) -> list[BitFault]:
    """Map global (element, bit) pair numbers to BitFaults."""
    which = torch.searchsorted(cum, draws, right=True)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), cum[:-1]])
    local = draws - starts[which]
    out = []
    for w, loc in zip(which.tolist(), local.tolist(), strict=True):
        a = allowed[w]
        out.append(BitFault(sites[w].name, loc // len(a), a[loc % len(a)], op))
    return out


def _generator(seed: int | torch.Generator) -> torch.Generator:
    """A generator for `seed`; only an int (or a Generator) is a seed: 1.5 is not truncated to 1."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"a seed is an int or a torch.Generator, not {type(seed).__name__} "
                        f"{seed!r}")
    return torch.Generator().manual_seed(int(seed))


@dataclass(frozen=True)
class RandomFlips:
    """Exactly `n` distinct single-bit flips, uniform over all selected bits.

    `bits` restricts the positions (e.g. `bit_range(23, 30)` = the fp32 exponent); None = all.
    """

    n: int
    bits: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"RandomFlips needs n >= 0, got {self.n}")
        object.__setattr__(self, "bits", _bits_tuple(self.bits))

    def sample(self, sites: Sequence[Site], seed: int | torch.Generator) -> list[BitFault]:
        """Draw the faults over `sites`."""
        gen = _generator(seed)
        allowed, cum = _bit_space(sites, self.bits)
        return _locate(_distinct_draws(int(cum[-1]), self.n, gen), sites, allowed, cum,
                       FaultOp.FLIP)


@dataclass(frozen=True)
class BitErrorRate:
    """Every selected bit flips independently with probability `rate`.

    The count is drawn Binomial(total bits, rate) from the seeded generator (1e-4 over a 1M-param
    fp32 model gives about 3,200 flips), then placed like `RandomFlips`.
    """

    rate: float
    bits: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"a bit error rate lies in [0, 1], got {self.rate}")
        object.__setattr__(self, "bits", _bits_tuple(self.bits))

    def count(self, sites: Sequence[Site], seed: int | torch.Generator) -> int:
        """Draw only the number of flipped bits."""
        gen = _generator(seed)
        _, cum = _bit_space(sites, self.bits)
        total = torch.tensor([float(cum[-1])], dtype=torch.float64)
        return int(torch.binomial(total, torch.tensor([self.rate], dtype=torch.float64),
                                  generator=gen).item())

    def sample(self, sites: Sequence[Site], seed: int | torch.Generator) -> list[BitFault]:
        """Draw the count, then the faults over `sites`."""
        gen = _generator(seed)
        n = self.count(sites, gen)
        return RandomFlips(n, self.bits).sample(sites, gen)


@dataclass(frozen=True)
class BitPositions:
    """`n` distinct random elements, each with ALL of `bits` flipped (a multi-bit upset in a word).

    With one position (`BitPositions((30,), n=10)`) it is ten flips of bit 30 in ten elements.
    """

    bits: tuple[int, ...]
    n: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _bits_tuple(self.bits))
        if self.bits is None:
            raise ValueError("BitPositions needs at least one bit position")
        if self.n < 0:
            raise ValueError(f"BitPositions needs n >= 0, got {self.n}")

    def sample(self, sites: Sequence[Site], seed: int | torch.Generator) -> list[BitFault]:
        """Draw the elements, then expand each into one fault per listed bit."""
        return _elements_then_bits(sites, self.bits, self.n, seed, FaultOp.FLIP)


@dataclass(frozen=True)
class StuckAt:
    """`bit` forced to `value` (0 or 1) in `n` distinct random elements (a stuck memory cell)."""

    bit: int
    value: int
    n: int = 1

    def __post_init__(self) -> None:
        if self.value not in (0, 1):
            raise ValueError(f"stuck-at value must be 0 or 1, not {self.value!r}")
        if self.n < 0:
            raise ValueError(f"StuckAt needs n >= 0, got {self.n}")
        check_bit_position(self.bit)

    def sample(self, sites: Sequence[Site], seed: int | torch.Generator) -> list[BitFault]:
        """Draw the elements."""
        op = FaultOp.SET1 if self.value else FaultOp.SET0
        return _elements_then_bits(sites, (self.bit,), self.n, seed, op)


def _elements_then_bits(sites: Sequence[Site], bit_set: tuple[int, ...], n: int,
                        seed: int | torch.Generator, op: FaultOp) -> list[BitFault]:
    """n distinct elements (uniform over elements of sites wide enough for every bit)."""
    gen = _generator(seed)
    usable = [s for s in sites if max(bit_set) < s.width]
    if not usable:
        raise NoBitsError(f"bit positions {bit_set} exist in none of the selected tensors")
    for s in usable:
        bits.check_bit(bits.layout_of(s.dtype), max(bit_set))
    allowed = [[0]] * len(usable)  # one slot per element
    cum = torch.cumsum(torch.tensor([s.numel for s in usable], dtype=torch.int64), 0)
    elems = _locate(_distinct_draws(int(cum[-1]), n, gen), usable, allowed, cum, op)
    return [BitFault(e.site, e.flat_index, b, op) for e in elems for b in bit_set]


class PEMode(enum.Enum):
    """How a faulty processing element corrupts what passes through it."""

    FLIP = "flip"
    STUCK0 = "stuck0"
    STUCK1 = "stuck1"


class PESite(enum.Enum):
    """Which value inside the processing element is corrupted."""

    PRODUCT = "product"  # the fp32 product w * x, before accumulation
    WEIGHT = "weight"  # the weight register: w is corrupted, then multiplied


@dataclass(frozen=True)
class ProcessingElementFault:
    """A faulty processing element: every product of input channel `in_ch` with output channel
    `out_ch` is wrong (see `save_ros.faults.pe` for the exact semantics).

    `in_ch` / `out_ch` None = drawn per layer from the seed. `bit` and `mode` say how the product
    (or the weight register, `site=PESite.WEIGHT`) is corrupted.
    """

    in_ch: int | None = None
    out_ch: int | None = None
    bit: int = 30
    mode: PEMode = PEMode.FLIP
    site: PESite = PESite.PRODUCT

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", PEMode(self.mode))
        object.__setattr__(self, "site", PESite(self.site))
        bits.check_bit(bits.layout_of(torch.float32), self.bit)


MemoryFaultModel = RandomFlips | BitErrorRate | BitPositions | StuckAt
FaultModel = MemoryFaultModel | ProcessingElementFault

FAULT_MODELS: dict[str, type] = {c.__name__: c for c in (RandomFlips, BitErrorRate, BitPositions,
                                                        StuckAt, ProcessingElementFault)}


def model_to_dict(model: FaultModel) -> dict:
    """A JSON-safe description of a fault model (class name + fields)."""
    d = {"model": type(model).__name__}
    for k, v in vars(model).items():
        d[k] = v.value if isinstance(v, enum.Enum) else (list(v) if isinstance(v, tuple) else v)
    return d


def model_from_dict(d: dict) -> FaultModel:
    """Inverse of `model_to_dict`."""
    d = dict(d)
    cls = FAULT_MODELS.get(d.pop("model"))
    if cls is None:
        raise ValueError(f"unknown fault model; known: {', '.join(FAULT_MODELS)}")
    return cls(**d)
