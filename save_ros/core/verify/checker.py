"""The layer checker loop: one inference's checks, on the values it saved, off the hot path.

For one `Job`, `LayerChecker.check` tests the input against the declared box, checksums the
weights the schedule asks for (a failing chunk has every weight compared with its golden copy
and restored), asks the editor which weights another thread restored while the inference ran,
and runs every planned layer check through its kind object (`core.verify.kinds`): the kinds
that compare all their layers at once (memory sums, then ranges), then DMR / ABFT per layer.
It returns the status so far and the failures as (layer position, detection); the
`ProtectedModel` hands failures to Edit, which re-runs and calls `run` again on the layers it
re-computed.

A range excursion whose layer re-computes equal with golden weights is the input's doing, not a
fault (`confirm_range_alarms`): it becomes a note.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from save_ros.core.box import InputBox
from save_ros.core.instrument import Instrumented
from save_ros.core.verify.checks import LayerCheck
from save_ros.core.verify.kinds import EAGER_BATCHES, INPUT, WEIGHTS, kind_of
from save_ros.core.verify.kinds.base import EagerRun
from save_ros.core.verify.kinds.dmr import dmr_mismatch
from save_ros.core.verify.plan import CheckPlan
from save_ros.core.verify.status import Detection, FaultStatus
from save_ros.core.verify.verifier import Job
from save_ros.core.weights import Repair, WeightStore

_NOTHING: frozenset[str] = frozenset()
Failures = list[tuple[int, Detection]]


class Repairs(Protocol):
    """What the checker asks of Edit (`core.edit.Editor`): repair, and what was repaired."""

    def restore(self, chunks: list[tuple[int, int]] | None = None) -> Repair:
        """Restore weights from their golden copies (all if None)."""

    epoch: int  # repair sequence number (odd while a repair writes)

    def stale(self, epoch: int) -> list[str] | None:
        """Weights changed by restores since repair epoch `epoch` (None: all)."""

    def first_reader(self, plan: CheckPlan, names: list[str]) -> int:
        """Position of the first layer that reads any of the named weights."""


class LayerChecker:
    """Runs the planned checks of one inference and says which failed."""

    def __init__(self, inst: Instrumented, store: WeightStore, editor: Repairs,
                 box: InputBox | None, confirm_range_alarms: bool = True) -> None:
        self.inst = inst
        self.store = store
        self.editor = editor
        self.box = box
        self.confirm_range_alarms = confirm_range_alarms

    def in_box(self, x: torch.Tensor) -> bool:
        """The input lies in the declared box (NaN does not)."""
        self.box = self.box.to(x.device)  # once: the inputs stay on one device
        return INPUT.contains(self.box, x)

    def check(self, job: Job) -> tuple[FaultStatus, Failures]:
        """Every check of one inference: the status so far and the failures, first layer first."""
        t_v = time.perf_counter()
        plan: CheckPlan = job.plan
        st = FaultStatus(job.inference_id, forward_s=job.t_end - job.t_start,
                         queue_s=t_v - job.t_end)
        # box None: the runtime checked every input before inference (core.inputs)
        st.input_out_of_range = self.box is not None and not self.in_box(job.inputs[0])
        fails: Failures = []
        if job.check_weights:
            fails += WEIGHTS.eager_store(self.store, self.editor, plan, self.inst,
                                         job.weight_window, st)
        # After the checksum: a repair by another thread may have erased the traces of a flip
        # this inference computed with, while the checksum ran; the repair log remembers it.
        stale = self.editor.stale(job.epoch)
        if self.editor.epoch != job.epoch:  # a restore overlapped: say what that meant here
            st.restore_overlap = "rerun" if stale is None or stale else "verified"
        if stale is None or [n for n in stale if n not in st.repaired]:
            names = [n for n in stale if n not in st.repaired] if stale else \
                list(self.store.slots)
            k = self.editor.first_reader(plan, names)
            fails.append((k, Detection(self.inst.names[k], ", ".join(names[:4]), WEIGHTS.name,
                                       "restored while this inference ran")))
        if plan.redundant or plan.range_batch.checks or plan.checksummed:  # else all reliable
            fails += self.run(plan, job.values, 0, not st.input_out_of_range, st,
                              frozenset(st.repaired) if st.repaired else _NOTHING, job.sums)
        st.verify_s = time.perf_counter() - t_v
        return st, fails

    def run(self, plan: CheckPlan, values: Sequence[Any], start: int, in_range: bool,
            st: FaultStatus, restored: frozenset[str] = _NOTHING, sums: Any = None) -> Failures:
        """Layer checks on layers >= start; failures as (node position, detection).

        Layers that read a weight in `restored` are skipped: they are re-run anyway, and a
        re-computation with the repaired weight would report the same fault twice.
        `sums`: the inference's memory checksums (write, read); a re-run by Edit has none, and
        its checksummed layers are re-computed and compared instead (DMR of the re-run).
        """
        run = EagerRun(plan, values, start, in_range, st, self.inst, sums,
                       self._benign_in(plan, values) if self.confirm_range_alarms else None)
        fails: Failures = []
        for kind in EAGER_BATCHES:  # memory sums, ranges: all their layers in one compare
            fails += kind.eager_batch(run)
        checks = plan.redundant
        if start or restored:
            checks = [c for c in checks if c.index >= start and not (restored and any(
                restored.intersection(plan.layer_params.get(j, ()))
                for j in c.members or (c.index,)))]
        st.checks_run += len(checks)
        for c in checks:  # one layer at a time (DMR, ABFT), in layer order
            fail = kind_of(c).eager_check(c, run)
            if fail is not None:
                fails.append(fail)
        return fails

    def _benign_in(self, plan: CheckPlan, values: Sequence[Any]):
        """The test of a range excursion on these values: input-driven when the layer
        re-computes equal with golden weights (its weights are not corrupted)."""

        def benign(c: LayerCheck) -> bool:
            if self.store.corrupted(plan.layer_params.get(c.index, [])):
                return False
            return dmr_mismatch(c.recompute(values), values[c.index], c.exact) is None

        return benign
