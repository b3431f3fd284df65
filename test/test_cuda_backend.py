"""The CUDA backend of protect(): its check program and contract.

On a CPU the same class runs its program eagerly (no graph, no streams), which tests the logic:
flags, the fast and slow paths, activation fault sites, repair. The `cuda` tests run the graph
on a real GPU (skipped with the reason elsewhere)."""

from __future__ import annotations

import pytest
import torch

from save_ros import models
from save_ros.core import bits
from save_ros.core.cuda import cuda_available
from save_ros.core.cuda.runtime import CudaConfigError, CudaProtectedModel
from save_ros.core.inputs import InputError
from save_ros.core.protect import ProtectConfig, protect
from save_ros.core.select import SelectConfig, analyze

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device (GPU host)")


@pytest.fixture(scope="module")
def digits():
    x, _ = models.dataset("digits_resnet", "test")
    calib, _ = models.dataset("digits_resnet", "calib")
    calib = torch.cat([calib, x[:8]])  # no benign range excursion on the inputs used here
    net = models.load("digits_resnet")
    # a short sensitivity pass: these tests are about the runtime, not the attribution
    return net, x[:8], calib, analyze(net, x[:8], (0.0, 1.0), calib,
                                      config=SelectConfig(sens_samples=8))


def _eager(digits, **kw):
    net, x, calib, a = digits
    net = models.load("digits_resnet")
    ref = net(x).detach()
    pm = CudaProtectedModel(net, x, (0.0, 1.0), ProtectConfig(calibration=calib, **kw), a,
                            use_graph=False, fault_sites=True)
    return pm, x, ref


def test_clean_inference_is_verified_on_the_fast_path_and_bit_exact(digits):
    pm, x, ref = _eager(digits)
    r = pm.infer(x)
    assert r.verified and torch.equal(r.output, ref)
    assert pm.device_alarms == 0 and r.status.checks_run > 0 and r.status.weights_checked
    r2 = pm.infer(x, wait=False)
    assert r2.verdict.result().verified  # the fast path resolves the future at once


def test_a_weight_flip_raises_a_flag_and_is_repaired_bit_exact(digits):
    pm, x, ref = _eager(digits)
    w = pm.normal_tensors()
    name = "layer1.conv1.weight" if "layer1.conv1.weight" in w else sorted(w)[0]
    before = w[name].clone()
    bits.flip_(w[name], 3, 30)
    r = pm.infer(x)
    assert pm.device_alarms == 1
    assert r.verified and r.status.repaired == {name: 1}
    assert torch.equal(w[name], before) and torch.equal(r.output, ref)
    assert not torch.equal(pm.last_raw_output, ref)  # the unprotected output was wrong


def test_activation_fault_sites_include_functional_ops_and_fire_once(digits):
    pm, x, ref = _eager(digits)
    sites = pm.activation_sites()
    adds = [s for s in sites if s.startswith("add")]
    assert adds, sites  # the residual adds of the ResNet are sites, not only modules
    pm.arm_activation_fault(adds[0], 0, 30)
    r = pm.infer(x)
    assert r.status.detections and r.verified and torch.equal(r.output, ref)
    raw = pm.last_raw_output
    assert not torch.equal(raw, ref)  # the flip happened inside the program
    r = pm.infer(x)  # disarmed: clean again, on the fast path
    assert r.verified and not r.status.detections and torch.equal(r.output, ref)


def test_site_flips_of_a_high_exponent_bit_never_give_a_wrong_verified_result(digits):
    pm, x, ref = _eager(digits)
    sdc = detected = 0
    sites = pm.activation_sites()
    for k, (name, numel) in enumerate(sites.items()):
        pm.arm_activation_fault(name, (k * 37) % numel, 30)
        r = pm.infer(x)
        detected += bool(r.status.detections)
        changed = not torch.equal(pm.last_raw_output.argmax(1), ref.argmax(1))
        assert r.status.detections or not changed, name  # undetected only when harmless
        sdc += r.verified and not torch.equal(r.output.argmax(1), ref.argmax(1))
    assert sdc == 0 and detected > len(sites) // 2


def test_an_input_outside_the_box_is_an_input_error_from_the_device_flag(digits):
    pm, x, ref = _eager(digits)
    bad = x.clone()
    bad[1, 0, 2, 3] = float("nan")
    for wrong, kind in ((x * 3.0, "out_of_range"), (bad, "nonfinite")):
        with pytest.raises(InputError) as err:
            pm.infer(wrong)
        assert err.value.kind == kind
    st = pm.stats()
    assert st["rejected_inputs"] == 2 and st["faulty"] == 0 and st["inferences"] == 0
    with pytest.raises(InputError, match="expected 'x'"):
        pm.infer(x[:, :, :4])  # another spatial size: refused, not verified
    r = pm.infer(x)  # the gate was released: the next inference runs
    assert r.verified and torch.equal(r.output, ref)


def test_rotating_weight_checks_are_refused_with_a_reason(digits):
    with pytest.raises(CudaConfigError, match="weight_check_budget_s"):
        _eager(digits, weight_check_budget_s=1e-4)


def test_weight_check_interval_skips_the_checksum_on_other_inferences(digits):
    pm, x, _ = _eager(digits, weight_check_interval=2)
    assert pm.infer(x).status.weights_checked
    assert not pm.infer(x).status.weights_checked


def test_the_model_and_the_input_must_share_a_device():
    net = models.load("digits_cnn")
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="device"):
        protect(net, x.to("meta"), (0.0, 1.0))


@needs_cuda
@pytest.mark.cuda
def test_protect_on_cuda_returns_the_graph_backend_with_the_cpu_contract():
    net = models.load("digits_resnet").cuda()
    x, _ = models.dataset("digits_resnet", "test")
    calib, _ = models.dataset("digits_resnet", "calib")
    x = x[:8].cuda()
    ref = net(x).detach()
    pm = protect(net, x, (0.0, 1.0), ProtectConfig(calibration=calib.cuda(),
                                                   verifier="external"), fault_sites=True)
    assert isinstance(pm, CudaProtectedModel) and pm.use_graph
    r = pm.infer(x)
    assert r.verified and torch.allclose(r.output, ref, rtol=1e-4, atol=1e-5)
    golden = r.output.clone()
    for _ in range(20):
        assert torch.equal(pm.infer(x).output, golden)  # graph replays are deterministic
    w = pm.normal_tensors()
    name = sorted(w)[2]
    bits.flip_(w[name], 1, 30)
    r = pm.infer(x, wait=False)
    pm.run_pending_checks(5.0)
    st = r.verdict.result(10)
    assert st.verified and name in st.repaired and torch.equal(pm.infer(x).output, golden)
    for name, numel in pm.activation_sites().items():
        pm.arm_activation_fault(name, numel // 2, 30)
        r = pm.infer(x)
        assert r.status.detections and r.verified and torch.equal(r.output, golden), name
    assert pm.stats()["unrepaired"] == 0
    pm.close()


_ARMED: list[torch.Tensor] = []  # a weight to flip mid-forward, once


def _upset(x: torch.Tensor) -> torch.Tensor:
    """Identity that flips bit 30 of an armed weight (a leaf of the fx graph: fx.wrap)."""
    if _ARMED:
        bits.flip_(_ARMED.pop(), 0, 30)
    return x


torch.fx.wrap("_upset")


class _UpsetNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(_upset(self.a(x))))


def test_a_weight_flip_during_the_forward_is_caught_by_the_checksum_after_it():
    """The checksum ran beside the forward from its start: a flip landing after it read the
    chunk, but before the layer read the weight, gave a wrong result marked verified."""
    torch.manual_seed(0)
    net = _UpsetNet().eval()
    x = torch.rand(64, 4)
    ref = net(x[:1]).detach()
    a = analyze(net, x[:1], (0.0, 1.0), x, config=SelectConfig(sens_samples=4))
    pm = CudaProtectedModel(net, x[:1], (0.0, 1.0), ProtectConfig(calibration=x), a,
                            use_graph=False)
    assert torch.equal(pm.infer(x[:1]).output, ref)
    _ARMED.append(net.b.weight)
    r = pm.infer(x[:1])
    assert not _ARMED  # the flip happened inside the protected forward
    assert r.status.repaired == {"b.weight": 1}
    assert r.verified and torch.equal(r.output, ref)


def test_a_flip_outside_its_channel_but_inside_the_tensor_hull_is_caught():
    """Token tensors (N, T, D) are checked per feature channel, not against the tensor's hull.

    Regression: the device check compared 4096-element chunks with the hull of the channels
    they span, so in a ViT a flip that left its own channel's range (Selection: *ranging*) but
    stayed inside another channel's range passed; on the H100 that was 6-9 SDCs in 10,000
    activation flips into ViT-B/16."""
    x, _ = models.dataset("digits_vit", "test")
    calib, _ = models.dataset("digits_vit", "calib")
    net = models.load("digits_vit")
    a = analyze(net, x[:4], (0.0, 1.0), calib, config=SelectConfig(sens_samples=8))
    # range checks only: with redundancy, DMR would catch these flips whatever the range does
    pm = CudaProtectedModel(net, x[:1], (0.0, 1.0),
                            ProtectConfig(calibration=calib, redundancy_budget=0.0,
                                          memory_checksums=False), a,
                            use_graph=False, fault_sites=True)
    sites = pm.activation_sites()
    _, values = pm._inst.forward(x[:1])
    tried = 0
    for c in pm._plan.range_batch.checks:
        v = values[c.index]
        if c.name not in sites or c.channel_dim != v.dim() - 1 or c.range_low.numel() < 2:
            continue
        lo, hi = c.range_low.float(), c.range_high.float()
        flat = v.reshape(-1, v.shape[-1])
        for e in range(0, flat.numel(), 7):
            t, ch = divmod(e, v.shape[-1])
            for bit in range(22, 31):
                new = float(bits.flipped(flat[t, ch : ch + 1], bit)[0])
                outside_own = not lo[ch] <= new <= hi[ch]
                inside_hull = float(lo.min()) <= new <= float(hi.max())
                if not (outside_own and inside_hull):
                    continue
                pm.arm_activation_fault(c.name, e, bit)
                r = pm.infer(x[:1])
                assert any(d.check == "range" for d in r.status.detections), (c.name, e, bit)
                tried += 1
                break
            if tried >= 12:
                break
        if tried >= 12:
            break
    assert tried >= 4, "no per-channel token check with such a flip: the test tests nothing"


class _Attention(torch.nn.Module):
    """A token model whose attention output comes out of a tuple (`getitem` of a leaf module)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = torch.nn.Linear(16, 32)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.reshape(x.shape[0], 4, 16))
        a = self.attn(t, t, t, need_weights=False)[0]
        return self.head(self.norm(t + a).mean(1))


def test_a_flip_in_a_multi_output_layers_result_is_caught_by_dmr_through_the_layer():
    """Regression: DMR of `getitem(attn_out, 0)` re-computed the getitem, which returns the saved
    tensor itself, so the compare read one memory twice and never differed; the tuple-valued
    attention layer had no check of its own. Flips there were the ViT-B/16 SDCs on the H100."""
    net = _Attention().eval()
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(64, 64, generator=g)
    a = analyze(net, calib[:1], (0.0, 1.0), calib, config=SelectConfig(sens_samples=8))
    pm = CudaProtectedModel(net, calib[:1], (0.0, 1.0),
                            ProtectConfig(calibration=calib, memory_checksums=False), a,
                            use_graph=False, fault_sites=True)
    sites = pm.activation_sites()
    picked = [s for s in sites if s.startswith("getitem")]
    assert picked, sites
    check = next(c for c in pm._plan.checks if c.name == picked[0])
    assert check.kind.value == "dmr" and "re-computed through attn" in check.reason
    x = calib[:1]
    clean = pm.infer(x)
    assert clean.verified and not clean.status.detections
    ref = clean.output
    for e in range(0, sites[picked[0]], 9):
        pm.arm_activation_fault(picked[0], e, 30)
        r = pm.infer(x)
        assert r.status.detections and r.verified and torch.equal(r.output, ref), e
