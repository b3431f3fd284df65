"""Bit-exact behaviour of save_ros.core.bits (bit 0 = least significant)."""

import math

import pytest
import torch

from save_ros.core import bits


def test_sign_flip_negates_every_float_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.tensor([1.5, -2.25, 0.0], dtype=dtype)
        sign = bits.layout_of(dtype).sign_bit
        bits.flip_(t, [0, 1, 2], sign)
        assert t[0].item() == -1.5 and t[1].item() == 2.25
        assert bits.to_bits(t[2].item(), dtype) == 1 << sign  # -0.0


def test_bit30_of_fp32_one_is_inf():
    t = torch.tensor([1.0])
    bits.flip_(t, 0, 30)
    assert math.isinf(t.item()) and t.item() > 0


def test_known_fp16_bf16_int8_vectors():
    assert bits.to_bits(1.0, torch.float16) == 0x3C00
    assert bits.to_bits(1.0, torch.bfloat16) == 0x3F80
    t = torch.tensor([1.0], dtype=torch.float16)
    bits.flip_(t, 0, 14)  # top exponent bit of 1.0 -> exponent all ones, mantissa 0 -> inf
    assert math.isinf(t.item())
    b = torch.tensor([1.0], dtype=torch.bfloat16)
    bits.flip_(b, 0, 0)  # lowest mantissa bit: 1 + 2**-7
    assert b.item() == 1.0 + 2**-7
    i = torch.tensor([5, -1], dtype=torch.int8)
    bits.flip_(i, [0, 1], [7, 0])
    assert i.tolist() == [-123, -2]


def test_nan_and_subnormal_kept_as_they_come():
    t = torch.tensor([1.0, 0.0])
    bits.flip_(t, 0, 30)
    bits.flip_(t, 0, 0)  # inf with a mantissa bit is NaN: kept, not cleaned
    assert math.isnan(t[0].item())
    bits.flip_(t, 1, 0)  # smallest fp32 subnormal
    assert t[1].item() == 2.0**-149


def test_flip_twice_restores_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1000, generator=g)
    before = bits.int_view(t).clone()
    idx = torch.randint(0, 1000, (300,), generator=g)
    bit = torch.randint(0, 32, (300,), generator=g)
    bits.flip_(t, idx, bit)
    assert not torch.equal(bits.int_view(t), before)
    bits.flip_(t, idx.flip(0), bit.flip(0))
    assert torch.equal(bits.int_view(t), before)


def test_duplicate_flips_compose():
    t = torch.tensor([1.0])
    bits.flip_(t, [0, 0], [31, 31])
    assert t.item() == 1.0


def test_stuck_at_and_get_bit():
    t = torch.tensor([1.0, 1.0])
    bits.set_bit_(t, [0, 1], 31, 1)
    assert t.tolist() == [-1.0, -1.0]
    assert bits.get_bit(t, [0, 1], 31).tolist() == [1, 1]
    bits.set_bit_(t, 0, 31, 0)
    assert t.tolist() == [1.0, -1.0]


def test_fields_and_errors():
    lay = bits.layout_of(torch.float32)
    assert lay.field(31) is bits.BitField.SIGN
    assert lay.field(23) is bits.BitField.EXPONENT
    assert lay.field(22) is bits.BitField.MANTISSA
    with pytest.raises(bits.BitIndexError):
        bits.flip_(torch.zeros(2), 0, 32)
    with pytest.raises(bits.UnsupportedDtypeError):
        bits.layout_of(torch.float64)
    assert bits.from_bits(0x80, torch.int8) == -128
