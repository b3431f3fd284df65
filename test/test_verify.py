"""Checks and verifier: ABFT tolerance holds fault-free and catches flips; DMR; range; queues."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from save_ros.core import bits
from save_ros.core.verify import FaultStatus, Job, Verifier
from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds.abft import abft_for
from save_ros.core.verify.kinds.dmr import dmr_mismatch
from save_ros.core.verify.kinds.range import RangeBatch


def _abft(m: nn.Module):
    return abft_for(m, m.weight.detach().clone(), m.bias.detach().clone())


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_abft_has_no_false_alarm_on_fault_free_layers(scale):
    torch.manual_seed(0)
    lin = nn.Linear(512, 64)
    conv = nn.Conv2d(32, 48, 3, padding=1)
    a_lin, a_conv = _abft(lin), _abft(conv)
    with torch.no_grad():
        for _ in range(20):
            x = torch.randn(8, 512) * scale
            assert a_lin.violation(x, lin(x))[0] <= 0
            xc = torch.randn(2, 32, 8, 8) * scale
            assert a_conv.violation(xc, conv(xc))[0] <= 0
            xs = torch.randn(2, 7, 512).relu() * scale  # tokens, non-negative
            assert a_lin.violation(xs, lin(xs))[0] <= 0


@pytest.mark.parametrize("bit", [30, 29, 28, 27, 26, 25, 31])
def test_abft_catches_high_bit_flips_in_the_output(bit):
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    a = _abft(conv)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        y = conv(x)
    # the largest output element: a flip there is far above rounding noise
    j = int(y.abs().argmax())
    bits.flip_(y, j, bit)
    assert a.violation(x, y)[0] > 0


def test_abft_catches_a_corrupted_weight_with_golden_checksums():
    torch.manual_seed(2)
    lin = nn.Linear(64, 16)
    a = _abft(lin)  # built from the golden weights
    bits.flip_(lin.weight.detach(), 5, 29)
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert a.violation(x, lin(x))[0] > 0


def test_abft_nan_is_a_fault():
    lin = nn.Linear(8, 4)
    a = _abft(lin)
    x = torch.randn(2, 8)
    with torch.no_grad():
        y = lin(x)
    y[0, 1] = float("nan")
    assert a.violation(x, y)[0] == float("inf")


def test_abft_only_for_plain_linear_and_conv():
    assert abft_for(nn.Conv2d(4, 4, 3, groups=2), torch.zeros(4, 2, 3, 3), None) is None
    assert abft_for(nn.ReLU(), torch.zeros(1), None) is None


def test_dmr_mismatch_exact_and_tolerant():
    a = torch.randn(10)
    assert dmr_mismatch(a.clone(), a, exact=True) is None
    b = a.clone()
    bits.flip_(b, 3, 0)  # one ulp
    assert dmr_mismatch(a, b, exact=True) is not None
    assert dmr_mismatch(a, b, exact=False) is None
    b[4] = float("nan")
    assert "2 element" in dmr_mismatch(a, b, exact=False)  # the ulp counts once a NaN fails
    assert dmr_mismatch((a, a), (a, b), exact=True) is not None


def test_range_batch_scalar_per_channel_and_nan():
    t1 = torch.rand(2, 3, 4)  # per-channel along dim 1
    t2 = torch.rand(5)
    c1 = LayerCheck(0, "a", CheckKind.RANGE, "", range_low=torch.zeros(3),
                    range_high=torch.tensor([1.0, 1.0, 0.5]), channel_dim=1, range_source="sound")
    c2 = LayerCheck(1, "b", CheckKind.RANGE, "", range_low=torch.tensor([0.0]),
                    range_high=torch.tensor([1.0]), range_source="calibration")
    batch = RangeBatch([c1, c2])
    t1[:, 2] = t1[:, 2] * 0.5
    assert batch.failures([t1, t2]) == []
    t1[1, 2, 0] = 0.9  # channel 2 allows at most 0.5
    fails = batch.failures([t1, t2])
    assert [c.name for c, _ in fails] == ["a"]
    t2[0] = float("nan")
    assert {c.name for c, _ in batch.failures([t1, t2])} == {"a", "b"}


def _job(i: int) -> Job:
    return Job(i, (torch.zeros(1),), None, (), 0.0, 0.0, 0, False, (0, 0), None)


def test_external_verifier_runs_only_when_asked():
    seen = []
    v = Verifier(lambda job: (seen.append(threading.current_thread().name),
                              FaultStatus(job.inference_id, verified=True))[1], "external")
    futs = [v.submit(_job(i)) for i in range(3)]
    assert not any(f.done() for f in futs) and v.pending() == 3
    assert v.run_pending(timeout=1.0) == 3
    assert [f.result().inference_id for f in futs] == [0, 1, 2]
    assert seen == [threading.current_thread().name] * 3
    v.close()
    with pytest.raises(RuntimeError, match="closed"):
        v.submit(_job(9))


def test_thread_verifier_uses_its_own_thread_and_reports_errors():
    def handler(job: Job) -> FaultStatus:
        if job.inference_id == 1:
            raise ValueError("boom")
        return FaultStatus(job.inference_id, verified=True,
                           notes=[threading.current_thread().name])

    v = Verifier(handler, "thread")
    f0, f1 = v.submit(_job(0)), v.submit(_job(1))
    assert f0.result(timeout=5).notes == ["save-verifier"]
    with pytest.raises(ValueError, match="boom"):
        f1.result(timeout=5)
    with pytest.raises(RuntimeError, match="external"):
        v.run_pending(0.1)
    v.close()


def test_fault_status_to_dict_is_plain_data():
    import json

    st = FaultStatus(3, verified=True)
    json.dumps(st.to_dict())
    assert not st.faulty and not st.repaired_ok
