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

from save_ros.core import bits
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
from save_ros.core.verify.kinds import RANGE
from save_ros.core.verify.plan import CheckPlan, plan_checks
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

    _memory_checksums = True  # memory_checksums="auto" turns them on in this backend
    _eager_forward = True  # inference runs `CheckPlan.forward` (the CUDA graph backend: not)


    def _use_memory_checksums(self) -> bool:
        """`ProtectConfig.memory_checksums` for this backend ("auto": its default)."""
        value = self.config.memory_checksums
        if value == "auto":  # forcing the checksum kind (checks="checksum") asks for them
            return self._memory_checksums or self.config.checks == "checksum"
        if not isinstance(value, bool):
            raise ValueError(f"ProtectConfig.memory_checksums={value!r}: use True, False or "
                             "'auto'")
        return value
    def __init__(self, model: nn.Module, example_input: Any, input_range: Any,
                 config: ProtectConfig, analysis: Analysis | None,
                 fault_sites: bool = False) -> None:
        self.model = model.eval()
        self.fault_sites = fault_sites
        self.last_raw_output: Any = None  # the last forward's output before any Edit
        self._armed: tuple[int, int, int] | None = None  # (node, element, bit) for the next run
        self._sites: dict[str, tuple[int, int]] = {}  # activation site name -> (node, numel)
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
                               self.config.redundancy_budget,
                               self._use_memory_checksums())
            RANGE.fit(plan, self._inst, calib, InputBatch(self._example))
            if self._eager_forward and (plan.checksummed or self.fault_sites):
                self._sites = self._site_table(plan, values) if self.fault_sites else {}
                plan.keep = self._kept(plan)
                plan.forward = self._inst.checksummed(
                    [c.index for c in plan.checksummed], plan.last_read, self._site,
                    [i for i, _ in self._sites.values()], plan.keep)
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
            sums = None
            if plan.forward is None:
                out, values = self._inst.forward(*xs)
            else:
                out, values, w, r = plan.forward(*xs)
                sums = (w, r) if w is not None else None
            t1 = time.perf_counter()
            self.last_raw_output = out  # before any Edit: what an unprotected run returned
            job = Job(i, xs, out, values, t0, t1, epoch, check_w, window, plan, sums=sums)
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

    def _kept(self, plan: CheckPlan) -> set[int] | None:
        """The values the verifier needs: all with DMR / ABFT (re-computation and Edit read
        them), else the range-checked layers and their inputs, and the model inputs."""
        if plan.redundant:
            return None
        inst = self._inst
        keep = set(inst.placeholders)
        for c in plan.range_batch.checks:
            keep.add(c.index)
            keep.update(inst.index[n.name] for n in inst.node_of(c.index).all_input_nodes)
        return keep

    def _rerun(self, job: Job, fails: list, st: FaultStatus) -> Any:
        """Edit for a plan that keeps no activations: restore the weights and run the whole
        checksummed forward again from the input, checked as the first run was."""
        plan: CheckPlan = job.plan
        t = time.perf_counter()
        in_range = not st.input_out_of_range
        out = job.output
        with self._editor.lock, torch.inference_mode():
            st.rerun_from = "input (memory checksums keep no activations)"
            for attempt in range(max(1, self.config.max_reruns)):
                rep = self._editor.restore(None)
                for name, n in rep.elements.items():
                    st.repaired[name] = st.repaired.get(name, 0) + n
                out, values, w, r = plan.forward(*job.inputs)
                again = self._checker.run(plan, values, 0, in_range, st, frozenset(), (w, r))
                if self._store.check():
                    again.append((0, None))  # a weight changed during the re-run: go again
                if not again:
                    st.verified = in_range
                    break
                if len(st.notes) < 8:
                    st.notes.append(f"re-run {attempt + 1} still fails")
            else:
                st.error = "faults persist after re-runs; result unverified"
        st.repair_s = time.perf_counter() - t
        return out

    # ---- activation fault sites (campaigns; protect(..., fault_sites=True)) ------------
    def _site_table(self, plan: CheckPlan, values: Any) -> dict[str, tuple[int, int]]:
        """Injectable activations: analysed float outputs with memory of their own, in normal
        memory (the reliable pool never flips)."""
        inst = self._inst
        analysed = set(plan.analysis.tensors) if plan.analysis is not None else set()
        out = {}
        for i in inst.layer_indices:
            v, name = values[i], inst.names[i]
            if not (isinstance(v, torch.Tensor) and v.is_floating_point()
                    and v.dtype in bits.LAYOUTS and v.is_contiguous() and v.numel()):
                continue
            if (analysed and name not in analysed) or plan.placement.is_reliable(name):
                continue
            out[name] = (i, v.numel())
        return out

    def _site(self, v: torch.Tensor, i: int) -> torch.Tensor:
        """Flip the armed bit of node i's output in memory, once (a no-op otherwise)."""
        armed = self._armed
        if armed is not None and armed[0] == i:
            self._armed = None
            iv = bits.int_view(v).view(-1)
            iv[armed[1]] ^= bits.mask_value(bits.layout_of(v.dtype), armed[2])
        return v

    def activation_sites(self) -> dict[str, int]:
        """Injectable activations of the example shape: node name -> elements."""
        if not self.fault_sites:
            raise RuntimeError("protect with fault_sites=True to inject activation faults")
        return {name: n for name, (_, n) in self._sites.items()}

    def arm_activation_fault(self, name: str, index: int, bit: int) -> None:
        """Flip `bit` of element `index` of activation `name` in the next inference only."""
        if name not in self._sites:
            raise KeyError(f"{name!r} is not an activation fault site")
        i, n = self._sites[name]
        if not 0 <= index < n:
            raise IndexError(f"{name} has {n} elements, not index {index}")
        self._armed = (i, index, bit)

    def disarm(self) -> None:
        """Clear an armed activation fault."""
        self._armed = None

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
            if job.plan.keep is not None:  # no activations kept: re-run from the input
                st.output = self._rerun(job, fails, st)
            else:
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
