"""The promises of protect() that issue 19's mutation check found unguarded, with injected faults.

- A range check catches an activation flip that leaves its range (no DMR is planned here: a
  range check that never fails lets the flip through as a verified, wrong result).
- The input box flags an input that a bit flip pushed outside it (or to NaN): not verified,
  not counted as a hardware fault.
"""

from __future__ import annotations

import pytest
import torch

from save_ros import InputError, ProtectConfig, models, protect
from save_ros.core import bits
from save_ros.faults import ActivationFaults, BitFault, activation_sites

MODEL = "cartpole_policy"


@pytest.fixture(scope="module")
def ranged():
    """cartpole_policy with range checks only (min_vulnerable_share=1: no DMR) and nothing in
    reliable memory."""
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    pm = protect(models.load(MODEL), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc[:128], reliable_budget_bytes=0,
                               min_vulnerable_share=1.0, memory_checksums=False))
    yield pm, xc
    pm.close()


def test_a_range_check_catches_an_activation_flip_and_edit_repairs_it(ranged):
    pm, xc = ranged
    kinds = {c["layer"]: c["check"] for c in pm.checks()}
    assert "range" in kinds.values() and "dmr" not in kinds.values()
    x = xc[:4]
    clean = pm.infer(x).output
    sites = [s for s in activation_sites(pm.model, x)
             if kinds.get(s.name.replace(".", "_")) == "range"]
    assert sites, kinds
    caught = 0
    for site in sites:
        with torch.inference_mode():
            ref = dict(pm.model.named_modules())[site.name](*_inputs_of(pm, site.name, x))
        # |v| in (0.01, 2): its exponent's top bit is 0, and setting it multiplies v by 2^128
        a = ref.abs().reshape(-1)
        fit = ((a > 1e-2) & (a < 2.0)).nonzero()
        if not len(fit):
            continue
        flat = int(fit[0])
        with ActivationFaults(pm.model, [BitFault(site.name, flat, 30)]) as af:
            r = pm.infer(x)
        assert any(rec.changed for rec in af.records), site.name
        assert r.status.faulty, f"{site.name}: the flip went unnoticed"
        assert r.status.detections[0].check == "range", r.status.to_dict()
        assert r.status.verified and torch.equal(r.output, clean), site.name
        caught += 1
    assert caught >= 2, sites


def _inputs_of(pm, name: str, x: torch.Tensor) -> tuple[torch.Tensor]:
    """The input the module `name` sees for x (a forward hook records it)."""
    seen: list[tuple] = []
    module = dict(pm.model.named_modules())[name]
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args))
    try:
        with torch.inference_mode():
            pm.model(x)
    finally:
        handle.remove()
    return seen[0]


# the exponent's top bit (the value grows by 2^128), or every exponent bit (a NaN)
@pytest.mark.parametrize("mask", [1 << 30, 0xFF << 23], ids=["exponent", "nan"])
def test_an_input_flipped_out_of_the_box_is_refused_not_verified_not_a_fault(ranged, mask):
    """infer() refuses an input outside its box (InputError, before the model runs): never a
    verified result, never counted as a fault."""
    pm, xc = ranged
    x = xc[:2].clone()
    iv = bits.int_view(x).view(-1)
    k = int((x.reshape(-1).abs() > 0.05).nonzero()[0])
    iv[k] ^= mask
    faulty = pm.stats()["faulty"]
    with pytest.raises(InputError, match="nonfinite|NaN|outside its declared box"):
        pm.infer(x)
    assert pm.stats()["faulty"] == faulty and pm.stats()["rejected_inputs"] >= 1
    iv[k] ^= mask  # the same input, unflipped: verified
    r = pm.infer(x)
    assert r.status.verified and not r.status.input_out_of_range
