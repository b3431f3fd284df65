"""Chained DMR (`ProtectConfig.chain_dmr`) and the direct-op re-computation: same verified bits."""

from __future__ import annotations

import pytest
import torch

from save_ros import ProtectConfig, models, protect
from save_ros.core.verify.checks import CheckKind
from save_ros.faults import ActivationFaults, BitFault, RandomFlips, activation_sites

MODEL = "digits_cnn"


@pytest.fixture(scope="module")
def chained():
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    xt, _ = models.dataset(MODEL, "test")
    ref = models.load(MODEL)
    with torch.inference_mode():
        clean = ref(xt[:16])
    pm = protect(models.load(MODEL), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc, chain_dmr=True, memory_checksums=False))
    yield pm, xt, clean
    pm.close()


def test_chain_merges_single_reader_dmr_layers_and_keeps_every_layer_planned(chained):
    pm, _, _ = chained
    rt = pm._plan
    tails = [c for c in rt.redundant if c.head is not None]
    assert tails, pm.summary()
    for t in tails:
        assert len(t.members) >= 2 and t.members[-1] == t.index and t.head == t.members[0]
        # every member still has its DMR in the plan (coverage report unchanged)
        kinds = {c.index: c.kind for c in rt.checks}
        assert all(kinds[j] is CheckKind.DMR for j in t.members)
    plain = protect(models.load(MODEL), models.dataset(MODEL, "calib")[0][:1],
                    models.get_spec(MODEL).input_range(),
                    ProtectConfig(calibration=models.dataset(MODEL, "calib")[0],
                                  memory_checksums=False))
    try:
        assert plain._plan.by_kind() == rt.by_kind()
        assert len(rt.redundant) < len(plain._plan.redundant)
    finally:
        plain.close()


def test_chain_fault_free_verified_bit_exact(chained):
    pm, xt, clean = chained
    r = pm.infer(xt[:16])
    assert r.status.verified and not r.status.faulty
    assert torch.equal(r.output, clean)


def test_chain_flip_in_inner_layer_detected_and_rerun_from_segment_start(chained):
    pm, xt, clean = chained
    tail = next(c for c in pm._plan.redundant if c.head is not None)
    inner = pm._inst.node_of(tail.head)
    assert inner.op == "call_module"
    x = xt[:16]
    with torch.inference_mode():
        _, values = pm._inst.forward(x)
    out = values[tail.head].reshape(-1)
    j = int(out.argmax())  # a positive value: an exponent flip reaches the segment's output
    with ActivationFaults(pm.model, [BitFault(str(inner.target), j, 30)]) as af:
        r = pm.infer(x)
    assert af.records and af.records[0].changed
    assert r.status.faulty and r.status.verified
    assert r.status.rerun_from == inner.name
    assert torch.equal(r.output, clean)


def test_chain_random_activation_flips_never_change_a_verified_output(chained):
    pm, xt, clean = chained
    x = xt[:16]
    sites = [s for s in activation_sites(pm.model, x)
             if s.name not in pm.reliable_activation_sites()]
    gen = torch.Generator().manual_seed(3)
    for _ in range(8):
        faults = RandomFlips(8, bits=tuple(range(20, 32))).sample(sites, gen)
        with ActivationFaults(pm.model, faults):
            r = pm.infer(x)
        assert r.status.verified
        assert torch.equal(r.output, clean)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet", "digits_vit", "cartpole_policy"])
def test_direct_op_recompute_is_bit_exact_for_every_layer(name):
    from save_ros.core.graph import capture
    from save_ros.core.instrument import Instrumented, _direct

    model = models.load(name)
    x = models.dataset(name, "test")[0][:4]
    inst = Instrumented(capture(model, x[:1]))
    assert any(_direct(m) is not None for m in model.modules())
    with torch.inference_mode():
        out, values = inst.forward(x)
        assert torch.equal(out, model(x))
        for i in inst.layer_indices:
            again = inst.recomputer(i)(values)
            if isinstance(values[i], torch.Tensor):
                assert torch.equal(again, values[i]), inst.names[i]


def test_edit_gives_up_on_weights_that_keep_changing_within_the_settle_time():
    spec = models.get_spec("cartpole_policy")
    xc, _ = models.dataset("cartpole_policy", "calib")
    pm = protect(models.load("cartpole_policy"), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc))
    name = next(iter(pm.normal_tensors()))
    w = pm.normal_tensors()[name]
    editor = pm._editor
    real_restore = editor.restore

    def rewrite_then_restore(chunks):
        # a writer that never stops: every check after a restore finds the weight changed
        rep = real_restore(chunks)
        w.view(torch.int32).view(-1)[0] ^= 1 << 30
        return rep

    editor.restore = rewrite_then_restore
    w.view(torch.int32).view(-1)[0] ^= 1 << 30
    try:
        r = pm.infer(xc[:1])  # returns: Edit gives up on a writer that never stops
        assert r.status.faulty and not r.status.verified
        assert r.status.error and "persist" in r.status.error
        assert len(r.status.notes) >= pm.config.max_reruns
    finally:
        editor.restore = real_restore
        pm.recover()
        pm.close()
