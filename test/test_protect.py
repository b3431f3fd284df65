"""protect(): verified outputs equal the fault-free ones under weight and activation flips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from save_ros import ProtectConfig, ProtectedModel, models, protect
from save_ros.core import bits
from save_ros.core.inputs import InputError
from save_ros.core.instrument import UnsupportedModelError
from save_ros.faults import (
    ActivationFaults,
    BitFault,
    RandomFlips,
    Target,
    activation_sites,
    inject_weights,
)

MODEL = "digits_cnn"


def _int_views(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: bits.int_view(t.detach()).clone() for n, t in model.state_dict().items()
            if t.dtype in bits.LAYOUTS and t.is_floating_point()}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    xt, yt = models.dataset(MODEL, "test")
    ref = models.load(MODEL)
    with torch.inference_mode():
        clean = ref(xt[:16])
    model = models.load(MODEL)
    pm = protect(model, xc[:1], spec.input_range(), ProtectConfig(calibration=xc))
    yield pm, ref, xt, clean
    pm.close()


def test_fault_free_output_is_bit_exact_and_verified(setup):
    pm, _, xt, clean = setup
    r = pm.infer(xt[:16])
    assert r.status.verified and not r.status.faulty
    assert torch.equal(r.output, clean)


@pytest.mark.parametrize("bit", [31, 30, 29, 23, 22, 3])
def test_single_weight_flip_is_repaired_bit_exactly(setup, bit):
    pm, ref, xt, clean = setup
    w = pm.normal_tensors()["conv2.weight"]
    bits.flip_(w, 123, bit)
    r = pm.infer(xt[:16])
    assert r.status.verified
    assert torch.equal(r.output, clean)
    assert "conv2.weight" in r.status.repaired
    assert any(d.check == "weights" and d.tensor == "conv2.weight" for d in r.status.detections)
    assert all(torch.equal(a, b) for a, b in
               zip(_int_views(pm.model).values(), _int_views(ref).values(), strict=True))


def test_nan_weight_is_repaired(setup):
    pm, ref, xt, clean = setup
    w = pm.normal_tensors()["fc1.weight"]
    for b in range(23, 31):  # exponent all ones + non-zero mantissa: NaN
        bits.set_bit_(w, 7, b, 1)
    bits.set_bit_(w, 7, 0, 1)
    assert torch.isnan(w.reshape(-1)[7])
    r = pm.infer(xt[:16])
    assert r.status.verified and torch.equal(r.output, clean)
    assert torch.equal(bits.int_view(w), bits.int_view(ref.fc1.weight.detach()))


def test_thousands_of_weight_flips_are_repaired(setup):
    pm, ref, xt, clean = setup
    log = inject_weights(pm.model, RandomFlips(4096), Target(), seed=3,
                         tensors=pm.normal_tensors())
    assert len(log.records) == 4096
    r = pm.infer(xt[:16])
    assert r.status.verified and torch.equal(r.output, clean)
    for name, v in _int_views(ref).items():
        assert torch.equal(_int_views(pm.model)[name], v), name


def test_checksummed_weights_leave_the_reliable_pool_to_activations(setup):
    pm, _, _, _ = setup  # weights checksummed before every verdict (the default)
    assert not pm.placement.reliable_of("weight")
    assert pm.placement.reliable_of("activation")


def test_reliable_tensors_are_never_injected():
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    ref = models.load(MODEL)
    # weights checked every 2nd inference: a weight flip may go unseen once, so the
    # reliable pool is worth spending on the most vulnerable weights
    pm = protect(models.load(MODEL), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc, weight_check_interval=2))
    reliable_w = pm.placement.reliable_of("weight")
    assert reliable_w, "the default budget should hold some weights"
    before = {n: bits.int_view(t.detach()).clone() for n, t in pm.model.named_parameters()}
    log = inject_weights(pm.model, RandomFlips(4096), Target(exclude=frozenset(reliable_w)),
                         seed=5)
    hit = {r.tensor for r in log.records}
    assert not hit & set(reliable_w)
    for n in reliable_w:
        assert torch.equal(bits.int_view(dict(pm.model.named_parameters())[n].detach()),
                           before[n])
    pm.recover()
    assert all(torch.equal(a, b) for a, b in
               zip(_int_views(pm.model).values(), _int_views(ref).values(), strict=True))
    pm.close()


def test_activation_flips_detected_and_rerun_bit_exact(setup):
    pm, _, xt, clean = setup
    x = xt[:16]
    normal_sites = [s for s in activation_sites(pm.model, x)
                    if s.name not in pm.reliable_activation_sites()]
    assert normal_sites
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        faults = RandomFlips(8, bits=(23, 24, 25, 26, 27, 28, 29, 30, 31)).sample(
            normal_sites, gen)
        with ActivationFaults(pm.model, faults) as af:
            r = pm.infer(x)
        assert af.records
        changed = any(rec.changed for rec in af.records)
        assert r.status.verified
        assert torch.equal(r.output, clean)
        if changed:
            assert r.status.faulty and r.status.rerun_from is not None


def test_activation_flip_in_unchecked_low_mantissa_stays_within_tolerance(setup):
    pm, _, xt, clean = setup
    site = next(s for s in activation_sites(pm.model, xt[:16])
                if s.name not in pm.reliable_activation_sites())
    with ActivationFaults(pm.model, [BitFault(site.name, 5, 0)]):
        r = pm.infer(xt[:16])
    assert r.status.verified
    torch.testing.assert_close(r.output, clean, rtol=1e-5, atol=1e-5)


def test_input_out_of_range_is_an_input_error_not_a_fault(setup):
    pm, _, xt, _ = setup
    x = xt[:2].clone()
    x[0, 0, 0, 0] = 3.0  # pixels are in [0, 1]
    before = pm.stats()
    with pytest.raises(InputError, match=r"outside its declared box: element 0 is 3") as err:
        pm.infer(x)
    assert err.value.kind == "out_of_range"
    after = pm.stats()
    assert after["rejected_inputs"] == before["rejected_inputs"] + 1
    assert after["faulty"] == before["faulty"] and after["inferences"] == before["inferences"]


def test_wait_false_returns_at_once_with_a_future(setup):
    pm, _, xt, clean = setup
    results = [pm.infer(xt[:16], wait=False) for _ in range(5)]
    for r in results:
        assert r.status is None
        st = r.verdict.result(timeout=10)
        assert st.verified and torch.equal(r.output, clean)


def test_external_verifier_runs_only_when_driven():
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    xt, _ = models.dataset(MODEL, "test")
    ref = models.load(MODEL)
    with torch.inference_mode():
        clean = ref(xt[:4])
    pm = protect(models.load(MODEL), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc[:64], verifier="external"))
    try:
        r = pm.infer(xt[:4], wait=False)
        assert not r.verdict.done() and pm.pending_checks() == 1
        bits.flip_(pm.normal_tensors()["fc1.weight"], 0, 30)
        assert pm.run_pending_checks(timeout=5.0) == 1
        st = r.verdict.result(timeout=0)
        assert st.faulty and st.verified and torch.equal(st.output, clean)
        r2 = pm.infer(xt[:4], wait=True)  # the waiting caller drives its own checks
        assert r2.status.verified and torch.equal(r2.output, clean)
    finally:
        pm.close()


def test_thread_verifier_refuses_external_driving(setup):
    pm, _, _, _ = setup
    assert isinstance(pm, ProtectedModel)
    with pytest.raises(RuntimeError, match="external"):
        pm.run_pending_checks(0.0)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_model_says_why():
    from save_ros.core.analysis import Analysis

    empty = Analysis(key="", capture="hooks", layers=[], tensors={})
    with pytest.warns(UserWarning), pytest.raises(UnsupportedModelError, match="control flow|"
                                                  "TraceError|symbolically traced"):
        protect(_Branchy(), torch.zeros(1, 4), (-1.0, 1.0), ProtectConfig(analysis=empty))


def test_bad_input_range_raises_clear_error():
    with pytest.raises(ValueError, match="input_range"):
        protect(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2), 5.0)


def test_a_cancelling_pair_is_repaired_once_any_flip_shows(setup):
    pm, ref, xt, clean = setup
    w = pm.normal_tensors()["fc1.weight"]
    iv = bits.int_view(w).view(-1)
    j = next(k for k in range(2, 64, 2) if (int(iv[k]) >> 5) & 1 != (int(iv[0]) >> 5) & 1)
    bits.flip_(w, [0, j], 5)  # cancels in its chunk's sum
    bits.flip_(pm.normal_tensors()["conv2.weight"], 9, 27)  # a visible flip elsewhere
    r = pm.infer(xt[:16])
    assert r.status.verified and torch.equal(r.output, clean)
    assert r.status.repaired.get("fc1.weight") == 2
    assert torch.equal(iv, bits.int_view(ref.fc1.weight.detach()).view(-1))


def test_min_vulnerable_share_trades_redundancy_for_range_checks():
    name = "cartpole_policy"
    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    kinds = {}
    for share in (0.0, 1.0):
        pm = protect(models.load(name), xc[:1], spec.input_range(),
                     ProtectConfig(calibration=xc[:128], reliable_budget_bytes=0,
                                   min_vulnerable_share=share, memory_checksums=False))
        kinds[share] = {c["check"] for c in pm.checks()}
        r = pm.infer(xc[:8])
        assert r.status.verified and not r.status.faulty  # range checks: no false alarm
        pm.close()
    assert "dmr" in kinds[0.0] and "range" not in kinds[0.0]
    assert "range" in kinds[1.0] and "dmr" not in kinds[1.0]


def test_weight_check_schedules_every_n_and_time_budget():
    name = "cartpole_policy"
    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    pm = protect(models.load(name), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc[:128], weight_check_interval=3))
    assert [pm.infer(xc[:1]).status.weights_checked for _ in range(6)] == [True, False, False] * 2
    pm.close()
    pm = protect(models.load(name), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc[:128], weight_check_budget_s=1e-9))
    assert pm._chunks_per_job == 1  # the smallest window: one chunk per inference
    w = pm.normal_tensors()["fc2.weight"]
    bits.flip_(w, w.numel() - 1, 30)
    seen = [pm.infer(xc[:1]).status for _ in range(pm._store.n_chunks())]
    assert sum(st.faulty for st in seen) >= 1  # the rotating window reaches the flip
    assert all(st.verified for st in seen[-1:])
    pm.close()


def test_a_bad_cuda_backend_is_refused_with_the_choices():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match="'graph' or 'generic'"):
        protect(net, torch.rand(1, 4), (0.0, 1.0), ProtectConfig(cuda_backend="tpu"))
