"""WeightStore: flat storage keeps values, checksums see every single flip, repair is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from save_ros.core import bits
from save_ros.core.weights import WeightStore


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
                         nn.Linear(5 * 4 * 4, 3)).eval()


def test_rehoming_keeps_values_identity_and_outputs():
    m = _model()
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        before = m(x)
    params = {n: p for n, p in m.named_parameters()}
    values = {n: p.detach().clone() for n, p in params.items()}
    store = WeightStore(m, chunk=64)
    for n, p in m.named_parameters():
        assert p is params[n]  # same Parameter objects: optimisers, hooks, fx code still hold
        assert torch.equal(bits.int_view(p.detach()), bits.int_view(values[n]))
        assert p.is_contiguous()
    with torch.no_grad():
        assert torch.equal(m(x), before)
    assert store.check() == []


@pytest.mark.parametrize("bit", range(32))
def test_every_single_bit_flip_is_seen_and_localised(bit):
    m = _model()
    store = WeightStore(m, chunk=64)
    w = m[4].weight.detach()
    bits.flip_(w, 37, bit)
    bad = store.check()
    assert len(bad) == 1
    rep = store.restore(bad)
    assert rep.elements == {"4.weight": 1}
    assert store.check() == []


def test_restore_is_bit_exact_for_nan_and_negative_zero():
    m = _model()
    store = WeightStore(m, chunk=64)
    golden = {n: bits.int_view(store.golden(n)).clone() for n in store.tensors}
    w = m[0].weight.detach()
    for b in range(23, 31):
        bits.set_bit_(w, 3, b, 1)  # exponent all ones
    bits.set_bit_(w, 3, 5, 1)  # and a mantissa bit: a NaN with a payload
    w.view(-1)[4] = -0.0
    m[1].running_var.view(-1)[0] = float("inf")  # buffers are protected too
    rep = store.restore(None)  # full exact compare, as recover() does
    assert set(rep.elements) == {"0.weight", "1.running_var"}
    for n, t in store.tensors.items():
        assert torch.equal(bits.int_view(t.detach()), golden[n]), n


def test_many_flips_in_one_chunk_are_all_restored():
    m = _model()
    store = WeightStore(m, chunk=256)
    w = m[4].weight.detach()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(w.numel(), generator=gen)[:100]
    bit = torch.randint(0, 32, (100,), generator=gen)
    bits.flip_(w, idx, bit)
    rep = store.restore(store.check())
    assert rep.elements["4.weight"] == 100
    assert torch.equal(bits.int_view(w), bits.int_view(store.golden("4.weight")))


def test_windowed_checks_cover_every_chunk():
    m = _model()
    store = WeightStore(m, chunk=16)
    n = store.n_chunks()
    w = m[4].weight.detach()
    bits.flip_(w, w.numel() - 1, 30)
    found = [c for lo in range(0, n, 3) for c in store.check(lo=lo, hi=lo + 3)]
    assert len(found) == 1


def test_corrupted_names_exact_tensors():
    m = _model()
    store = WeightStore(m, chunk=64)
    bits.flip_(m[0].bias.detach(), 0, 0)
    assert store.corrupted(list(store.tensors)) == ["0.bias"]


def test_accept_current_takes_new_golden():
    m = _model()
    store = WeightStore(m, chunk=64)
    with torch.no_grad():
        m[4].weight.mul_(2.0)  # a deliberate update
    assert store.check()
    store.accept_current()
    assert store.check() == []
    assert torch.equal(store.golden("4.weight"), m[4].weight.detach())


def test_chunk_must_be_whole_words():
    m = nn.Linear(3, 3).half()
    with pytest.raises(ValueError, match="64-bit words"):
        WeightStore(m, chunk=2)


def test_cancelling_pair_hides_from_sums_but_not_from_the_exact_compare():
    m = _model()
    store = WeightStore(m, chunk=256)
    w = bits.int_view(m[4].weight.detach()).view(-1)
    # two elements of one chunk whose bit 3 differs, at even positions (same word half)
    i = 0
    j = next(k for k in range(2, 64, 2) if (int(w[k]) >> 3) & 1 != (int(w[i]) >> 3) & 1)
    bits.flip_(m[4].weight.detach(), [i, j], 3)
    assert store.check() == []  # +8 and -8 in one chunk's sum: the documented blind spot
    rep = store.restore(None)
    assert rep.elements == {"4.weight": 2}
