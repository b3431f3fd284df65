"""Injector edge cases (reliability issue, item 8): each test guards one fix and fails before it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from save_ros.core import bits
from save_ros.faults import (
    BitFault,
    BitPositions,
    FaultList,
    FaultPlan,
    RandomFlips,
    ReplayMismatchError,
    StuckAt,
    Target,
    UndoLog,
    UndoMismatchError,
    UnknownNameError,
    apply_faults,
    apply_weight_faults,
    inject_weights,
    replay,
    select_weights,
)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: bits.int_view(v.detach()).clone() for k, v in model.state_dict().items()
            if v.dtype in bits.LAYOUTS}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = snapshot(model)
    return all(torch.equal(now[k], v) for k, v in before.items())


def test_failed_weight_injection_changes_nothing():
    """Guards: a bad index later in the list used to leave the earlier flips applied, unlogged."""
    m = net()
    before = snapshot(m)
    faults = [BitFault("0.weight", 3, 30), BitFault("2.weight", 24, 30)]  # 2.weight has 24
    with pytest.raises(IndexError, match="out of range"):
        apply_weight_faults(m, faults)
    assert unchanged(m, before)
    # a bit the dtype lacks (bit 20 of fp16), after a valid fault on another tensor
    h = {"a": torch.ones(4), "b": torch.ones(4, dtype=torch.float16)}
    with pytest.raises(bits.BitIndexError):
        apply_weight_faults(h, [BitFault("a", 0, 30), BitFault("b", 0, 20)])
    assert torch.equal(h["a"], torch.ones(4))


def test_failed_apply_faults_restores_the_weights():
    """Guards: apply_faults left earlier weight faults in place when a later one failed."""
    m = net()
    before = snapshot(m)
    bad = FaultList(weights=[BitFault("0.weight", 0, 31), BitFault("0.bias", 99, 31)])
    with pytest.raises(IndexError):
        with apply_faults(m, bad):
            pass
    assert unchanged(m, before)


def test_failed_replay_changes_nothing():
    """Guards: replay applied the records before an out-of-range one and kept them."""
    m = net()
    log = inject_weights(m, RandomFlips(5), Target(tensors=("0.weight",)), seed=1)
    good = UndoLog(list(log.records))
    log.undo(m)
    before = snapshot(m)
    bad = UndoLog(good.records + [dataclasses.replace(good.records[0], tensor="2.bias",
                                                      flat_index=7)])  # 2.bias has 3
    with pytest.raises(ReplayMismatchError, match="out of range"):
        replay(m, bad)
    assert unchanged(m, before)
    fresh = replay(m, good)  # the same log on the right model still replays
    assert [x.new_bits for x in fresh] == [x.new_bits for x in good]
    fresh.undo(m)
    assert unchanged(m, before)


def test_exclude_typo_is_an_error_with_near_matches():
    """Guards: an exclude name matching nothing was silently ignored (685 of 1,000 flips then
    landed in the tensor meant to be excluded)."""
    m = net()
    with pytest.raises(UnknownNameError, match="did you mean '2.weight'"):
        select_weights(m, Target(exclude={"2.wieght"}))
    with pytest.raises(UnknownNameError, match="'3.*'"):
        select_weights(m, Target(exclude={"3.*"}))  # a glob that matches nothing
    assert "2.weight" not in select_weights(m, Target(exclude={"2.weight"}))


class Tied(nn.Module):
    """A decoder weight tied to the encoder's: state_dict lists it under both names."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(16, 16, bias=False)
        self.mid = nn.Linear(16, 16)
        self.dec = nn.Linear(16, 16, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(self.mid(self.enc(x)))


@pytest.mark.parametrize("name", ["enc.weight", "dec.weight"])
def test_a_tied_weight_excluded_under_either_name_is_never_hit(name):
    """Guards: excluding the tied weight by its second state_dict name excluded nothing."""
    m = Tied()
    assert "dec.weight" in m.state_dict() and "dec.weight" not in dict(m.named_parameters())
    assert set(select_weights(m, Target(exclude={name}))) == {"mid.weight", "mid.bias"}
    before = m.enc.weight.detach().clone()
    log = inject_weights(m, RandomFlips(1000), Target(exclude={name}), seed=0)
    assert {r.tensor for r in log} <= {"mid.weight", "mid.bias"}
    assert torch.equal(m.enc.weight.detach(), before)


@pytest.mark.parametrize("make", [
    lambda: RandomFlips(3, bits=(-1,)),
    lambda: RandomFlips(3, bits=(2, 40)),
    lambda: BitPositions((-2,)),
    lambda: StuckAt(-1, 1),
    lambda: BitFault("0.weight", 0, -3),
    lambda: BitFault("0.weight", -1, 3),
])
def test_bad_bit_positions_are_refused_at_construction(make):
    """Guards: negative bits were accepted until a fault was applied (far from the mistake)."""
    with pytest.raises(ValueError, match="0..31|>= 0"):
        make()


def test_undo_onto_another_dtype_raises_and_writes_nothing():
    """Guards: undo onto an fp16 copy wrote truncated fp32 patterns instead of refusing."""
    m = net()
    log = inject_weights(m, RandomFlips(20), Target(), seed=2)
    half = net().half()
    before = snapshot(half)
    with pytest.raises(UndoMismatchError, match="float32.*float16"):
        UndoLog(list(log.records)).undo(half)
    assert unchanged(half, before)
    # a log saved before records carried their dtype: the patterns do not fit 16 bits
    old = json.loads(log.to_json())
    for rec in old["records"]:
        del rec["dtype"]
    with pytest.raises(UndoMismatchError, match="wider dtype"):
        UndoLog.from_json(json.dumps(old)).undo(half)
    assert unchanged(half, before)
    log.undo(m)  # the right model still undoes


@pytest.mark.parametrize("seed", [1.5, 2.0, True, "3"])
def test_seeds_are_ints_or_generators(seed):
    """Guards: a float seed was truncated (1.5 -> 1) without a word."""
    m = net()
    with pytest.raises(TypeError, match="seed"):
        inject_weights(m, RandomFlips(2), Target(), seed=seed)
    with pytest.raises(TypeError, match="seed"):
        FaultPlan().add(Target(), RandomFlips(1)).sample(m, seed=seed)
    inject_weights(m, RandomFlips(2), Target(), seed=torch.Generator().manual_seed(1)).undo(m)


@pytest.mark.parametrize("dtype, pattern", [
    (torch.float32, 0x7F800001),  # signalling NaN, payload 1
    (torch.float32, 0xFFA00005),  # negative signalling NaN
    (torch.float32, 0x7FC00123),  # quiet NaN with a payload
    (torch.float16, 0x7C01),
    (torch.float16, 0xFE3F),
    (torch.bfloat16, 0x7F81),
])
def test_nan_payloads_survive_from_bits_to_bits(dtype, pattern):
    """Guards: from_bits went through a hardware cast that set the quiet bit (and fp16/bf16
    dropped the payload), so to_bits(from_bits(p)) != p for signalling NaNs."""
    assert bits.to_bits(bits.from_bits(pattern, dtype), dtype) == pattern
