"""Exact bit layouts of fp32 / fp16 / bf16 / int8 tensors; flip, set and read single bits.

Bits are numbered from the least significant (bit 0) to the most significant (the sign bit:
31 for fp32, 15 for fp16 and bf16, 7 for int8). Every operation goes through an integer view of
the same storage, so a flip is exact: NaN, Inf and subnormal results are kept as they come.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

import torch

from save_ros.errors import UserError


class BitField(enum.Enum):
    """Which part of a number a bit belongs to."""

    SIGN = "sign"
    EXPONENT = "exponent"
    MANTISSA = "mantissa"
    INTEGER = "integer"  # a magnitude bit of a two's-complement integer


@dataclass(frozen=True)
class BitLayout:
    """The bit layout of one dtype: width, and where the exponent and mantissa lie."""

    dtype: torch.dtype
    int_dtype: torch.dtype  # the integer dtype of the same width, for exact views
    width: int
    exponent_bits: int  # 0 for integers
    mantissa_bits: int  # 0 for integers

    @property
    def sign_bit(self) -> int:
        """Position of the sign bit (the most significant bit)."""
        return self.width - 1

    @property
    def is_float(self) -> bool:
        """True for floating-point layouts."""
        return self.exponent_bits > 0

    def field(self, bit: int) -> BitField:
        """Name the field that `bit` belongs to."""
        check_bit(self, bit)
        if bit == self.sign_bit:
            return BitField.SIGN
        if not self.is_float:
            return BitField.INTEGER
        if bit >= self.mantissa_bits:
            return BitField.EXPONENT
        return BitField.MANTISSA


LAYOUTS: dict[torch.dtype, BitLayout] = {
    torch.float32: BitLayout(torch.float32, torch.int32, 32, 8, 23),
    torch.float16: BitLayout(torch.float16, torch.int16, 16, 5, 10),
    torch.bfloat16: BitLayout(torch.bfloat16, torch.int16, 16, 8, 7),
    torch.int8: BitLayout(torch.int8, torch.int8, 8, 0, 0),
    torch.uint8: BitLayout(torch.uint8, torch.uint8, 8, 0, 0),
}


class UnsupportedDtypeError(UserError, TypeError):
    """The tensor's dtype has no bit layout here."""


class BitIndexError(UserError, IndexError):
    """A bit position outside the dtype's width."""


def layout_of(dtype: torch.dtype) -> BitLayout:
    """Return the bit layout of `dtype`, or raise UnsupportedDtypeError."""
    try:
        return LAYOUTS[dtype]
    except KeyError:
        supported = ", ".join(str(d).removeprefix("torch.") for d in LAYOUTS)
        raise UnsupportedDtypeError(
            f"no bit layout for {dtype}; supported dtypes are {supported}"
        ) from None


def check_bit(layout: BitLayout, bit: int) -> None:
    """Raise BitIndexError unless 0 <= bit < width."""
    if not 0 <= int(bit) < layout.width:
        raise BitIndexError(
            f"bit {bit} is outside {layout.dtype} "
            f"(bits 0..{layout.width - 1}, 0 = least significant)"
        )


def mask_value(layout: BitLayout, bit: int) -> int:
    """The integer with only `bit` set, as a value of the layout's (signed) integer dtype."""
    check_bit(layout, bit)
    m = 1 << int(bit)
    if layout.int_dtype != torch.uint8 and m >= 1 << (layout.width - 1):
        m -= 1 << layout.width  # the sign bit of a signed integer is negative
    return m


def int_view(t: torch.Tensor) -> torch.Tensor:
    """An integer view of the same storage (no copy): writes through it change `t`'s bits."""
    layout = layout_of(t.dtype)
    return t.view(layout.int_dtype)


def _masks(layout: BitLayout, bits: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Vector of single-bit masks in the layout's integer dtype, one per entry of `bits`."""
    bits = torch.as_tensor(bits, dtype=torch.int64, device=device)
    if bits.numel() and (int(bits.min()) < 0 or int(bits.max()) >= layout.width):
        raise BitIndexError(
            f"bit positions must lie in 0..{layout.width - 1} for {layout.dtype}"
        )
    m = torch.ones_like(bits) << bits
    if layout.int_dtype != torch.uint8:
        m = torch.where(m >= (1 << (layout.width - 1)), m - (1 << layout.width), m)
    return m.to(layout.int_dtype)


def flip_(t: torch.Tensor, flat_index, bit) -> torch.Tensor:
    """Flip `bit` of the elements at `flat_index` of `t` in place; return `t`.

    `flat_index` and `bit` may be ints or equal-length integer tensors. A repeated (index, bit)
    pair flips twice, like two real upsets of the same cell.
    """
    layout = layout_of(t.dtype)
    if not t.is_contiguous():
        raise ValueError("flip_ needs a contiguous tensor (flat indices address its storage)")
    flat = int_view(t).view(-1)
    idx = torch.as_tensor(flat_index, dtype=torch.int64, device=t.device).reshape(-1)
    masks = _masks(layout, torch.as_tensor(bit).reshape(-1), t.device)
    if masks.numel() == 1 and idx.numel() > 1:
        masks = masks.expand(idx.numel())
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= flat.numel()):
        raise IndexError(f"flat index out of range for a tensor of {flat.numel()} elements")
    # Sequential XOR so that duplicates compose; vectorised when the indices are unique.
    if idx.numel() == torch.unique(idx).numel():
        flat[idx] = flat[idx] ^ masks
    else:
        for i, m in zip(idx.tolist(), masks.tolist(), strict=True):
            flat[i] = flat[i] ^ m
    return t


def set_bit_(t: torch.Tensor, flat_index, bit, value: int) -> torch.Tensor:
    """Force `bit` of the elements at `flat_index` to `value` (0 or 1) in place: stuck-at."""
    if value not in (0, 1):
        raise ValueError(f"stuck-at value must be 0 or 1, not {value!r}")
    layout = layout_of(t.dtype)
    flat = int_view(t).view(-1)
    idx = torch.as_tensor(flat_index, dtype=torch.int64, device=t.device).reshape(-1)
    masks = _masks(layout, torch.as_tensor(bit).reshape(-1), t.device)
    if masks.numel() == 1 and idx.numel() > 1:
        masks = masks.expand(idx.numel())
    if value:
        flat[idx] = flat[idx] | masks
    else:
        flat[idx] = flat[idx] & ~masks
    return t


def get_bit(t: torch.Tensor, flat_index, bit) -> torch.Tensor:
    """Read `bit` of the elements at `flat_index` (0 or 1 as int64)."""
    layout = layout_of(t.dtype)
    flat = int_view(t.contiguous()).view(-1)
    idx = torch.as_tensor(flat_index, dtype=torch.int64, device=t.device).reshape(-1)
    masks = _masks(layout, torch.as_tensor(bit).reshape(-1), t.device)
    return ((flat[idx] & masks) != 0).to(torch.int64)


def flipped(values: torch.Tensor, bit: int) -> torch.Tensor:
    """A copy of `values` with `bit` flipped in every element (for attribution, not injection)."""
    layout = layout_of(values.dtype)
    out = values.contiguous().clone()
    v = int_view(out)
    v ^= torch.tensor(mask_value(layout, bit), dtype=layout.int_dtype, device=values.device)
    return out


# A NaN crosses between a narrow float and Python's double by bit arithmetic, not by hardware
# conversion, which sets the quiet bit of a signalling NaN (and fp16/bf16 casts drop the payload):
# the narrow mantissa sits in the top bits of the double's, so to_bits(from_bits(p)) == p.
def _nan_to_double(pattern: int, layout: BitLayout) -> float:
    sign = (pattern >> layout.sign_bit) & 1
    mantissa = pattern & ((1 << layout.mantissa_bits) - 1)
    d = (sign << 63) | (0x7FF << 52) | (mantissa << (52 - layout.mantissa_bits))
    return struct.unpack("<d", struct.pack("<Q", d))[0]


def _double_nan_to_pattern(x: float, layout: BitLayout) -> int:
    d = struct.unpack("<Q", struct.pack("<d", x))[0]
    mantissa = (d & ((1 << 52) - 1)) >> (52 - layout.mantissa_bits)
    if mantissa == 0:  # a payload only in bits the narrow format lacks: a quiet NaN
        mantissa = 1 << (layout.mantissa_bits - 1)
    exponent = (1 << layout.exponent_bits) - 1
    return ((d >> 63) << layout.sign_bit) | (exponent << layout.mantissa_bits) | mantissa


def to_bits(x: float | int, dtype: torch.dtype) -> int:
    """The unsigned bit pattern of one scalar in `dtype` (for tests and reports).

    A NaN keeps its sign, quiet bit and payload (see `from_bits`).
    """
    layout = layout_of(dtype)
    if layout.is_float and isinstance(x, float) and math.isnan(x):
        return _double_nan_to_pattern(x, layout)
    v = int(int_view(torch.tensor([x], dtype=dtype))[0])
    return v & ((1 << layout.width) - 1)


def from_bits(pattern: int, dtype: torch.dtype) -> float | int:
    """The scalar of `dtype` whose unsigned bit pattern is `pattern`.

    A NaN pattern becomes a Python float NaN whose bits carry the sign, quiet bit and payload,
    so `to_bits(from_bits(p, dtype), dtype) == p` for every pattern.
    """
    layout = layout_of(dtype)
    if not 0 <= pattern < 1 << layout.width:
        raise ValueError(f"pattern {pattern:#x} does not fit {layout.width} bits")
    if layout.is_float:
        exponent = (pattern >> layout.mantissa_bits) & ((1 << layout.exponent_bits) - 1)
        if exponent == (1 << layout.exponent_bits) - 1 and pattern & ((1 << layout.mantissa_bits)
                                                                      - 1):
            return _nan_to_double(pattern, layout)
    signed = pattern
    if layout.int_dtype != torch.uint8 and pattern >= 1 << (layout.width - 1):
        signed -= 1 << layout.width
    return torch.tensor([signed], dtype=layout.int_dtype).view(dtype)[0].item()
