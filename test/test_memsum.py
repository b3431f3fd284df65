"""Memory checksums: every single flip between an activation's write and its last read is caught.

The check kind `checksum` (core/verify/memsum.py, kinds.py) sums an activation's bits right after
its producer wrote it and again after its last reader; these tests flip bits in that window
(fault sites of the CPU runtime, and module hooks) and assert detection and a bit-exact repair.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from save_ros import ProtectConfig, protect
from save_ros.core import bits
from save_ros.core.graph import capture
from save_ros.core.instrument import Instrumented
from save_ros.core.verify.checks import CheckKind
from save_ros.core.verify.kinds import KINDS, describe_failure
from save_ros.core.verify.memsum import bitsum
from save_ros.faults import ActivationFaults, BitFault


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bitsum_changes_under_every_single_flip(dtype):
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(1001, generator=gen).to(dtype)  # odd count: the int16 path for halves
    t2 = torch.randn(64, 32, generator=gen).to(dtype)
    for x in (t, t2):
        s0 = bitsum(x)
        for bit in range(bits.layout_of(dtype).width):
            y = x.clone()
            bits.flip_(y, 17, bit)
            assert bitsum(y) != s0, f"bit {bit} of {dtype} not seen"


def test_bitsum_is_order_independent():
    t = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(4096, generator=torch.Generator().manual_seed(2))
    assert bitsum(t) == bitsum(t[perm]) == bitsum(t.view(64, 64).t())


class Branchy(nn.Module):
    """Functional ops, a residual add, a cat and a view read late: memory with long lives."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 5)

    def forward(self, x):
        a = F.relu(self.conv(x))
        flat = a.view(a.shape[0], -1)  # a view of `a`, read at the end
        b = self.conv2(a) + a
        c = torch.cat([b, a], 1)
        return self.fc(c.flatten(1)) + flat.sum(1, keepdim=True)


def test_last_reader_follows_views():
    net = Branchy().eval()
    x = torch.rand(1, 3, 8, 8)
    inst = Instrumented(capture(net, x))
    with torch.inference_mode():
        _, values = inst.forward(x)
    last = inst.last_readers(values)
    relu = inst.index["relu"]
    # `a` is read through its view by the final sum: its last read is there, not at cat
    assert last[relu] > inst.index["cat"]
    fwd = inst.checksummed([relu], last)
    with torch.inference_mode():
        out, _, w, r = fwd(x)
    assert torch.equal(out, net(x)) and torch.equal(w, r)


@pytest.fixture(scope="module")
def branchy():
    torch.manual_seed(0)
    net = Branchy().eval()
    calib = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = calib[:1]
    with torch.inference_mode():
        clean = net(x).clone()
    pm = protect(net, x, (0.0, 1.0), ProtectConfig(calibration=calib, reliable_budget_bytes=0,
                                                   checks="checksum"), fault_sites=True)
    yield pm, x, clean
    pm.close()


def test_functional_outputs_are_checksummed(branchy):
    pm, _, _ = branchy
    kinds = {c["layer"]: c["check"] for c in pm.checks()}
    for name in ("relu", "add", "cat", "conv"):
        assert kinds[name] == "checksum", kinds


@pytest.mark.parametrize("bit", [31, 30, 27, 22, 0])
@pytest.mark.parametrize("site", ["conv", "relu", "add", "cat"])
def test_a_flip_between_write_and_last_read_is_caught_and_repaired(branchy, site, bit):
    pm, x, clean = branchy
    pm.arm_activation_fault(site, 5, bit)
    r = pm.infer(x)
    assert r.status.verified
    assert torch.equal(r.output, clean)
    assert [d.check for d in r.status.detections] == ["checksum"]
    assert r.status.detections[0].tensor == site
    assert "last read" in r.status.detections[0].detail


def test_a_module_hook_flip_lands_after_the_write_sum(branchy):
    pm, x, clean = branchy
    with ActivationFaults(pm.model, [BitFault("conv2", 7, 30)]):
        r = pm.infer(x)
    assert r.status.verified and torch.equal(r.output, clean)
    assert any(d.tensor == "conv2" and d.check == "checksum" for d in r.status.detections)


def test_clean_inferences_raise_no_checksum_alarm(branchy):
    pm, x, clean = branchy
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        r = pm.infer(torch.rand(1, 3, 8, 8, generator=gen))
        assert r.status.verified and not r.status.detections


def test_the_checksum_is_what_the_checker_runs_not_a_stub(branchy):
    """Break the comparison (read sums equal write sums by construction): the flip escapes."""
    pm, x, clean = branchy
    plan = pm._plan
    real = plan.forward

    def lying(*a):
        out, values, w, _r = real(*a)
        return out, values, w, w.clone()

    plan.forward = lying
    try:
        pm.arm_activation_fault("add", 5, 30)
        r = pm.infer(x)
        assert r.status.verified and not torch.equal(r.output, clean)
    finally:
        plan.forward = real


def test_every_kind_describes_itself():
    for kind in CheckKind:
        assert KINDS[kind].verifies
    assert "between its write and its last read" in describe_failure("checksum")
    assert describe_failure(CheckKind.RANGE, "x").endswith(": x")


def _program_model(device: str, use_graph: bool):
    from save_ros.core.cuda.runtime import CudaProtectedModel

    torch.manual_seed(0)
    net = Branchy().eval().to(device)
    calib = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(3)).to(device)
    x = calib[:1]
    with torch.inference_mode():
        clean = net(x).clone()
    pm = CudaProtectedModel(net, x, (0.0, 1.0), ProtectConfig(
        calibration=calib, reliable_budget_bytes=0, checks="checksum"), None,
        use_graph=use_graph, fault_sites=True)
    return pm, x, clean


def _program_catches_flips(pm, x, clean):
    assert {c["layer"]: c["check"] for c in pm.checks()}["add"] == "checksum"
    r = pm.infer(x)
    assert r.verified and not r.status.detections and torch.equal(r.output, clean)
    for site in ("conv", "relu", "add", "cat"):
        for bit in (30, 23, 1):
            pm.arm_activation_fault(site, 3, bit)
            r = pm.infer(x)
            assert r.verified and torch.equal(r.output, clean), (site, bit)
            assert [d.check for d in r.status.detections] == ["checksum"], (site, bit)
            assert r.status.detections[0].layer == site
            assert "between its write and its last read" in r.status.detections[0].detail


def test_the_device_program_checksums_activations_eagerly():
    """The CUDA backend's program (run eagerly here): write sums before each fault site, read
    sums after the last reader, one flag, localised on the slow path."""
    pm, x, clean = _program_model("cpu", use_graph=False)
    _program_catches_flips(pm, x, clean)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_captured_graph_checksums_activations():
    pm, x, clean = _program_model("cuda", use_graph=True)
    _program_catches_flips(pm, x, clean)
