"""`CudaProtectedModel`: `ProtectedModel`'s contract, one CUDA-graph replay per inference.

Per batch size, a `CheckProgram` (forward + every planned check + flags) is captured once as a
CUDA graph, with the forward on a high-priority stream and the checks on side streams, so the
checks overlap the layers after them. An inference copies each input into its static buffer
(one per model input, `core.inputs`), replays, and waits for the few flag bytes:

- all flags clear (the fast path): the verdict is `verified` at once, no hand-off to a verifier
  thread, and the output is a copy of the graph's output;
- any flag raised (the slow path, `_verify`): Edit restores every weight that differs from its
  golden copy and replays the graph; on golden weights the program is deterministic, so the
  replay re-computes the whole inference and two runs tell a transient fault (the flag or the
  output does not come back: detected, the replay's output is the repaired result) from an
  input-driven range excursion (it comes back with the same output: a note). On a GPU a replay
  of the whole graph costs less than an eager re-run from the faulty layer, so Edit re-runs from
  the input (`rerun_from = "input (graph replay)"`); the failing layer is named in the
  detections. This runs on the calling thread (`wait=True`) or on the verifier (thread or
  external, `ProtectConfig.verifier`); until its verdict is in, the next inference waits, since
  it would overwrite the static buffers.

Inputs: structure, dtype, shape and device are checked on the host before the copy (InputError,
as on the CPU), and so are integer inputs that have a valid range (an out-of-table embedding
index is a fatal device-side assert); float values (NaN / Inf, outside the box) by the program's
input flag, inside the graph, so the clean path gains no host synchronisation: a raised input
flag makes `infer` raise the same InputError as the CPU backend, before any verdict, and nothing
counts as a fault.

Every `ProtectConfig` field means what it means on the CPU, except `weight_check_budget_s`
(rotating weight checksums): on the device a full checksum of every weight costs tens of
microseconds beside the forward, so the CUDA backend refuses the setting instead of ignoring it.
Without a CUDA device the same class runs the program eagerly (no graph, no streams): that is how
its logic is tested on CPU machines.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torch
from torch import nn

from save_ros.core import bits
from save_ros.core.analysis import Analysis
from save_ros.core.cuda.program import CheckProgram
from save_ros.core.inputs import InputError
from save_ros.core.runtime import InferenceResult, ProtectedModel
from save_ros.core.verify.kinds import WEIGHTS, Slot
from save_ros.core.verify.plan import CheckPlan
from save_ros.core.verify.status import FaultStatus
from save_ros.core.verify.verifier import Job, VerifierMode
from save_ros.errors import UserError

MAX_SHAPES = 4  # captured programs kept (one per input shape)


class CudaConfigError(UserError, ValueError):
    """A ProtectConfig setting the CUDA backend cannot honour (the message says what to use)."""


class _Captured:
    """A CheckProgram for one input shape, with its static buffers and (on CUDA) its graph."""

    def __init__(self, owner: CudaProtectedModel, example: tuple[torch.Tensor, ...]) -> None:
        dev = example[0].device
        self.cuda = dev.type == "cuda" and owner.use_graph
        self.static_in = tuple(t.detach().clone() for t in example)  # one buffer per input
        self.program = CheckProgram(owner._inst, owner._plan, owner._store,
                                    owner._inputs.bounds(dev), self.static_in, owner.groups,
                                    owner.fault_sites, streams=self.cuda,
                                    side_stream=owner.side_streams,
                                    checksum_stream=owner.side_streams)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Any = None
        self.values: list[Any] = []
        if self.cuda:
            self._capture(owner)

    def _capture(self, owner: CudaProtectedModel) -> None:
        """Warm up (kernels compile, cuDNN picks), then capture the forward with its checks and,
        as a graph of its own, the weight checksums (replayed after it when due)."""
        main = torch.cuda.Stream(self.static_in[0].device, priority=-1)
        self.cs_stream = torch.cuda.Stream(self.static_in[0].device)
        main.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(main), torch.inference_mode():
            for _ in range(3):
                self.program.run(self.static_in, None, copy_flags=False)
                self.program.run_weights()
        torch.cuda.synchronize()
        self.stream = main
        # weights checked every inference (the default): one graph, one launch; else the
        # weight checksums are a graph of their own, replayed when due
        self.fused_weights = owner.config.weight_check_interval == 1
        with torch.inference_mode():
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out, self.values = self.program.run(
                    self.static_in, True if self.fused_weights else None, copy_flags=False)
            self.graph_cs = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph_cs):
                self.program.run_weights()
        self.program.finish_capture()
        self.done = torch.cuda.Event()
        torch.cuda.synchronize()

    def run(self, xs: tuple[torch.Tensor, ...], check_weights: bool) -> tuple[Any, list[Any]]:
        """One inference into the static buffers; returns (output, values) once flags landed."""
        if not self.cuda:
            with torch.inference_mode():
                for buf, x in zip(self.static_in, xs, strict=True):
                    if buf is not x:
                        buf.copy_(x)
                self.out, self.values = self.program.run(self.static_in, check_weights)
            return self.out, self.values
        cur = torch.cuda.current_stream()
        prog = self.program
        self.stream.wait_stream(cur)
        with torch.cuda.stream(self.stream):
            for buf, x in zip(self.static_in, xs, strict=True):
                if buf is not x:
                    buf.copy_(x, non_blocking=True)
            if not check_weights:
                prog.clear_weight_flags()
            self.graph.replay()
            if check_weights and not self.fused_weights:  # after the forward: see
                self.graph_cs.replay()  # CheckProgram.run
            prog.flags_host.copy_(prog.flags, non_blocking=True)
            self.done.record()
        cur.wait_stream(self.stream)
        self.done.synchronize()
        return self.out, self.values


def _equal(a: Any, b: Any) -> bool:
    """Bit-equal (nested) outputs."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(
            bits.int_view(a) if a.dtype in bits.LAYOUTS else a,
            bits.int_view(b) if b.dtype in bits.LAYOUTS else b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _clone(out: Any) -> Any:
    """A copy of a (nested) output, so the next replay cannot change what the caller holds."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    return out


class CudaProtectedModel(ProtectedModel):
    """A ProtectedModel whose inference is one CUDA-graph replay (eager on a CPU, for tests)."""

    _eager_forward = False  # the captured CheckProgram runs the checks, not CheckPlan.forward
    # "auto" leaves memory checksums off here: one sum kernel per tensor, written and read, costs
    # more inside the graph than the DMR it replaces (docs/results/robot_scale.md, 2026-12-08)
    _memory_checksums = False

    def __init__(self, model: nn.Module, example_input: torch.Tensor, input_range: Any,
                 config, analysis: Analysis | None, use_graph: bool | None = None,
                 groups: int = 8, fault_sites: bool = False) -> None:
        if config.weight_check_budget_s is not None:
            raise CudaConfigError(
                "weight_check_budget_s (rotating weight checksums) is not used on CUDA: "
                "a full checksum of every weight runs beside each forward; leave it None "
                "(or set weight_check_interval to check every N-th inference)")
        self.use_graph = example_input.is_cuda if use_graph is None else use_graph
        self.groups = groups
        self.fault_sites = fault_sites
        # checks on side streams overlap the forward; off: everything on one stream (probe)
        self.side_streams = os.environ.get("SAVE_ROS_SIDE_STREAMS", "1") != "0"
        self._programs: dict[tuple, _Captured] = {}
        self._gate = threading.Lock()  # held from a replay until its verdict is in
        self.device_alarms = 0
        self.last_raw_output: Any = None  # the graph's output before any Edit (campaigns)
        super().__init__(model, example_input, input_range, config, analysis, fault_sites)
        self._program(self._example)

    # ---- programs -------------------------------------------------------------------
    def _build_plan(self, analysis: Analysis | None) -> CheckPlan:
        plan = super()._build_plan(analysis)
        self._programs = {}  # a new plan: capture again (reanalyze)
        return plan

    def _program(self, xs: tuple[torch.Tensor, ...]) -> _Captured:
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in xs)
        prog = self._programs.get(key)
        if prog is None:
            if len(self._programs) >= MAX_SHAPES:
                self._programs.pop(next(iter(self._programs)))
            with self._editor.lock:
                prog = _Captured(self, xs)
            self._programs[key] = prog
        return prog

    # ---- inference --------------------------------------------------------------------
    def _acquire(self) -> None:
        """Wait for the previous slow verdict (run it here if nobody else will)."""
        while not self._gate.acquire(timeout=0.002):
            if self._verifier.mode is VerifierMode.EXTERNAL:
                self._verifier.run_pending(None)

    def _admit(self, x: Any) -> tuple[torch.Tensor, ...]:
        """Structure, dtype, shape and device on the host; float values are checked in the
        graph (`_reject_values`), so the clean path has no extra synchronisation. Integer
        inputs with a valid range are checked here, before the replay: an embedding index
        outside its table is a device-side assert that would end the CUDA context."""
        try:
            xs = self._inputs.normalize(x)
            if self._inputs.has_int_ranges:
                self._inputs.check_values(xs, exact_only=True)
            return xs
        except InputError as exc:
            with self._stats_lock:
                self._stats["rejected_inputs"] += 1
                self._stats["input_out_of_range"] += exc.kind == "out_of_range"
            raise

    def _reject_values(self, xs: tuple[torch.Tensor, ...]) -> None:
        """The input flag was raised: the InputError the CPU backend gives (counted as a
        rejected input, never as a fault)."""
        with self._stats_lock:
            self._stats["rejected_inputs"] += 1
            self._stats["input_out_of_range"] += 1
        self._inputs.check_values(xs)  # raises with what is wrong where
        raise InputError("an input lies outside its declared box (device check)",
                         "out_of_range")

    def infer(self, x: Any, wait: bool = True):
        """One protected inference: a graph replay; clean flags are the verdict.

        InputError for an input that does not fit or lies outside its box (module docstring)."""
        if self._closed:
            raise RuntimeError("this ProtectedModel is closed; call protect() again")
        xs = self._admit(x)
        self._acquire()
        try:
            prog = self._program(xs)
            plan, epoch, i = self._plan, self._editor.epoch, next(self._ids)
            check_w, window = self._weight_schedule(i)
            t0 = time.perf_counter()
            out, values = prog.run(xs, check_w)
            t1 = time.perf_counter()
            if self.fault_sites:
                prog.program.disarm()  # a transient fault fires once
            job = Job(i, prog.static_in, out, tuple(values), t0, t1, epoch, check_w,
                      window, plan)
            raised = bool(prog.program.flags_host.any())
            job.program = prog
            job.failed = prog.program.failed_slots() if raised else []
            if any(s.kind.input_error for s in job.failed):
                self._reject_values(xs)
            if not raised and self._editor.stale(epoch) == [] and plan is self._plan:
                st = FaultStatus(i, verified=True, checks_run=prog.program.checks_run,
                                 weights_checked=check_w, forward_s=t1 - t0)
                st.verify_s = time.perf_counter() - t1
                self._count(st)
                job.future.set_result(st)
                self._gate.release()
                result = _clone(out)
                self.last_raw_output = result
                return InferenceResult(result, st, job.future)
            self.device_alarms += raised
            raw = _clone(out)
            self.last_raw_output = raw
            job.output = raw
            if wait:
                with torch.inference_mode():
                    st = self._verify(job)
                job.future.set_result(st)
                self._gate.release()
                return InferenceResult(st.output if st.output is not None else raw, st,
                                       job.future)
            fut = self._verifier.submit(job)
            fut.add_done_callback(lambda _f: self._gate.release())
            return InferenceResult(raw, None, fut)
        except BaseException:
            if self._gate.locked():
                self._gate.release()
            raise

    # ---- verdicts on the slow path ------------------------------------------------------
    def _verify(self, job: Job) -> FaultStatus:
        """A raised flag: restore the weights, replay, until two runs tell the story.

        With golden weights the program is deterministic, so a replay is a re-computation of
        the whole inference (model-level DMR): a flag or output that does not come back was a
        transient fault (detected, the replay's result is the repaired one); a range alarm that
        comes back with the same output on golden weights is the input's doing
        (`confirm_range_alarms`: a note, not a fault). Weight flags are repaired from the golden
        copies first. At most `max_reruns` + 1 replays, else the result is unverified.
        """
        prog: _Captured = job.program
        t_v = time.perf_counter()
        st = FaultStatus(job.inference_id, forward_s=job.t_end - job.t_start,
                         queue_s=t_v - job.t_end, checks_run=prog.program.checks_run,
                         weights_checked=job.check_weights)
        # a raised flag is a Slot: its kind object says what it means (`core.verify.kinds`)
        failed = [f for f in job.failed if not f.kind.input_error]
        st.input_out_of_range = len(failed) < len(job.failed)
        prev_out, transient = job.output, False
        detections: dict[Slot, Any] = {}  # its detection (None: reported by the repair)
        with self._editor.lock, torch.inference_mode():
            for _attempt in range(max(1, self.config.max_reruns) + 1):
                rep = self._editor.restore(None)
                for name, n in rep.elements.items():
                    st.repaired[name] = st.repaired.get(name, 0) + n
                out, _ = prog.run(prog.static_in, True)
                again = [f for f in prog.program.failed_slots() if not f.kind.input_error]
                same = again == failed and _equal(out, prev_out)
                confirm = same and self.config.confirm_range_alarms
                for f in failed:
                    if not (confirm and f.kind.confirmable):
                        detections.setdefault(f, f.detection())
                if not again or (confirm and all(f.kind.confirmable for f in again)):
                    if again:
                        st.notes.append(f"{', '.join(f.label for f in again)}: the range alarm "
                                        "recurs with the same output on golden weights: "
                                        "input-driven, not a fault")
                    transient = bool(detections) or bool(st.repaired)
                    st.verified = not st.input_out_of_range
                    prev_out = out
                    break
                failed, prev_out = again, _clone(out)
            else:
                st.error = "faults persist after re-runs; result unverified"
        st.detections = [d for d in detections.values() if d is not None]
        st.detections += [WEIGHTS.repaired(prog.program.reader_of(n), n, k)
                          for n, k in st.repaired.items()]
        if st.detections or transient or st.error:
            st.output = _clone(prev_out)
            st.rerun_from = "input (graph replay)"
            st.detection_latency_s = time.perf_counter() - job.t_start
        st.repair_s = time.perf_counter() - t_v
        self._count(st)
        return st

    def reanalyze(self, calibration=None, accept_weights: bool = False) -> CheckPlan:
        """As on the CPU; the programs are captured again for the new plan."""
        self._acquire()
        try:
            plan = super().reanalyze(calibration, accept_weights)
            self._program(self._example)
            return plan
        finally:
            self._gate.release()

    # ---- campaigns ----------------------------------------------------------------------
    def activation_sites(self) -> dict[str, int]:
        """Injectable activations of the example shape: node name -> elements."""
        sites = self._program(self._example).program.sites
        if sites is None:
            raise RuntimeError("protect with fault_sites=True to inject activation faults")
        return dict(zip(sites.names, sites.numel, strict=True))

    def arm_activation_fault(self, name: str, index: int, bit: int) -> None:
        """Flip `bit` of element `index` of activation `name` in the next inference only
        (of the example input's shape)."""
        self._program(self._example).program.arm(name, index, bit)

    def disarm(self) -> None:
        """Clear armed activation faults (after the inference they were meant for)."""
        for p in self._programs.values():
            p.program.disarm()

