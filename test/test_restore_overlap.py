"""An inference that overlaps a weight restore: a clean restore is no fault, a real one re-runs.

Issue 19: clean `~/recover` and `~/reanalyze` calls were counted as hardware faults ("restored
while this inference ran") when an inference began while the restore was writing, although a
clean restore writes nothing. The overlap is made here deterministically: the checks run
(`verifier="external"`) only after the restore.
"""

from __future__ import annotations

import torch

from save_ros import ProtectConfig, models, protect
from save_ros.core import bits

MODEL = "digits_cnn"


def _protected():
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    xt, _ = models.dataset(MODEL, "test")
    pm = protect(models.load(MODEL), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc[:64], verifier="external"))
    return pm, xt[:1]


def test_inference_begun_during_a_clean_restore_is_verified_not_faulty():
    pm, x = _protected()
    clean = pm.infer(x, wait=False)
    pm.run_pending_checks(5.0)
    # an inference that starts while a restore is writing (odd repair epoch) ...
    pm._editor.epoch += 1
    r = pm.infer(x, wait=False)
    pm._editor.epoch += 1  # ... and the restore ends having changed nothing
    pm.recover()  # and a clean recover before its checks run
    pm.reanalyze()  # and a clean re-analysis
    pm.run_pending_checks(5.0)
    st = r.verdict.result(timeout=5)
    assert st.verified and not st.detections and not st.repaired, st.to_dict()
    assert st.restore_overlap == "verified"
    assert torch.equal(r.output, clean.output)
    assert pm.stats()["faulty"] == 0
    pm.close()


def test_inference_whose_weights_were_restored_under_it_is_rerun():
    pm, x = _protected()
    clean = pm.infer(x, wait=True).output
    for _name, w in reversed(pm.normal_tensors().items()):  # a flip that changes the output
        bits.int_view(w).view(-1)[0] ^= 1 << 30  # an exponent flip
        r = pm.infer(x, wait=False)  # computes with it
        if not torch.equal(r.output, clean):
            break
        bits.int_view(w).view(-1)[0] ^= 1 << 30
        pm.run_pending_checks(5.0)
    assert not torch.equal(r.output, clean)
    rep = pm.recover()  # restores the flip before the checks of that inference run
    assert _name in rep.tensors
    pm.run_pending_checks(5.0)
    st = r.verdict.result(timeout=5)
    assert st.restore_overlap == "rerun"
    assert st.verified and st.output is not None and torch.equal(st.output, clean)
    pm.close()
