"""`protect(model, example_input, input_range, config) -> ProtectedModel`: SAVE at run time.

Selection (`core.select.analyze`) says which bits of which tensor are robust, ranging or
vulnerable; Allocation (`core.allocate`) puts the most vulnerable bytes in the reliable pool;
Verification (`core.checks`, `core.checkplan`, `core.verify`) checks every inference off the
inference thread; Edit (`core.edit`) restores corrupted weights from golden copies and re-runs
from the first failing layer. The inference thread runs the model's own (fx-generated) forward
and queues the saved values; it never waits unless `infer(x, wait=True)` asks for the verdict.

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
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from save_ros.core.allocate import (
    DEFAULT_BUDGET_FRACTION,
    Candidate,
    Placement,
    default_budget,
    plan,
)
from save_ros.core.analysis import Analysis, TensorKind
from save_ros.core.box import InputBox
from save_ros.core.checkplan import Runtime, fit_ranges, plan_checks
from save_ros.core.checks import CheckKind, dmr_mismatch
from save_ros.core.edit import Repair, WeightStore
from save_ros.core.graph import capture
from save_ros.core.instrument import Instrumented, UnsupportedModelError
from save_ros.core.select import SelectConfig
from save_ros.core.verify import Detection, FaultStatus, Job, Verifier, VerifierMode

__all__ = ["InferenceResult", "ProtectConfig", "ProtectedModel", "UnsupportedModelError",
           "protect"]


@dataclass
class ProtectConfig:
    """How to protect a model. Every field has a working default."""

    reliable_budget_bytes: int | None = None  # None: reliable_budget_fraction of weight bytes
    reliable_budget_fraction: float = DEFAULT_BUDGET_FRACTION
    verifier: str = "thread"  # "thread" or "external" (run_pending_checks drives it)
    checks: str = "auto"  # auto | dmr | abft | range | none: force one kind (ablations)
    weight_check_interval: int = 1  # checksum normal-memory weights every N-th inference; 0: never
    weight_check_budget_s: float | None = None  # else: rotate chunks, this much time each
    weight_chunk: int = 256  # elements per checksum chunk
    calibration: torch.Tensor | None = None  # inputs for the observed ranges
    margin: float = 0.1  # calibration ranges widened by this share of their width
    confirm_range_alarms: bool = True  # re-compute before calling a range excursion a fault
    robust_allowance: bool = True  # ABFT tolerance also admits flips of robust mantissa bits
    min_vulnerable_share: float = 0.0  # range check, not redundancy, at or below this share
    # at most this share of a forward pass's time on redundancy (DMR / ABFT), spent where it
    # covers the most vulnerable bits; the rest falls back to range checks. None: cover all
    redundancy_budget: float | None = None
    # compare runs of DMR layers once, at the end of the run (checkplan._chain): same verified
    # outputs, fewer compares, but flips the run masks are no longer reported; off by default
    chain_dmr: bool = False
    max_reruns: int = 2  # Edit attempts before a result is reported unverified
    analysis: Analysis | None = None  # a precomputed (e.g. loaded) analysis of this model
    # what a robust flip may not change: "classification" (top-1), "regression" (every output
    # within `tolerance`), "auto" (see core.select); `selection` gives every Selection setting
    task: str = "auto"
    tolerance: float | None = None
    selection: SelectConfig | None = None
    # CUDA inputs: "graph" = the CUDA backend (core/cuda: forward and checks in one CUDA
    # graph), "generic" = this eager runtime on CUDA tensors (for comparison)
    cuda_backend: str = "graph"


    def select_config(self) -> SelectConfig:
        """The Selection settings these fields ask for (`selection` wins when given)."""
        if self.selection is not None:
            return self.selection
        return SelectConfig(margin=self.margin, task=self.task, tolerance=self.tolerance)


class UnsupportedOpWarning(UserWarning):
    """Ops without an interval rule: their ranges (and what follows) are calibrated only."""


def warn_unsupported(analysis: Analysis) -> None:
    """One warning naming the ops without an interval rule and what that means."""
    if not analysis.unsupported:
        return
    ops = "; ".join(analysis.unsupported[:5])
    more = f" (+{len(analysis.unsupported) - 5} more)" if len(analysis.unsupported) > 5 else ""
    warnings.warn(UnsupportedOpWarning(
        f"{len(analysis.unsupported)} op(s) have no interval rule: {ops}{more}. Their ranges "
        f"and the {len(analysis.unsound)} activation range(s) computed from them are calibrated "
        "(observed on calibration inputs), not sound: pass calibration inputs that cover real "
        "use, or add a rule in save_ros/core/select/propagate.py"), stacklevel=3)


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


_NOTHING: frozenset[str] = frozenset()
REWRITE_SETTLE_S = 0.05  # Edit keeps re-running this long while only the weights keep changing


def _candidates(analysis: Analysis | None, store: WeightStore,
                weights_covered: bool = False) -> list[Candidate]:
    """Allocation candidates: every analysed weight and activation.

    `weights_covered`: every weight is checksummed before every verdict, so a weight flip in
    normal memory is always caught and repaired before a result is released; its vulnerable
    bits then buy nothing in the reliable pool, which goes to activations (whose only other
    protection is re-computation).
    """
    if analysis is None:
        return [Candidate(n, "weight", t.numel() * t.element_size(), 0.0, 0.0)
                for n, t in store.tensors.items()]
    out = []
    for t in analysis.tensors.values():
        weight = t.kind is TensorKind.WEIGHT
        if weight and weights_covered:
            out.append(Candidate(t.name, "weight", int(t.nbytes), 0.0, 0.0))
        else:
            out.append(Candidate(t.name, "weight" if weight else "activation", int(t.nbytes),
                                 float(t.vulnerable_bits), float(t.score)))
    return out


class ProtectedModel:
    """A model under SAVE: infer, get verdicts, repair. Thread-safe."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, input_range: Any,
                 config: ProtectConfig, analysis: Analysis | None) -> None:
        self.model = model.eval()
        self.config = config
        self._example = example_input
        self._box = InputBox.of(input_range, example_input.shape[1:])
        graph = getattr(analysis, "graph", None)
        if graph is None or graph.model is not model:  # a loaded or shared analysis
            graph = capture(model, example_input[:1])
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
        self._store = WeightStore(model, config.weight_chunk)
        self._lock = threading.RLock()  # repairs, re-runs, recover, reanalyze
        self._seq = 0  # repair sequence: odd while a repair is writing weights
        self._repairs: collections.deque[tuple[int, list[str]]] = collections.deque(maxlen=512)
        self._ids = itertools.count()
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(("inferences", "verified", "faulty", "repaired",
                                     "unrepaired", "input_out_of_range", "recoveries"), 0)
        self._latencies: collections.deque[float] = collections.deque(maxlen=10000)
        self._rt = self._build_runtime(analysis)
        self._verifier = Verifier(self._verify, config.verifier)
        self._closed = False

    # ---- set-up -----------------------------------------------------------------------
    def _build_runtime(self, analysis: Analysis | None) -> Runtime:
        """Allocation and the check plan for one analysis (probes run on the example input)."""
        budget = self.config.reliable_budget_bytes
        if budget is None:
            budget = default_budget(self._store.nbytes, self.config.reliable_budget_fraction)
        covered = self.config.weight_check_interval == 1 and \
            self.config.weight_check_budget_s is None
        placement = plan(_candidates(analysis, self._store, covered), budget,
                         self._store.nbytes)
        with torch.inference_mode():
            _, values = self._inst.forward(self._example)
            rt = plan_checks(self._inst, analysis, placement, self._store, values,
                             self.config.checks, self.config.robust_allowance,
                             self.config.min_vulnerable_share, self.config.chain_dmr,
                             self.config.redundancy_budget)
            fit_ranges(rt, self._inst, self.config.calibration, self._example)
        n = self._store.n_chunks()
        self._chunks_per_job = n
        if self.config.weight_check_budget_s is not None:
            t = time.perf_counter()
            for _ in range(5):
                self._store.check()
            per_chunk = (time.perf_counter() - t) / 5 / n
            self._chunks_per_job = max(1, min(n, int(self.config.weight_check_budget_s
                                                     / max(per_chunk, 1e-9))))
        return rt

    # ---- the public API ---------------------------------------------------------------
    @property
    def analysis(self) -> Analysis | None:
        """The Selection result in force."""
        return self._rt.analysis

    @property
    def placement(self) -> Placement:
        """The Allocation in force."""
        return self._rt.placement

    def checks(self) -> list[dict[str, Any]]:
        """Per layer: which check it gets and why."""
        return [{"layer": c.name, "check": c.kind.value, "exact": c.exact, "reason": c.reason,
                 "cost_us": {k: v * 1e6 for k, v in c.cost_s.items()}}
                for c in self._rt.checks]

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
        return list(self._rt.reliable_sites)

    def infer(self, x: torch.Tensor, wait: bool = True) -> InferenceResult:
        """Run one inference; with `wait`, return the verified (or repaired) output."""
        if self._closed:
            raise RuntimeError("this ProtectedModel is closed; call protect() again")
        rt = self._rt
        seq = self._seq
        i = next(self._ids)
        check_w, window = self._weight_schedule(i)
        with torch.inference_mode():  # one context for forward and checks (~2.5 us each)
            t0 = time.perf_counter()
            out, values = self._inst.forward(x)
            t1 = time.perf_counter()
            job = Job(i, (x,), out, values, t0, t1, seq, check_w, window, rt)
            if not wait:
                return InferenceResult(out, None, self._verifier.submit(job))
            # The caller waits anyway: check on its own thread, which saves two thread hand-offs
            status = self._verify(job)
        job.future.set_result(status)
        return InferenceResult(status.output if status.output is not None else out, status,
                               job.future)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
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
        with self._lock:
            rep = self._restore(None)
        with self._stats_lock:
            self._stats["recoveries"] += 1
        return rep

    def reanalyze(self, calibration: torch.Tensor | None = None,
                  accept_weights: bool = False) -> Runtime:
        """Redo Selection, Allocation and the check plan (weights restored first, or accepted)."""
        from save_ros.core.select import analyze

        with self._lock:
            if accept_weights:
                self._store.accept_current()
            else:
                self._restore(None)
            calib = calibration if calibration is not None else self.config.calibration
            # analyse a copy: tracing reads the live Parameters through fx proxies otherwise,
            # and inferences keep running on the live model meanwhile
            shadow = copy.deepcopy(self.model)
            analysis = analyze(shadow, self._example, self._box, calib,
                               config=self.config.select_config())
            rt = self._build_runtime(analysis)
            self._rt = rt  # one reference swap: inferences pick up the new plan whole
        return rt

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
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self._rt.by_kind().items()))
        return f"{self.placement.summary()}\nchecks per layer: {kinds}"

    def close(self) -> None:
        """Stop the verifier (queued checks still run in thread mode)."""
        self._closed = True
        self._verifier.close()

    def __enter__(self) -> ProtectedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- verification and edit --------------------------------------------------------
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

    def _restore(self, chunks) -> Repair:
        """Restore chunks (all if None) bit-for-bit, logged in the repair sequence."""
        with self._lock:
            self._seq += 1
            try:
                rep = self._store.restore(chunks)
            finally:
                self._seq += 1
            if rep.elements:
                self._repairs.append((self._seq, rep.tensors))
        return rep

    def _stale(self, seq: int) -> list[str] | None:
        """Weights restored since an inference began (None: too old to know, assume all)."""
        if seq == self._seq and not seq % 2:  # no repair began since: the common case
            return []
        with self._lock:
            if self._repairs and len(self._repairs) == self._repairs.maxlen \
                    and self._repairs[0][0] > seq:
                return None
            names: list[str] = []
            for end, tensors in self._repairs:
                if end > seq:
                    names += [t for t in tensors if t not in names]
            if seq % 2:  # began while a repair was writing
                names = names or list(self._store.slots)
            return names

    def _in_range(self, x: torch.Tensor) -> bool:
        self._box = self._box.to(x.device)  # once: the inputs stay on one device
        return self._box.contains(x)

    def _run_checks(self, rt: Runtime, values, start: int, in_range: bool,
                    st: FaultStatus, restored: frozenset[str] = frozenset()
                    ) -> list[tuple[int, Detection]]:
        """Layer checks on layers >= start; failures as (node position, detection).

        Layers that read a weight in `restored` are skipped: they are re-run anyway, and a
        re-computation with the repaired weight would report the same fault twice.
        """
        fails: list[tuple[int, Detection]] = []
        if in_range and rt.range_batch.checks:
            st.checks_run += len(rt.range_batch.checks)
            for c, detail in rt.range_batch.failures(values):
                if c.index < start:
                    continue
                if self.config.confirm_range_alarms and self._benign(rt, c, values):
                    st.notes.append(f"{c.name}: {detail}; re-computed equal with golden "
                                    "weights: input-driven, not a fault")
                    continue
                fails.append((c.index, Detection(c.name, c.name, "range", detail)))
        checks = rt.redundant
        if start or restored:
            checks = [c for c in checks if c.index >= start and not (restored and any(
                restored.intersection(rt.layer_params.get(j, ()))
                for j in c.members or (c.index,)))]
        st.checks_run += len(checks)
        tensor, equal, abft = torch.Tensor, torch.equal, CheckKind.ABFT
        for c in checks:
            i = c.index
            if c.kind is abft:
                node = self._inst.node_of(i)
                x = values[self._inst.index[node.args[0].name]]
                excess, diff = c.abft.violation(x, values[i])
                if excess > 0:
                    fails.append((i, Detection(
                        c.name, c.name, "abft", f"|sum(y) - c.x| = {diff:.4g} exceeds the "
                        f"tolerance by {excess:.4g}")))
                continue
            saved, again = values[i], c.recompute(values)
            # the common case, bit-equal tensors, without dmr_mismatch's call and type tests
            if again.__class__ is tensor and saved.__class__ is tensor and equal(again, saved):
                continue
            msg = dmr_mismatch(again, saved, c.exact)
            if msg:  # a chained segment re-runs from its first layer
                fails.append((i if c.head is None else c.head,
                              Detection(c.name, c.name, "dmr", msg)))
        return fails

    def _benign(self, rt: Runtime, c, values) -> bool:
        """A range excursion whose layer re-computes equal with golden weights is input-driven."""
        params = rt.layer_params.get(c.index, [])
        if self._store.corrupted(params):
            return False
        return dmr_mismatch(c.recompute(values), values[c.index], c.exact) is None

    def _verify(self, job: Job) -> FaultStatus:
        """The verifier's work for one inference: checks, then Edit if any failed."""
        t_v = time.perf_counter()
        rt: Runtime = job.runtime
        st = FaultStatus(job.inference_id, forward_s=job.t_end - job.t_start,
                         queue_s=t_v - job.t_end)
        st.input_out_of_range = not self._in_range(job.inputs[0])
        fails: list[tuple[int, Detection]] = []
        if job.check_weights:
            st.weights_checked = True
            lo, hi = job.weight_window
            if self._store.check(lo=lo, hi=hi):
                # compare everything exactly, not only the failing chunks: flips that cancel in
                # a chunk's sum (same bit, opposite directions) hide there only while no other
                # flip shows, so one visible flip is enough to find them all
                rep = self._restore(None)
                for name, n in rep.elements.items():
                    k = self._inst.first_reader([name], rt.param_readers)
                    fails.append((k, Detection(self._inst.names[k], name, "weights",
                                               f"{n} element(s) differ from the golden copy")))
                    st.repaired[name] = st.repaired.get(name, 0) + n
        # After the checksum: a repair by another thread may have erased the traces of a flip
        # this inference computed with, while the checksum ran; the repair log remembers it.
        stale = self._stale(job.epoch)
        if stale is None or [n for n in stale if n not in st.repaired]:
            names = [n for n in stale if n not in st.repaired] if stale else \
                list(self._store.slots)
            k = self._inst.first_reader(names, rt.param_readers)
            fails.append((k, Detection(self._inst.names[k], ", ".join(names[:4]), "weights",
                                       "restored while this inference ran")))
        if rt.redundant or rt.range_batch.checks:  # e.g. CartPole: every activation reliable
            fails += self._run_checks(rt, job.values, 0, not st.input_out_of_range, st,
                                      frozenset(st.repaired) if st.repaired else _NOTHING)
        st.verify_s = time.perf_counter() - t_v
        output = job.output
        if fails:
            st.detections = [d for _, d in fails]
            output = self._edit(job, rt, fails, st)
            st.detection_latency_s = time.perf_counter() - job.t_start
            st.output = output
        else:
            st.verified = not st.input_out_of_range
        self._count(st)
        return st

    def _edit(self, job: Job, rt: Runtime, fails, st: FaultStatus) -> Any:
        """Restore weights, re-run from the first failing layer, re-check; the new output."""
        t = time.perf_counter()
        values = job.values
        out = job.output
        with self._lock:
            # a detection may stem from a weight the schedule did not checksum this time, or
            # from flips that cancel in a chunk sum: compare all weights exactly
            rep = self._restore(None)
            for name, n in rep.elements.items():
                st.repaired[name] = st.repaired.get(name, 0) + n
            k = min(i for i, _ in fails)
            for name in rep.tensors:
                k = min(k, self._inst.first_reader([name], rt.param_readers))
            st.rerun_from = self._inst.names[k]
            attempts, settle = 0, time.perf_counter() + REWRITE_SETTLE_S
            while True:
                with torch.inference_mode():
                    out, values = self._inst.run_from(k, values)
                # no repair can run meanwhile (we hold the lock), but a new upset can: checksum
                # the weights the re-run used before trusting it
                rep = self._restore(None) if self._store.check() else Repair()
                again = [(self._inst.first_reader([n], rt.param_readers),
                          Detection("", n, "weights", "changed during the re-run"))
                         for n in rep.tensors]
                only_new_flips = bool(again)  # before the layer checks join the list
                again += self._run_checks(rt, values, k, not st.input_out_of_range, st,
                                          frozenset(rep.tensors))
                only_new_flips = only_new_flips and len(again) == len(rep.tensors)
                for name, n in rep.elements.items():
                    st.repaired[name] = st.repaired.get(name, 0) + n
                if not again:
                    st.verified = not st.input_out_of_range
                    break
                attempts += 1
                k = min(i for i, _ in again)
                if len(st.notes) < 8:
                    st.notes.append(f"re-run still fails at {self._inst.names[k]}: "
                                    f"{again[0][1].tensor} {again[0][1].detail}")
                # Weights that keep changing while we re-run are a burst of upsets (or a
                # writer) still at work, not a fault that survives repair: each attempt
                # restores them, so keep going a little longer than max_reruns allows
                if attempts >= max(1, self.config.max_reruns) and not (
                        only_new_flips and time.perf_counter() < settle):
                    st.error = "faults persist after re-runs; result unverified"
                    break
        st.repair_s = time.perf_counter() - t
        return out

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


def protect(model: nn.Module, example_input: torch.Tensor, input_range: Any,
            config: ProtectConfig | None = None, fault_sites: bool = False) -> ProtectedModel:
    """Analyse, allocate and instrument `model`; return it protected (it is changed in place:
    its weights move into checksummed flat storage, in-place modules become out-of-place)."""
    config = config or ProtectConfig()
    VerifierMode(config.verifier)  # fail early on a typo
    if config.cuda_backend not in ("graph", "generic"):
        raise ValueError(f"cuda_backend={config.cuda_backend!r}; use 'graph' or 'generic'")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input must be a tensor shaped like one batch of real input")
    box = InputBox.of(input_range, example_input.shape[1:])
    devices = {p.device for p in model.parameters()}
    if devices and devices != {example_input.device}:
        raise ValueError(f"the model is on {', '.join(sorted(map(str, devices)))} but "
                         f"example_input on {example_input.device}: move both to one device "
                         "(model.to(device), x.to(device)) before protect()")
    model.eval()
    analysis = config.analysis
    if analysis is None:
        from save_ros.core.select import analyze

        calib = config.calibration
        if calib is not None:
            calib = calib.to(example_input.device)
        analysis = analyze(model, example_input, box, calib,
                           config=config.select_config())
    warn_unsupported(analysis)
    if example_input.is_cuda and config.cuda_backend == "graph":
        # one replay of a CUDA graph per inference, checks captured beside the forward;
        # the same contract as the CPU runtime (core/cuda/runtime.py)
        from save_ros.core.cuda.runtime import CudaProtectedModel

        return CudaProtectedModel(model, example_input, box, config, analysis,
                                  fault_sites=fault_sites)
    if fault_sites:
        raise ValueError("fault_sites=True compiles activation fault sites into the CUDA "
                         "program; on the CPU, inject with save_ros.faults (hooks)")
    return ProtectedModel(model, example_input, box, config, analysis)
