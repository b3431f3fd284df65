"""The GPU path's logic on CPU tensors: chunk plans, exact checksums, row verification, and
`CudaProtectedModel` run eagerly on the CPU with the torch reductions (detect, repair, re-run).

The CUDA-only behaviour (Triton kernels, CUDA graphs, streams) is tested in test_gpu_cuda.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from save_ros.core.bits import flip_, int_view
from save_ros.core.cuda.chunks import (
    ChunkPlanError,
    checksum_chunks_torch,
    minmax_chunks_torch,
    plan_chunks,
)
from save_ros.gpu import CudaUnavailableError, cuda_available, require_cuda
from save_ros.gpu.ranges import RangeError, profile_ranges, tapped
from save_ros.gpu.runtime import CudaProtectedModel, GpuConfigError, GpuProtectConfig
from save_ros.gpu.verdict import RowVerifier
from save_ros.models.digits_resnet import DigitsResNet


def _sums(ts, plan):
    out = torch.zeros(plan.n_chunks, 2, dtype=torch.int64)
    return checksum_chunks_torch(ts, plan, out).numpy().copy()


def test_plan_cuts_tensors_into_chunks_that_never_span_two():
    plan = plan_chunks(["a", "b", "c"], [10, 1, 25], chunk=8)
    assert plan.offsets == (0, 2, 3, 7)
    assert plan.owner().tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert plan.chunk_lengths().tolist() == [8, 2, 1, 8, 8, 8, 1]
    assert plan.chunk_start().tolist() == [0, 8, 0, 0, 8, 16, 24]
    assert plan.names_of(np.array([6, 3, 1])) == ["a", "c"]
    sub = plan.sub(1, 3)
    assert sub.names == ("b", "c") and sub.offsets == (0, 1, 5)
    with pytest.raises(ChunkPlanError, match="overflow"):
        plan_chunks(["a"], [4], chunk=1 << 15)
    with pytest.raises(ChunkPlanError, match="2 tensors"):
        plan.sub(0, 2).check([torch.zeros(10)])


def test_minmax_rows_are_exact_per_chunk():
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(37, generator=g), torch.randn(3, 5, generator=g)]
    plan = plan_chunks(["x", "y"], [37, 15], chunk=16)
    out = minmax_chunks_torch(ts, plan, torch.empty(plan.n_chunks, 2))
    flat = ts[0]
    for r, (a, b) in enumerate([(0, 16), (16, 32), (32, 37)]):
        assert out[r, 0] == flat[a:b].min() and out[r, 1] == flat[a:b].max()
    assert out[3, 0] == ts[1].min() and out[3, 1] == ts[1].max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_single_bit_flip_changes_exactly_its_chunk(dtype):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, generator=g).to(dtype)
    plan = plan_chunks(["w"], [40], chunk=16)
    golden = _sums([w], plan)
    width = int_view(w).element_size() * 8
    for idx in (0, 17, 39):
        for bit in range(width):
            flip_(w, idx, bit)
            diff = np.flatnonzero((_sums([w], plan) != golden).any(axis=1))
            assert diff.tolist() == [idx // 16], (idx, bit)
            flip_(w, idx, bit)
    assert (_sums([w], plan) == golden).all()


def test_weighted_sum_catches_flips_that_cancel_in_the_plain_sum():
    w = torch.tensor([1.0, 3.0, 1.0, 3.0])  # bit 22 of 3.0 is set, of 1.0 is clear
    plan = plan_chunks(["w"], [4])
    golden = _sums([w], plan)
    flip_(w, [0, 1], [22, 22])  # +2^22 in one element, -2^22 in the other
    now = _sums([w], plan)
    assert now[0, 0] == golden[0, 0]  # the plain sum is blind to this pair
    assert now[0, 1] != golden[0, 1]


def test_row_verifier_names_tensors_and_fails_on_nan():
    act = plan_chunks(["a", "b"], [4, 4], chunk=4)
    wplan = plan_chunks(["w1", "w2"], [8, 8], chunk=4)
    golden = np.arange(8, dtype=np.int64).reshape(4, 2)
    v = RowVerifier(act, {"a": 0.0, "b": -1.0}, {"a": 1.0, "b": 1.0}, wplan, golden)
    stats = np.array([[0.0, 1.0], [-0.5, 0.5]], dtype=np.float32)
    assert v.compare(stats, golden).clean
    bad = golden.copy()
    bad[3, 1] += 1
    verdict = v.compare(np.array([[0.0, float("nan")], [-0.5, 2.0]], dtype=np.float32), bad)
    assert verdict.range_rows.tolist() == [0, 1]
    assert v.corrupted_weights(verdict) == ["w2"]
    dets = v.detections(verdict, np.array([[0.0, np.nan], [-0.5, 2.0]]))
    assert [(d.tensor, d.check) for d in dets] == [("a", "range"), ("b", "range"),
                                                   ("w2", "checksum")]


def test_taps_name_repeated_calls_and_profile_widens_by_margin():
    m = DigitsResNet().eval()
    names = []
    with torch.no_grad(), tapped(m, lambda n, t: names.append(n), ("ReLU", "Linear")):
        m(torch.zeros(1, 1, 8, 8))
    assert names[0] == "stem.2" and "fc" in names
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t0 = profile_ranges(m, [x], ("Linear",), margin=0.0)
    t1 = profile_ranges(m, [x], ("Linear",), margin=0.5)
    span = t0.high["fc"] - t0.low["fc"]
    assert t1.high["fc"] == pytest.approx(t0.high["fc"] + 0.5 * span)
    with pytest.raises(RangeError, match="at least one"):
        profile_ranges(m, [], ("Linear",))


@pytest.fixture(scope="module")
def cpu_protected():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    model = DigitsResNet()
    x = torch.randn(4, 1, 8, 8, generator=g)
    calib = [torch.randn(4, 1, 8, 8, generator=g) for _ in range(6)]
    pm = CudaProtectedModel(model, x, GpuProtectConfig(use_graph=False, chunk=256),
                            calibration=calib, device="cpu")
    golden = pm.infer(x).output.clone()
    yield pm, x, golden
    pm.close()


def test_cpu_eager_clean_run_is_verified(cpu_protected):
    pm, x, golden = cpu_protected
    r = pm.infer(x)
    assert r.verified and not r.status.detections and r.status.checksum_run
    assert torch.equal(r.output, golden)
    assert r.status.checks_run == pm.act_plan.n_chunks + pm.weight_plan.n_chunks
    core = r.status.to_fault_status(7)
    assert core.verified and core.inference_id == 7 and core.weights_checked


@pytest.mark.parametrize("bit", [30, 23, 3])
def test_cpu_flip_is_detected_restored_and_rerun_bit_exact(cpu_protected, bit):
    pm, x, golden = cpu_protected
    w = pm.live("layer2.conv1.weight")
    before = w.clone()
    flip_(w, 5, bit)
    r = pm.infer(x)
    assert r.status.detections and r.status.repaired == ["layer2.conv1.weight"]
    assert r.verified and r.status.reruns == 1 and r.status.rerun_from == "input"
    assert torch.equal(w, before) and torch.equal(r.output, golden)
    if bit == 30:  # an exponent flip also leaves the activation ranges
        assert any(d.check == "range" for d in r.status.detections)


def test_cpu_range_alarm_between_checksums_localises_the_weight():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 8, 8, generator=g)
    pm = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False,
                            checksum_every=0), calibration=[x], device="cpu")
    golden = pm.infer(x).output.clone()
    assert not pm.infer(x).status.checksum_run
    flip_(pm.live("stem.0.weight"), 0, 30)
    r = pm.infer(x)
    assert r.verified and r.status.repaired == ["stem.0.weight"]
    assert torch.equal(r.output, golden)
    # an input far outside the calibrated box: alarms persist with golden weights
    r = pm.infer(x * 1e4)
    assert not r.verified and "input outside" in r.status.detail and not r.status.repaired
    fut = pm.infer(x, wait=False).verdict
    assert fut.result(timeout=30).verified
    pm.close()


def test_bad_configurations_raise_clear_errors():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(GpuConfigError, match="use_graph=False"):
        CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(), device="cpu")
    with pytest.raises(RangeError, match="calibration="):
        CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False), device="cpu")
    pm = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False),
                            calibration=[x], device="cpu")
    with pytest.raises(GpuConfigError, match="differs from the captured"):
        pm.infer(torch.zeros(2, 1, 8, 8))
    pm.close()


@pytest.mark.skipif(cuda_available(), reason="checks the message shown without CUDA")
def test_without_cuda_the_gpu_path_says_what_to_do():
    with pytest.raises(CudaUnavailableError, match="CPU path"):
        require_cuda()
    with pytest.raises(CudaUnavailableError):
        CudaProtectedModel(DigitsResNet(), torch.zeros(1, 1, 8, 8))


def test_cpu_async_verdicts_back_to_back_do_not_block(cpu_protected):
    pm, x, golden = cpu_protected
    futs = [pm.infer(x, wait=False).verdict for _ in range(5)]
    assert all(f.result(timeout=30).verified for f in futs)
    assert pm.infer(x).verified and pm.check_weights() == []


def test_rotating_checksum_finds_a_silent_flip_within_one_rotation():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    pm = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False,
                            checksum_every=3, chunk=512), calibration=[x], device="cpu")
    assert len(pm._cs_slices) == 3
    shares = [pm.infer(x).status.checksum_share for _ in range(3)]
    assert sum(shares) == pytest.approx(1.0) and all(0 < s < 1 for s in shares)
    golden = pm.infer(x).output.clone()
    flip_(pm.live("fc.weight"), 7, 2)  # a low mantissa bit: no range check can see it
    found = []
    for _ in range(3):
        r = pm.infer(x)
        found.append(bool(r.status.detections))
        assert r.verified
    assert found.count(True) == 1 and all(d.check == "checksum" for d in r.status.detections
                                          if r.status.detections)
    assert torch.equal(pm.infer(x).output, golden) and pm.check_weights() == []
    pm.close()


def test_elementwise_tap_after_a_checked_output_is_skipped():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.GELU(), torch.nn.Linear(12, 3),
                              torch.nn.ReLU())
    x = torch.randn(4, 6)
    pm = CudaProtectedModel(mlp, x, GpuProtectConfig(use_graph=False), calibration=[x],
                            device="cpu")
    assert pm.skipped_taps.get("1") == "elementwise of a checked output"
    assert "0" in pm.act_plan.names and "2" in pm.act_plan.names
    pm.close()


def test_tap_budget_keeps_the_narrowest_taps_and_the_output():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    full = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False),
                              calibration=[x], device="cpu")
    part = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False,
                              tap_budget=0.3), calibration=[x], device="cpu")
    total = sum(full.act_plan.numels)
    assert sum(part.act_plan.numels) <= 0.3 * total
    assert part.act_plan.names[-1] == full.act_plan.names[-1]
    assert "over tap_budget" in part.skipped_taps.values()
    assert max(part.act_plan.numels[:-1]) <= min(
        n for name, n in zip(full.act_plan.names, full.act_plan.numels, strict=True)
        if part.skipped_taps.get(name) == "over tap_budget")
    full.close()
    part.close()


def test_campaign_on_cpu_finds_every_output_changing_flip():
    from save_ros.gpu.campaign import run_campaign

    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    pm = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(use_graph=False),
                            calibration=[x], device="cpu")
    res = run_campaign(pm, x, trials=30, seed=1)
    assert res.trials == 30 and res.single + res.multi == 30
    assert res.output_changed > 0 and res.sdc == 0
    assert res.detected_changed == res.output_changed
    assert res.repaired_exact == res.detected and res.repair_failed == 0
    assert pm.check_weights() == []
    d = res.to_dict()
    assert d["sdc"]["count"] == 0 and d["sdc"]["ci95"][1] > 0
    pm.close()


def test_ranges_come_from_a_real_selection_analysis():
    from save_ros.core.select import analyze

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    m = DigitsResNet().eval()
    x = torch.rand(8, 1, 8, 8, generator=g)
    a = analyze(m, x, (0.0, 1.0), calibration=torch.rand(32, 1, 8, 8, generator=g))
    pm = CudaProtectedModel(m, x, GpuProtectConfig(use_graph=False), analysis=a,
                            calibration=torch.rand(8, 1, 8, 8, generator=g), device="cpu")
    from_analysis = [n for n, src in pm.ranges.source.items() if src.startswith("analysis:")]
    assert "layer1.relu1" in from_analysis and "fc" in from_analysis
    ta = a.tensors["layer1_relu1"]
    low, high = ta.check_range() if not isinstance(ta.check_range()[0], list) else (
        min(ta.check_range()[0]), max(ta.check_range()[1]))
    assert pm.ranges.low["layer1.relu1"] == low and pm.ranges.high["layer1.relu1"] == high
    assert pm.infer(x).verified
    pm.close()
