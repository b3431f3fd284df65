"""recover() and reanalyze() while other threads infer: every verified result stays fault-free."""

from __future__ import annotations

import threading
import time
import traceback

import torch

from save_ros import ProtectConfig, models, protect
from save_ros.core import bits
from save_ros.faults import RandomFlips, Target, inject_weights

MODEL = "cartpole_policy"  # the fastest analysis: reanalyze runs several times here


def test_recover_and_reanalyze_during_concurrent_inferences():
    spec = models.get_spec(MODEL)
    xc, _ = models.dataset(MODEL, "calib")
    xt, _ = models.dataset(MODEL, "test")
    pm = protect(models.load(MODEL), xc[:1], spec.input_range(),
                 ProtectConfig(calibration=xc[:256]))
    xs = [xt[i : i + 1] for i in range(32)]
    clean = [pm.infer(x).output for x in xs]  # fault-free, verified, batch 1
    golden = {n: bits.int_view(t).clone() for n, t in pm.normal_tensors().items()}
    stop = threading.Event()
    errors: list[str] = []
    counts = {"results": 0, "repaired": 0}

    def worker(k: int) -> None:
        i = k
        try:
            while not stop.is_set():
                r = pm.infer(xs[i % len(xs)], wait=bool(i % 2))
                st = r.status if r.status is not None else r.verdict.result(timeout=30)
                out = st.output if st.output is not None else r.output
                if not st.verified:
                    errors.append(f"unverified: {st.to_dict()}")
                elif not torch.equal(out, clean[i % len(xs)]):
                    errors.append(f"verified but wrong at {i}: {st.to_dict()}")
                counts["results"] += 1
                counts["repaired"] += st.faulty
                i += 2
        except Exception:  # surface thread failures in the main thread
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        for round_ in range(6):
            inject_weights(None, RandomFlips(64), Target(), seed=round_,
                           tensors=pm.normal_tensors())
            time.sleep(0.05)
            rep = pm.recover()
            assert isinstance(rep.elements, dict)
            if round_ % 3 == 2:
                pm.reanalyze()  # traces a copy while the workers keep inferring
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    pm.recover()
    for n, t in pm.normal_tensors().items():
        if n in golden:
            assert torch.equal(bits.int_view(t), golden[n]), n
    assert not errors, errors[:3]
    assert counts["results"] > 20 and counts["repaired"] > 0
    assert pm.stats()["inferences"] >= counts["results"]
    pm.close()
