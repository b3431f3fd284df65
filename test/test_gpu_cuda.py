"""The CUDA path on a real GPU: Triton kernels against the torch reference, CUDA-graph capture,
detection and bit-exact repair, async verdicts. Skipped (with the reason) without CUDA."""

from __future__ import annotations

import pytest
import torch

from save_ros.core.bits import flip_
from save_ros.core.cuda.chunks import checksum_chunks_torch, minmax_chunks_torch, plan_chunks
from save_ros.core.cuda.reducer import Backend, ChunkReducer, Reduction
from save_ros.gpu import cuda_available, triton_available
from save_ros.models.digits_resnet import DigitsResNet

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device (run on the GPU host)"),
]
needs_triton = pytest.mark.skipif(not triton_available(), reason="needs Triton with CUDA")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_rows_equal_the_torch_reference(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [1, 7, 16384, 16385, 100_000, 3 * 16384]
    ts = [torch.randn(n, generator=g, device="cuda").mul(50).to(dtype) for n in sizes]
    ts[3][16384] = float("nan")
    plan = plan_chunks([str(i) for i in range(len(ts))], sizes)
    for kind, ref_fn in ((Reduction.MINMAX, minmax_chunks_torch),
                         (Reduction.CHECKSUM, checksum_chunks_torch)):
        red = ChunkReducer(plan, dtype, kind, torch.device("cuda"), Backend.TRITON)
        red.out.fill_(-7)  # poison: every row must be written
        red.bind(ts)
        red.launch(ts)
        ref = ref_fn(ts, plan, torch.empty_like(red.out))
        got = red.out
        if kind is Reduction.MINMAX:
            nan_row = plan.offsets[3] + 1
            assert got[nan_row, 0] == float("-inf") and got[nan_row, 1] == float("inf")
            assert torch.isnan(ref[nan_row]).all()
            keep = torch.ones(plan.n_chunks, dtype=torch.bool, device="cuda")
            keep[nan_row] = False
            got, ref = got[keep], ref[keep]
        assert torch.equal(got, ref), kind


def _protected(**kw):
    from save_ros.gpu.runtime import CudaProtectedModel, GpuProtectConfig

    torch.manual_seed(0)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(8, 1, 8, 8, generator=g, device="cuda")
    calib = [torch.randn(8, 1, 8, 8, generator=g, device="cuda") for _ in range(4)]
    pm = CudaProtectedModel(DigitsResNet(), x, GpuProtectConfig(**kw), calibration=calib)
    return pm, x


@pytest.mark.parametrize("golden", ["device", "host"])
def test_graph_detects_repairs_and_reruns_bit_exact(golden):
    pm, x = _protected(golden=golden)
    ref = pm.infer(x)
    assert ref.verified
    golden_out = ref.output.clone()
    with torch.no_grad():
        eager = pm.model(x)
    assert torch.allclose(golden_out, eager, rtol=1e-4, atol=1e-5)
    for name, idx, bit in [("layer3.conv2.weight", 11, 30), ("fc.weight", 3, 1),
                           ("layer1.bn1.running_var", 2, 29)]:
        w = pm.live(name)
        before = w.clone()
        flip_(w, idx, bit)
        r = pm.infer(x)
        assert r.status.detections and r.status.repaired == [name], (name, r.status)
        assert r.verified and torch.equal(w, before)
        assert torch.equal(r.output, golden_out)
    pm.close()


def test_graph_async_verdict_and_amortised_checksum():
    pm, x = _protected(checksum_every=4)
    out0 = pm.infer(x).output.clone()
    futs = []
    for _ in range(8):
        r = pm.infer(x, wait=False)
        futs.append(r.verdict)
    sts = [f.result(timeout=60) for f in futs]
    assert all(s.verified and s.checksum_run for s in sts)
    assert sum(s.checksum_share for s in sts) == pytest.approx(2.0)  # two full rotations
    flip_(pm.live("layer2.conv2.weight"), 0, 30)
    for _ in range(4):  # at the latest the scheduled checksum finds it
        r = pm.infer(x)
        if r.status.detections:
            break
    assert r.verified and r.status.repaired == ["layer2.conv2.weight"]
    assert torch.equal(r.output, out0)
    pm.close()


@needs_triton
def test_graph_rows_match_torch_backend():
    pm_t, x = _protected(backend=Backend.TRITON, fused=False)
    pm_r, _ = _protected(backend=Backend.TORCH)
    a, b = pm_t.infer(x), pm_r.infer(x)
    assert a.verified and b.verified
    assert torch.equal(pm_t._cs_host, pm_r._cs_host)
    assert torch.allclose(pm_t._stats_host, pm_r._stats_host, rtol=1e-5, atol=1e-6)
    pm_t.close()
    pm_r.close()


def test_torchvision_fp16_graph_if_available():
    tv = pytest.importorskip("torchvision")
    from save_ros.gpu.runtime import CudaProtectedModel, GpuProtectConfig

    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(2, 3, 64, 64, generator=g, device="cuda").half()
    calib = [torch.randn(2, 3, 64, 64, generator=g, device="cuda").half() for _ in range(4)]
    pm = CudaProtectedModel(model, x, GpuProtectConfig(dtype=torch.float16), calibration=calib)
    out = pm.infer(x)
    assert out.verified
    gold = out.output.clone()
    flip_(pm.live("layer4.1.conv2.weight"), 100, 14)
    r = pm.infer(x)
    assert r.verified and r.status.repaired == ["layer4.1.conv2.weight"]
    assert torch.equal(r.output, gold)
    pm.close()


@needs_triton
def test_fused_graph_compares_on_device_and_rotates_the_checksum():
    pm, x = _protected(checksum_every=4)
    assert pm._fused is not None
    out0 = pm.infer(x).output.clone()
    assert all(pm.infer(x).verified for _ in range(8))
    assert int(pm._fused.flags_host.sum()) == 0
    flip_(pm.live("fc.weight"), 3, 2)  # a low mantissa bit: only the checksum can see it
    found = []
    for _ in range(4):  # its row belongs to exactly one of the 4 slices
        r = pm.infer(x)
        assert r.verified
        found.append(bool(r.status.detections))
    assert found.count(True) == 1
    assert torch.equal(pm.infer(x).output, out0) and pm.check_weights() == []
    flip_(pm.live("layer3.conv1.weight"), 0, 30)
    for _ in range(4):
        r = pm.infer(x)
        if r.status.detections:
            break
    assert r.status.detections and r.verified and torch.equal(r.output, out0)
    pm.close()


def test_protect_dispatches_cuda_inputs_to_the_graph_path():
    from save_ros import ProtectConfig, protect
    from save_ros.core.cuda.runtime import CudaProtectedModel

    torch.manual_seed(0)
    net = DigitsResNet().eval().cuda()
    x = torch.rand(1, 1, 8, 8, device="cuda")
    pm = protect(net, x, (0.0, 1.0), ProtectConfig(calibration=torch.rand(16, 1, 8, 8)))
    try:
        assert isinstance(pm, CudaProtectedModel)
        assert pm.infer(x).status.verified
    finally:
        pm.close()
