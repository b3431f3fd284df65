"""Every reference model under protect(): zero false alarms on its test set, outputs unchanged."""

from __future__ import annotations

import pytest
import torch

from save_ros import ProtectConfig, models, protect

FAST = ["digits_cnn", "cartpole_policy"]
SLOW = ["digits_resnet", "digits_vit"]  # their analysis alone takes ~10 s each


def _fault_free_run(name: str, limit: int) -> None:
    torch.manual_seed(0)
    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    xt, _ = models.dataset(name, "test")
    xt = xt[:limit]
    ref = models.load(name)
    pm = protect(models.load(name), xc[:1], spec.input_range(), ProtectConfig(calibration=xc))
    try:
        results = [pm.infer(xt[i : i + 1], wait=False) for i in range(len(xt))]
        statuses = [r.verdict.result(timeout=60) for r in results]
        alarms = [s.to_dict() for s in statuses if s.faulty]
        assert not alarms, alarms[:2]
        assert all(s.verified for s in statuses)
        with torch.inference_mode():
            for i, r in enumerate(results):
                assert torch.equal(r.output, ref(xt[i : i + 1])), i
        assert pm.stats()["inferences"] == len(xt)
        for c in pm.checks():  # every layer is checked, or says why it needs no check
            assert c["check"] != "none" or c["reason"], c
    finally:
        pm.close()


@pytest.mark.parametrize("name", FAST)
def test_no_false_alarms_on_the_test_set(name):
    _fault_free_run(name, limit=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_no_false_alarms_on_the_test_set_large_models(name):
    _fault_free_run(name, limit=10_000)
