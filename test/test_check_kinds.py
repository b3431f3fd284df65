"""Every check kind against its own injected faults, through protect(), on both backends.

For each kind (range, DMR, ABFT, memory checksum) the model is protected with that kind forced
(`ProtectConfig.checks`), an activation bit is flipped at a site the plan gave that kind, and the
verdict must name that kind, and the verified output must equal the fault-free one bit for bit.
The CPU runtime and the CUDA backend's program (eagerly here; as a captured graph under the
`cuda` marker) run the same cases; weight flips are the `weights` kind.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from save_ros import ProtectConfig, protect
from save_ros.core import bits

KINDS = ("range", "dmr", "abft", "checksum")


class Net(nn.Module):
    """Conv, linear and functional ops: every kind has somewhere to go."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 6)

    def forward(self, x):
        a = F.relu(self.conv(x))
        b = F.relu(self.conv2(a) + a)
        return self.fc(b.flatten(1))


def _protect(kind: str, backend: str):
    torch.manual_seed(0)
    device = "cuda" if backend == "graph" else "cpu"
    net = Net().eval().to(device)
    calib = torch.rand(48, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    x = calib[:1]
    with torch.inference_mode():
        clean = net(x).clone()
    cfg = ProtectConfig(calibration=calib, reliable_budget_bytes=0, checks=kind,
                        memory_checksums=kind == "checksum")
    if backend == "cpu":
        pm = protect(net, x, (0.0, 1.0), cfg, fault_sites=True)
    else:
        from save_ros.core.cuda.runtime import CudaProtectedModel
        from save_ros.core.select import analyze
        a = analyze(net, x, (0.0, 1.0), calib)
        pm = CudaProtectedModel(net, x, (0.0, 1.0), cfg, a, use_graph=backend == "graph",
                                fault_sites=True)
    return pm, x, clean


def _sites_of(pm, kind: str) -> list[str]:
    sites = pm.activation_sites()
    return [c["layer"] for c in pm.checks() if c["check"] == kind and c["layer"] in sites]


def _exercise(kind: str, backend: str) -> None:
    pm, x, clean = _protect(kind, backend)
    try:
        r = pm.infer(x)
        assert r.verified and not r.status.detections and torch.equal(r.output, clean)
        sites = _sites_of(pm, kind)
        assert sites, f"no site got a {kind} check: {pm.checks()}"
        caught = 0
        for site in sites:
            # bit 30 makes a value of magnitude < 2 huge: out of range, not re-computed equal,
            # beyond any ABFT tolerance, a different bit sum
            pm.arm_activation_fault(site, 1, 30)
            r = pm.infer(x)
            assert r.verified and torch.equal(r.output, clean), (kind, site)
            if r.status.detections:
                assert {d.check for d in r.status.detections} == {kind}, r.status.detections
                caught += 1
        # a flip that the fault-free run masks (a ReLU input made more negative) may pass a
        # range check unseen, harmlessly; every other kind sees every such flip
        assert caught == len(sites) if kind != "range" else caught >= 1, (kind, caught, sites)
        w = pm.normal_tensors()["conv2.weight"]
        bits.flip_(w, 2, 30)
        r = pm.infer(x)
        assert r.verified and torch.equal(r.output, clean)
        assert "weights" in {d.check for d in r.status.detections}
    finally:
        pm.close()


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_runtime_catches_each_kinds_faults(kind):
    _exercise(kind, "cpu")


@pytest.mark.parametrize("kind", KINDS)
def test_device_program_catches_each_kinds_faults_eagerly(kind):
    _exercise(kind, "program")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_captured_graph_catches_each_kinds_faults(kind):
    _exercise(kind, "graph")
