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


# ---- the kind objects themselves ---------------------------------------------------------------
def test_every_check_kind_has_its_kind_object():
    """Registry completeness: a new CheckKind member fails here until it has a kind object."""
    from save_ros.core.verify.checks import CheckKind
    from save_ros.core.verify.kinds import KINDS as OBJECTS
    from save_ros.core.verify.kinds import Kind, kind_of

    assert list(OBJECTS) == list(CheckKind)
    for member, obj in OBJECTS.items():
        assert isinstance(obj, Kind) and obj.kind is member and obj.name == member.value
        assert kind_of(member) is obj and kind_of(member.value) is obj
        for text in (obj.verifies, obj.failure, obj.covers, obj.on_device):
            assert isinstance(text, str) and text, (member, text)
        assert obj.describe_failure("x") == f"{obj.failure}: x"


def test_a_kind_without_its_object_is_a_clear_error():
    from save_ros.core.verify.checks import CheckKind
    from save_ros.core.verify.kinds import UnknownKindError, kind_of
    from save_ros.core.verify.kinds.base import REGISTRY

    obj = REGISTRY.pop(CheckKind.ABFT)
    try:
        with pytest.raises(UnknownKindError, match="'abft' has no kind object"):
            kind_of(CheckKind.ABFT)
    finally:
        REGISTRY[CheckKind.ABFT] = obj


def test_every_layer_kind_has_its_fault_cases_here():
    """Each kind a layer can be given (besides none) is exercised above and below."""
    from save_ros.core.verify.kinds import FORCE_KINDS
    from save_ros.core.verify.kinds import KINDS as OBJECTS

    layer_kinds = {k.name for k in OBJECTS.values() if k.forceable and k.name != "none"}
    assert set(KINDS) == layer_kinds
    assert set(FORCE_KINDS) == {"auto", "none", *layer_kinds}


def _flipped(v: torch.Tensor, bit: int = 30) -> torch.Tensor:
    w = v.clone()
    bits.flip_(w, 1, bit)
    return w


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_object_checks_its_own_faults(kind, device):
    """A kind's eager check and its device check (per layer and batched) pass clean values and
    fail on a flip in the checked output, layer by layer; the batch names the layer."""
    from save_ros.core.verify.kinds import KINDS as OBJECTS
    from save_ros.core.verify.kinds import kind_of
    from save_ros.core.verify.kinds.base import EagerRun
    from save_ros.core.verify.memsum import bitsum
    from save_ros.core.verify.status import FaultStatus

    pm, x, _ = _protect(kind, "cpu" if device == "cpu" else "graph")
    try:
        inst, plan = pm._inst, pm._plan
        obj = next(o for o in OBJECTS.values() if o.name == kind)
        mine = [c for c in plan.checks if kind_of(c) is obj]
        assert mine, plan.by_kind()
        with torch.inference_mode():
            _, clean = inst.forward(x)
            clean = list(clean)
            for c in mine:
                bad = list(clean)
                bad[c.index] = _flipped(clean[c.index])
                assert obj.describe_check(c).startswith(f"{c.name}: {kind}")
                if kind == "checksum":  # the write sums of the clean values, read after the flip
                    w = torch.stack([bitsum(clean[s.index]) for s in plan.checksummed])
                    r = torch.stack([bitsum(bad[s.index]) for s in plan.checksummed])
                    ok = EagerRun(plan, clean, 0, True, FaultStatus(0), inst, (w, w.clone()))
                    hit = EagerRun(plan, bad, 0, True, FaultStatus(0), inst, (w, r))
                    assert obj.eager_batch(ok) == [] and obj.eager_check(c, ok) is None
                    (i, d), = obj.eager_batch(hit)
                    assert i == c.index and d.check == "checksum" and d.layer == c.name
                    assert obj.eager_check(c, hit) == (i, d)
                    sums = obj.device_sums([c], {c.index: -1})
                    for vals, want in ((clean, False), (bad, True)):
                        sums.start()
                        sums.after(c.index, clean, None, None, [])  # written clean
                        flag = sums.flag(vals, None, None, [], torch.zeros((), dtype=torch.bool))
                        assert bool(flag) is want and sums.failures() == ([c.name] if want
                                                                          else [])
                    continue
                ok = EagerRun(plan, clean, 0, True, FaultStatus(0), inst)
                hit = EagerRun(plan, bad, 0, True, FaultStatus(0), inst)
                assert obj.eager_check(c, ok) is None
                fail = obj.eager_check(c, hit)
                assert fail is not None and fail[1].check == kind and fail[1].layer == c.name
                assert not bool(obj.device_check(c, clean, inst))
                assert bool(obj.device_check(c, bad, inst))
                part = obj.device_batch([c], clean, x.device)
                if part is not None:  # range, exact DMR: a group's flag, and who raised it
                    assert not bool(part.launch(clean, []))
                    assert bool(part.launch(bad, [])) and part.localize(bad) == [c.name]
    finally:
        pm.close()


def test_device_flags_read_back_as_their_kind():
    """A raised flag of the CUDA program (eager here) is a Slot whose kind describes it."""
    from save_ros.core.verify.kinds import KINDS as OBJECTS

    pm, x, _ = _protect("range", "program")
    try:
        cap = pm._program((x,))
        prog = cap.program
        assert all(s.kind in OBJECTS.values() for s in prog.slots)
        site = _sites_of(pm, "range")[0]
        prog.arm(site, 1, 30)
        _, vals = cap.run((x,), True)
        raised = prog.failed_slots()
        assert raised and {s.kind.name for s in raised} == {"range"}
        for s in raised:
            d = s.detection()
            assert d.check == "range" and d.detail.startswith(s.kind.failure)
        assert site in prog.localize(raised, vals)
    finally:
        pm.close()


@pytest.mark.parametrize("device", DEVICES)
def test_the_weights_and_input_kinds_check_their_own_faults(device):
    """The program-wide kinds: the weight chunk sums (device flag, and the eager check that
    restores) and the input box (NaN and a value outside it; an open box lets Inf in)."""
    from save_ros.core.verify.kinds import INPUT, WEIGHTS
    from save_ros.core.verify.status import FaultStatus

    pm, x, _ = _protect("checksum", "cpu" if device == "cpu" else "graph")
    try:
        store, plan = pm._store, pm._plan
        assert not any(bool(WEIGHTS.device_flag(g)[0]) for g in store.groups)
        bits.flip_(pm.normal_tensors()["fc.weight"], 3, 30)
        assert any(bool(WEIGHTS.device_flag(g)[0]) for g in store.groups)
        st = FaultStatus(0)
        fails = WEIGHTS.eager_store(store, pm._editor, plan, pm._inst, (0, None), st)
        assert [(d.check, d.tensor) for _, d in fails] == [("weights", "fc.weight")]
        assert st.repaired == {"fc.weight": 1} and not store.check()
        false = torch.zeros((), dtype=torch.bool, device=x.device)
        box = INPUT.device_inputs(pm._inputs.bounds(x.device), (x,), x.device)
        assert not bool(box.flag((x,), false))
        for bad in (float("nan"), 1.5, -0.5):
            y = x.clone()
            y[0, 0, 0, 0] = bad
            assert bool(box.flag((y,), false)), bad
        inf = x.clone()
        inf[0, 0, 0, 0] = float("inf")
        open_box = INPUT.device_inputs([(torch.tensor(0.0), torch.tensor(float("inf")))], (x,),
                                       x.device)
        assert bool(open_box.flag((inf,), false)) and not bool(open_box.flag((x,), false))
    finally:
        pm.close()
