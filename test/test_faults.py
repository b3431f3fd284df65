"""Weight fault injection: exact bit values, undo, replay, exclude, sampling statistics."""

import math

import pytest
import torch
from torch import nn

from save_ros.core import bits
from save_ros.faults import (
    BitErrorRate,
    BitFault,
    BitPositions,
    EmptyTargetError,
    FaultOp,
    RandomFlips,
    ReplayMismatchError,
    Site,
    StuckAt,
    Target,
    UndoLog,
    apply_weight_faults,
    bit_range,
    inject_weights,
    model_from_dict,
    model_to_dict,
    replay,
    select_weights,
    weight_sites,
)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 10))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: bits.int_view(v).clone() if v.dtype in bits.LAYOUTS else v.clone()
            for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        got = bits.int_view(v) if v.dtype in bits.LAYOUTS else v
        assert torch.equal(got, snap[k]), k


class Holder(nn.Module):
    """One named tensor of any dtype, as a parameter-free module with a buffer."""

    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.register_buffer("t", t)


def test_sign_flip_negates_and_bit30_of_one_is_inf():
    m = Holder(torch.tensor([1.0, 2.5]))
    faults = [BitFault("t", 0, 30), BitFault("t", 1, 31)]
    log = apply_weight_faults(m, faults)
    assert math.isinf(m.t[0].item()) and m.t[0].item() > 0
    assert m.t[1].item() == -2.5
    r0, r1 = log.records
    assert (r0.old_bits, r0.new_bits) == (0x3F800000, 0x7F800000)
    assert (r0.old_value, r0.new_value) == (1.0, math.inf)
    assert r1.new_bits == 0xC0200000 and r1.new_value == -2.5
    log.undo(m)
    assert m.t.tolist() == [1.0, 2.5]


@pytest.mark.parametrize(
    "dtype,value,bit,new_bits,new_value",
    [
        (torch.float16, 1.0, 14, 0x7C00, math.inf),  # exponent all ones -> inf
        (torch.float16, 1.0, 15, 0xBC00, -1.0),
        (torch.float16, 1.0, 0, 0x3C01, 1.0 + 2**-10),
        (torch.bfloat16, 1.0, 14, 0x7F80, math.inf),
        (torch.bfloat16, 1.0, 0, 0x3F81, 1.0 + 2**-7),
        (torch.int8, 5, 7, 0x85, -123),
        (torch.int8, 5, 1, 0x07, 7),
        (torch.float32, 0.0, 0, 0x00000001, 2**-149),  # smallest subnormal kept as is
    ],
)
def test_known_vectors_through_the_injector(dtype, value, bit, new_bits, new_value):
    m = Holder(torch.tensor([value], dtype=dtype))
    log = apply_weight_faults(m, [BitFault("t", 0, bit)])
    (r,) = log.records
    assert r.new_bits == new_bits and r.new_value == new_value
    assert bits.to_bits(m.t[0].item(), dtype) == new_bits
    log.undo(m)
    assert bits.to_bits(m.t[0].item(), dtype) == bits.to_bits(value, dtype)


def test_nan_result_is_kept_and_undone_bit_exact():
    m = Holder(torch.tensor([1.5]))  # 0x3FC00000: exponent all ones with a mantissa -> NaN
    log = apply_weight_faults(m, [BitFault("t", 0, 30)])
    assert math.isnan(m.t[0].item()) and log.records[0].new_bits == 0x7FC00000
    again = UndoLog.from_json(log.to_json())
    assert math.isnan(again.records[0].new_value)
    log.undo(m)
    assert m.t[0].item() == 1.5


def test_stuck_at_forces_the_bit_and_records_unchanged_cells():
    m = Holder(torch.tensor([1.0, 1.0]))
    faults = [BitFault("t", 0, 31, FaultOp.SET1), BitFault("t", 1, 29, FaultOp.SET1)]
    log = apply_weight_faults(m, faults)
    assert m.t[0].item() == -1.0 and m.t[1].item() == 1.0  # bit 29 of 1.0 is already 1
    assert log.records[0].changed and not log.records[1].changed
    t = torch.tensor([3.0])
    sites = select_weights(None, Target(), {"w": t})
    log2 = apply_weight_faults(sites, StuckAt(30, 0, n=1).sample(weight_sites(sites), 0))
    assert t.item() == bits.from_bits(0x40400000 & ~(1 << 30), torch.float32)
    log2.undo(sites)
    assert t.item() == 3.0


def test_undo_restores_bit_for_bit_in_reverse_order_even_after_repeat_hits():
    m = small_net()
    snap = snapshot(m)
    # The same element hit by three faults, one twice on the same bit: order matters.
    faults = [BitFault("0.weight", 3, 30), BitFault("0.weight", 3, 22),
              BitFault("0.weight", 3, 30), BitFault("4.weight", 0, 31, FaultOp.SET0)]
    log = apply_weight_faults(m, faults)
    assert log.records[1].old_bits == log.records[0].new_bits  # later faults see earlier ones
    log.undo(m)
    assert_bit_identical(m, snap)


def test_undo_after_an_external_repair_does_not_re_corrupt():
    m = small_net()
    snap = snapshot(m)
    golden = m[0].weight.detach().clone()
    log = inject_weights(m, RandomFlips(50), Target(layers=("0",)), seed=3)
    with torch.no_grad():
        m[0].weight.copy_(golden)  # a SAVE-style repair before the trial ends
    log.undo(m)
    assert_bit_identical(m, snap)


def test_inject_undo_and_replay_of_a_saved_list_are_exact(tmp_path):
    m = small_net()
    snap = snapshot(m)
    log = inject_weights(m, RandomFlips(200), seed=7)
    assert len(log) == 200
    faulty = snapshot(m)
    log.save(tmp_path / "faults.json")
    log.undo(m)
    assert_bit_identical(m, snap)
    again = replay(m, UndoLog.load(tmp_path / "faults.json"))
    assert_bit_identical(m, faulty)
    assert again.records == UndoLog.load(tmp_path / "faults.json").records
    again.undo(m)
    assert_bit_identical(m, snap)


def test_replay_on_other_weights_is_refused_and_leaves_them_clean():
    log = inject_weights(small_net(0), RandomFlips(20), seed=1)
    other = small_net(1)
    snap = snapshot(other)
    with pytest.raises(ReplayMismatchError):
        replay(other, log)
    assert_bit_identical(other, snap)


def test_same_seed_same_faults_other_seed_other_faults():
    a = inject_weights(small_net(), RandomFlips(64), seed=11).records
    b = inject_weights(small_net(), RandomFlips(64), seed=11).records
    c = inject_weights(small_net(), RandomFlips(64), seed=12).records
    assert a == b and a != c
    g = torch.Generator().manual_seed(11)
    assert inject_weights(small_net(), RandomFlips(64), seed=g).records == a


def test_exclude_and_layer_and_type_selection_are_honoured():
    m = small_net()
    target = Target(exclude=frozenset({"4.weight", "0.*"}))
    log = inject_weights(m, RandomFlips(500), target, seed=0)
    assert set(log.tensors()) == {"4.bias", "1.weight", "1.bias"}
    log.undo(m)
    assert set(select_weights(m, Target(types=(nn.Linear,)))) == {"4.weight", "4.bias"}
    assert set(select_weights(m, Target(layers=("0",), tensors=("*.weight",)))) == {"0.weight"}
    with_buffers = select_weights(m, Target(layers=("1",), buffers=True))
    assert "1.running_mean" in with_buffers and "1.num_batches_tracked" not in with_buffers
    assert "1.running_mean" not in select_weights(m, Target())
    with pytest.raises(EmptyTargetError):
        select_weights(m, Target(layers=("nope*",)))


def test_flips_are_distinct_and_uniform_per_bit():
    # Two tensors, 1 and 3 elements of 32 bits: 128 bits in all; drawing all of them must hit
    # every (element, bit) pair once; many small draws split ~1:3 between the tensors.
    pool = {"a": torch.zeros(1), "b": torch.zeros(3)}
    sites = weight_sites(pool)
    every = RandomFlips(128).sample(sites, 0)
    assert len({(f.site, f.flat_index, f.bit) for f in every}) == 128
    hits_b = sum(f.site == "b" for s in range(200) for f in RandomFlips(4).sample(sites, s))
    assert 0.70 < hits_b / 800 < 0.80
    with pytest.raises(ValueError):
        RandomFlips(129).sample(sites, 0)


def test_bit_restrictions_and_multi_bit_words():
    pool = {"w": torch.zeros(1000)}
    sites = weight_sites(pool)
    exp = RandomFlips(300, bits=bit_range(23, 30)).sample(sites, 1)
    assert {f.bit for f in exp} <= set(range(23, 31))
    words = BitPositions((30, 31), n=5).sample(sites, 2)
    assert len(words) == 10 and len({f.flat_index for f in words}) == 5
    assert sorted(f.bit for f in words) == [30] * 5 + [31] * 5


def test_bit_error_rate_counts_are_binomial():
    # 1e-4 over 1M fp32 params: mean 3,200 flips, sd ~57.
    sites = [Site("w", 1_000_000, torch.float32)]
    ber = BitErrorRate(1e-4)
    counts = torch.tensor([float(ber.count(sites, s)) for s in range(40)])
    assert abs(counts.mean().item() - 3200) < 3 * 57
    assert 20 < counts.std().item() < 120
    assert ber.count(sites, 5) == ber.count(sites, 5)
    assert BitErrorRate(0.0).sample(sites, 0) == []


def test_fault_models_round_trip_through_dicts():
    for fm in (RandomFlips(3, bits=(1, 2)), BitErrorRate(1e-5), BitPositions((30,), 2),
               StuckAt(31, 1, 4)):
        assert model_from_dict(model_to_dict(fm)) == fm
    with pytest.raises(ValueError):
        StuckAt(3, 2)


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="supported dtypes"):
        select_weights(None, Target(), {"x": torch.zeros(3, dtype=torch.float64)})
