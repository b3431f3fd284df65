"""SAVE Edit: restore weights from their golden copies and re-run from the first failing layer.

`Editor` owns every write to the weights that is not the user's: `restore()` copies golden bits
back (`weights.WeightStore`) and logs the repair with a sequence number, `stale(epoch)` says which
weights were restored since an inference began (a repair by another thread may have erased the
traces of a flip that inference computed with), and `edit(...)` is the editor loop: restore,
re-run from the first failing layer on the saved values (`Instrumented.run_from`), checksum the
weights the re-run read, re-check the layers it re-computed, until the result passes or
`max_reruns` attempts are spent.

Weight repairs and inferences may overlap (a ROS service calls `recover()` while the node
infers): the sequence number is odd while a repair is writing, so an inference that began then
knows its weights were being changed under it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from save_ros.core.instrument import Instrumented
from save_ros.core.verify.plan import CheckPlan
from save_ros.core.verify.status import Detection, FaultStatus
from save_ros.core.verify.verifier import Job
from save_ros.core.weights import Repair, WeightStore

REWRITE_SETTLE_S = 0.05  # Edit keeps re-running this long while only the weights keep changing

# (plan, values, first layer, input in range, status, weights restored) -> failures
Recheck = Callable[[CheckPlan, Any, int, bool, FaultStatus, frozenset[str]],
                   list[tuple[int, Detection]]]


class Editor:
    """Golden-copy repairs, logged in sequence, and the re-run loop. Thread-safe."""

    def __init__(self, inst: Instrumented, store: WeightStore, max_reruns: int) -> None:
        self.inst = inst
        self.store = store
        self.max_reruns = max_reruns
        self.lock = threading.RLock()  # repairs, re-runs, recover, reanalyze
        self.epoch = 0  # repair sequence number: odd while a repair is writing weights
        self._repairs: collections.deque[tuple[int, list[str]]] = collections.deque(maxlen=512)
        self._log_lock = threading.Lock()  # the repair log alone (stale() reads it)

    def restore(self, chunks: list[tuple[int, int]] | None = None) -> Repair:
        """Restore chunks (all if None) bit-for-bit, logged in the repair sequence."""
        with self.lock:
            self.epoch += 1
            rep = Repair()
            try:
                rep = self.store.restore(chunks)
            finally:  # logged before the epoch turns even: stale() reads the log without self.lock
                if rep.elements:
                    with self._log_lock:
                        self._repairs.append((self.epoch + 1, rep.tensors))
                self.epoch += 1
        return rep

    def stale(self, epoch: int) -> list[str] | None:
        """Weights restored since the repair epoch `epoch` (None: too old to know, assume all).

        Only restores that changed a weight count: a clean `recover()` or the restore that
        begins `reanalyze()` writes nothing (`WeightStore.restore` copies only differing
        elements), so an inference that overlapped it computed with the weights it had and is
        verified as usual, not reported as a fault (issue 19: 13 of 300 clean recovers were).
        """
        if epoch == self.epoch and not epoch % 2:  # no repair began since: the common case
            return []
        if self.epoch % 2:  # a repair is writing now: wait for it, to know what it changed
            with self.lock:
                return self._stale(epoch)
        return self._stale(epoch)  # the editor lock may be held long (reanalyze): not needed

    def _stale(self, epoch: int) -> list[str] | None:
        with self._log_lock:
            if self._repairs and len(self._repairs) == self._repairs.maxlen \
                    and self._repairs[0][0] > epoch:
                return None
            names: list[str] = []
            # a repair that was writing when the inference began (odd epoch) ends at epoch + 1:
            # it is in the log if, and only if, it changed a weight
            for end, tensors in self._repairs:
                if end > epoch:
                    names += [t for t in tensors if t not in names]
            return names

    def first_reader(self, plan: CheckPlan, names: list[str]) -> int:
        """Position of the first layer that reads any of the named weights."""
        return self.inst.first_reader(names, plan.param_readers)

    def edit(self, job: Job, fails: list[tuple[int, Detection]], st: FaultStatus,
             recheck: Recheck) -> Any:
        """Restore weights, re-run from the first failing layer, re-check; the new output."""
        t = time.perf_counter()
        plan: CheckPlan = job.plan
        values, out = job.values, job.output
        in_range = not st.input_out_of_range
        with self.lock:
            # a detection may stem from a weight the schedule did not checksum this time, or
            # from flips that cancel in a chunk sum: compare all weights exactly
            rep = self.restore(None)
            for name, n in rep.elements.items():
                st.repaired[name] = st.repaired.get(name, 0) + n
            k = min(i for i, _ in fails)
            for name in rep.tensors:
                k = min(k, self.first_reader(plan, [name]))
            st.rerun_from = self.inst.names[k]
            attempts, settle = 0, time.perf_counter() + REWRITE_SETTLE_S
            while True:
                with torch.inference_mode():
                    out, values = self.inst.run_from(k, values)
                # no repair can run meanwhile (we hold the lock), but a new upset can: checksum
                # the weights the re-run used before trusting it
                rep = self.restore(None) if self.store.check() else Repair()
                again = [(self.first_reader(plan, [n]),
                          Detection("", n, "weights", "changed during the re-run"))
                         for n in rep.tensors]
                only_new_flips = bool(again)  # before the layer checks join the list
                again += recheck(plan, values, k, in_range, st, frozenset(rep.tensors))
                only_new_flips = only_new_flips and len(again) == len(rep.tensors)
                for name, n in rep.elements.items():
                    st.repaired[name] = st.repaired.get(name, 0) + n
                if not again:
                    st.verified = in_range
                    break
                attempts += 1
                k = min(i for i, _ in again)
                if len(st.notes) < 8:
                    st.notes.append(f"re-run still fails at {self.inst.names[k]}: "
                                    f"{again[0][1].tensor} {again[0][1].detail}")
                # Weights that keep changing while we re-run are a burst of upsets (or a
                # writer) still at work, not a fault that survives repair: each attempt
                # restores them, so keep going a little longer than max_reruns allows
                if attempts >= max(1, self.max_reruns) and not (
                        only_new_flips and time.perf_counter() < settle):
                    st.error = "faults persist after re-runs; result unverified"
                    break
        st.repair_s = time.perf_counter() - t
        return out
