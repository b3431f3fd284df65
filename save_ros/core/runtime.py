"""`ProtectedModel`: SAVE at run time on any device torch runs eagerly (the CPU backend).

The inference thread runs the model's own fx-generated forward (`core.instrument`), which also
returns every value, and queues them as a `Job`; it never waits unless `infer(x, wait=True)`
asks for the verdict. The verifier (`core.verify.verifier`: a thread of its own, or whoever calls
`run_pending_checks`) runs the layer checker loop (`core.verify.checker`) on the saved values and,
where a check failed, Edit (`core.edit`): golden weights restored, the inference re-run from the
first failing layer. Allocation (`core.allocate`) and the check plan (`core.verify.plan`) are
made once per Analysis and swapped whole by `reanalyze`.

Inputs (`core.inputs.ModelInputs`): `infer(x)` takes what `protect()` was given (a tensor, or a
tuple / list / dict of tensors) and raises `InputError` before the model runs when an input
does not fit (structure, dtype, shape, device) or is NaN / Inf / outside its box; such inputs are
counted in `stats()["rejected_inputs"]`, never as faults. The saved inputs of a `Job` are the
positional tuple the graph's placeholders take.

Weight repairs and inferences may overlap (a ROS service calls `recover()` while the node
infers): every repair is logged with a sequence number, and an inference that ran while weights
were being restored is re-run from the first layer that reads them.
"""

from __future__ import annotations

import collections
import copy
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from save_ros.core.allocate import Placement, candidates, default_budget
from save_ros.core.allocate import plan as allocate
from save_ros.core.analysis import Analysis
from save_ros.core.config import ProtectConfig
from save_ros.core.edit import Editor
from save_ros.core.graph import capture
from save_ros.core.inputs import InputBatch, InputError, ModelInputs
from save_ros.core.instrument import Instrumented, UnsupportedModelError
from save_ros.core.select import analyze
from save_ros.core.verify.checker import LayerChecker
from save_ros.core.verify.plan import CheckPlan, fit_ranges, plan_checks
from save_ros.core.verify.status import FaultStatus
from save_ros.core.verify.verifier import Job, Verifier
from save_ros.core.weights import Repair, WeightStore


@dataclass
class InferenceResult:
    """An inference's output and its verdict (a status now, or a future of one)."""

    output: Any
    status: FaultStatus | None
    verdict: Future

    @property
    def verified(self) -> bool:
        """True when the verdict is in and says verified."""
        return self.status is not None and self.status.verified


class ProtectedModel:
    """A model under SAVE: infer, get verdicts, repair. Thread-safe."""

    def __init__(self, model: nn.Module, example_input: Any, input_range: Any,
                 config: ProtectConfig, analysis: Analysis | None) -> None:
        self.model = model.eval()
        self.config = config
        self._inputs = ModelInputs.of(model, example_input, input_range)
        self._example_input = example_input  # as the user gave it (reanalyze)
        self._example = self._inputs.normalize(example_input, "example_input")  # positional
        self._box = self._inputs.box  # a single float input's box (None otherwise)
        graph = getattr(analysis, "graph", None)
        if graph is None or graph.model is not model:  # a loaded or shared analysis
            graph = capture(model, tuple(t[:1] for t in self._example))
        if graph.capture != "fx":
            try:
                fx.symbolic_trace(model)
                why = "unknown"
            except Exception as exc:  # report fx's own reason
                why = f"{type(exc).__name__}: {exc}"
            raise UnsupportedModelError(
                f"cannot protect {type(model).__name__}: torch.fx cannot trace it ({why}). "
                "Make forward traceable (no data-dependent control flow) or mark the offending "
                "submodule as a leaf")
        self._inst = Instrumented(graph)
        self._declared = self._inputs  # as given: what Selection analyses (and keys)
        self._inputs = self._inputs.with_table_ranges(graph.gm)  # token ids: the table rows
        self._store = WeightStore(model, config.weight_chunk)
        self._editor = Editor(self._inst, self._store, config.max_reruns)
        # inputs are checked before inference (`_admit`), so the checker gets no box
        self._checker = LayerChecker(self._inst, self._store, self._editor, None,
                                     config.confirm_range_alarms)
        self._ids = itertools.count()
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(("inferences", "verified", "faulty", "repaired",
                                     "unrepaired", "input_out_of_range", "rejected_inputs",
                                     "recoveries"), 0)
        self._latencies: collections.deque[float] = collections.deque(maxlen=10000)
        self._plan = self._build_plan(analysis)
        self._verifier = Verifier(self._verify, config.verifier)
        self._closed = False

    # ---- set-up -----------------------------------------------------------------------
    def _build_plan(self, analysis: Analysis | None) -> CheckPlan:
        """Allocation and the check plan for one analysis (probes run on the example input)."""
        budget = self.config.reliable_budget_bytes
        if budget is None:
            budget = default_budget(self._store.nbytes, self.config.reliable_budget_fraction)
        covered = self.config.weight_check_interval == 1 and \
            self.config.weight_check_budget_s is None
        placement = allocate(candidates(analysis, self._store.tensors, covered), budget,
                             self._store.nbytes)
        calib = self.config.calibration
        if calib is not None and not isinstance(calib, InputBatch):
            calib = self._inputs.batch(self._inputs.to(calib, self._inputs.device),
                                       "calibration")
        with torch.inference_mode():
            _, values = self._inst.forward(*self._example)
            plan = plan_checks(self._inst, analysis, placement, self._store, values,
                               self.config.checks, self.config.robust_allowance,
                               self.config.min_vulnerable_share, self.config.chain_dmr,
                               self.config.redundancy_budget)
            fit_ranges(plan, self._inst, calib, InputBatch(self._example))
        n = self._store.n_chunks()
        self._chunks_per_job = n
        if self.config.weight_check_budget_s is not None:
            t = time.perf_counter()
            for _ in range(5):
                self._store.check()
            per_chunk = (time.perf_counter() - t) / 5 / n
            self._chunks_per_job = max(1, min(n, int(self.config.weight_check_budget_s
                                                     / max(per_chunk, 1e-9))))
        return plan

    # ---- the public API ---------------------------------------------------------------
    @property
    def analysis(self) -> Analysis | None:
        """The Selection result in force."""
        return self._plan.analysis

    @property
    def placement(self) -> Placement:
        """The Allocation in force."""
        return self._plan.placement

    def checks(self) -> list[dict[str, Any]]:
        """Per layer: which check it gets and why."""
        return [{"layer": c.name, "check": c.kind.value, "exact": c.exact, "reason": c.reason,
                 "cost_us": {k: v * 1e6 for k, v in c.cost_s.items()}}
                for c in self._plan.checks]

    def normal_tensors(self, buffers: bool = False) -> dict[str, torch.Tensor]:
        """Weights in normal memory: name -> live tensor (what an injector may touch)."""
        named = dict(self.model.named_parameters())
        if buffers:
            named.update((n, b) for n, b in self.model.named_buffers() if n in self._store.slots)
        return {n: t.detach() for n, t in named.items() if not self.placement.is_reliable(n)}

    def reliable_tensors(self) -> list[str]:
        """Names (weights and activations) in the reliable pool."""
        return list(self.placement.reliable)

    def reliable_activation_sites(self) -> list[str]:
        """Module paths whose outputs live in the reliable pool (activation-fault `exclude`)."""
        return list(self._plan.reliable_sites)

    @property
    def inputs(self) -> ModelInputs:
        """What `infer` takes: the inputs' structure, shapes, dtypes and boxes."""
        return self._inputs

    def _admit(self, x: Any) -> tuple[torch.Tensor, ...]:
        """The inputs of one call as the graph's positional tuple, or InputError (counted in
        `rejected_inputs`, never as a fault) before anything runs."""
        try:
            xs = self._inputs.normalize(x)
            self._inputs.check_values(xs)
        except InputError as exc:
            with self._stats_lock:
                self._stats["rejected_inputs"] += 1
                self._stats["input_out_of_range"] += exc.kind in ("out_of_range", "nonfinite")
            raise
        return xs

    def infer(self, x: Any, wait: bool = True) -> InferenceResult:
        """Run one inference; with `wait`, return the verified (or repaired) output.

        `x` has the structure `protect()` was given; InputError (before the model runs) for an
        input that does not fit or lies outside its box (module docstring)."""
        if self._closed:
            raise RuntimeError("this ProtectedModel is closed; call protect() again")
        xs = self._admit(x)
        plan = self._plan
        epoch = self._editor.epoch
        i = next(self._ids)
        check_w, window = self._weight_schedule(i)
        with torch.inference_mode():  # one context for forward and checks (~2.5 us each)
            t0 = time.perf_counter()
            out, values = self._inst.forward(*xs)
            t1 = time.perf_counter()
            job = Job(i, xs, out, values, t0, t1, epoch, check_w, window, plan)
            if not wait:
                return InferenceResult(out, None, self._verifier.submit(job))
            # The caller waits anyway: check on its own thread, which saves two thread hand-offs
            status = self._verify(job)
        job.future.set_result(status)
        return InferenceResult(status.output if status.output is not None else out, status,
                               job.future)

    def __call__(self, x: Any) -> Any:
        """The verified output (blocks for the verdict)."""
        return self.infer(x, wait=True).output

    def run_pending_checks(self, timeout: float | None = None) -> int:
        """Run queued checks (verifier='external'); return how many inferences were verified."""
        return self._verifier.run_pending(timeout)

    def pending_checks(self) -> int:
        """Inferences waiting for their verdict."""
        return self._verifier.pending()

    def recover(self) -> Repair:
        """Restore every weight that differs from its golden copy, now."""
        rep = self._editor.restore(None)
        with self._stats_lock:
            self._stats["recoveries"] += 1
        return rep

    def reanalyze(self, calibration: Any = None,
                  accept_weights: bool = False) -> CheckPlan:
        """Redo Selection, Allocation and the check plan (weights restored first, or accepted)."""
        with self._editor.lock:
            if accept_weights:
                self._store.accept_current()
            else:
                self._editor.restore(None)
            calib = calibration if calibration is not None else self.config.calibration
            if calib is not None and not isinstance(calib, InputBatch):
                calib = self._inputs.batch(self._inputs.to(calib, self._inputs.device),
                                           "calibration")
            # analyse a copy: tracing reads the live Parameters through fx proxies otherwise,
            # and inferences keep running on the live model meanwhile
            shadow = copy.deepcopy(self.model)
            analysis = analyze(shadow, self._example_input, self._declared, calib,
                               config=self.config.select_config())
            plan = self._build_plan(analysis)
            self._plan = plan  # one reference swap: inferences pick up the new plan whole
        return plan

    def stats(self) -> dict[str, Any]:
        """Counters since protect(): inferences, verdicts, detections, latencies."""
        with self._stats_lock:
            d = dict(self._stats)
            lat = sorted(self._latencies)
        if lat:
            d["detection_latency_ms"] = {"mean": 1e3 * sum(lat) / len(lat),
                                         "p50": 1e3 * lat[len(lat) // 2],
                                         "max": 1e3 * lat[-1], "n": len(lat)}
        return d

    def summary(self) -> str:
        """What is protected how: placement and checks per kind."""
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self._plan.by_kind().items()))
        return f"{self.placement.summary()}\nchecks per layer: {kinds}"

    def close(self) -> None:
        """Stop the verifier (queued checks still run in thread mode)."""
        self._closed = True
        self._verifier.close()

    def __enter__(self) -> ProtectedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- one verdict ------------------------------------------------------------------
    def _weight_schedule(self, i: int) -> tuple[bool, tuple[int, int | None]]:
        """Whether inference i checksums weights, and which window of chunks."""
        every = self.config.weight_check_interval
        if every <= 0 or i % every:
            return False, (0, 0)
        n, k = self._store.n_chunks(), self._chunks_per_job
        if k >= n:
            return True, (0, None)
        lo = ((i // every) * k) % n
        return True, (lo, lo + k)

    def _verify(self, job: Job) -> FaultStatus:
        """The verifier's work for one inference: the checks, then Edit if any failed."""
        st, fails = self._checker.check(job)
        if fails:
            st.detections = [d for _, d in fails]
            st.output = self._editor.edit(job, fails, st, self._checker.run)
            st.detection_latency_s = time.perf_counter() - job.t_start
        else:
            st.verified = not st.input_out_of_range
        self._count(st)
        return st

    def _count(self, st: FaultStatus) -> None:
        c = self._stats
        with self._stats_lock:
            c["inferences"] += 1
            if st.verified and not st.detections:  # the common case: one counter
                c["verified"] += 1
                return
            c["verified"] += st.verified
            c["faulty"] += st.faulty
            c["repaired"] += st.repaired_ok
            c["input_out_of_range"] += st.input_out_of_range
            if st.faulty and not st.verified:
                c["unrepaired"] += 1
            if st.detection_latency_s is not None:
                self._latencies.append(st.detection_latency_s)
