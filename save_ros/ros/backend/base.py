"""The interface the node runs inputs through (`Backend`), and the verdict it reports (`Verdict`).

The node sees one small interface: infer an input, get the output at once and a future of its
`Verdict`; run the pending checks; recover, reanalyze, inject faults. The verdict is the node's
view of a core `FaultStatus` (`to_verdict`): the level, message and key/values `~/fault_status`
shows.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch
from diagnostic_msgs.msg import DiagnosticStatus

from save_ros.core.verify import FaultStatus
from save_ros.errors import UserError

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
MAX_LISTED = 4  # detections / repaired tensors listed by name in one status


class BackendError(UserError, RuntimeError):
    """The model cannot be protected, or a service request cannot be done; says why."""


@dataclass
class Verdict:
    """What the node reports for one inference."""

    verified: bool
    level: bytes
    message: str
    detected: int = 0
    repaired: int = 0
    unrepaired: int = 0
    publishable: bool = False  # may a `verified`-policy node publish this result
    output: torch.Tensor | None = None  # the re-computed output after a repair
    values: dict[str, object] = field(default_factory=dict)

    @classmethod
    def failed(cls, reason: str) -> Verdict:
        """An inference whose verification did not complete."""
        return cls(verified=False, level=ERROR, message=reason, values={"verified": False})

    @classmethod
    def unprotected(cls) -> Verdict:
        """An inference of the bare model (protect=false): nothing verifies it."""
        return cls(verified=False, level=OK, message="unprotected (protect=false)",
                   values={"verified": False, "protected": False})


def resolve(future: Future, value: Verdict | None = None,
            error: BaseException | None = None) -> None:
    """Complete a verdict future once; a second completion (shutdown race) is ignored."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


class Backend:
    """Interface the node uses: `BareBackend`, `ProtectedBackend`, `FailoverBackend`."""

    def describe(self) -> str:
        """One line for the start-up log."""
        raise NotImplementedError

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, Future]:
        """The output now, and a future of its Verdict."""
        raise NotImplementedError

    def run_pending_checks(self, timeout: float) -> None:
        """Run queued checks (a no-op where nothing is queued)."""

    def recover(self) -> str:
        """Repair from golden copies; a one-line report."""
        raise BackendError("recover needs protect=true")

    def reanalyze(self, calibration: torch.Tensor | None = None) -> str:
        """Redo Selection and Allocation (with new calibration inputs); a one-line report."""
        raise BackendError("reanalyze needs protect=true")

    def inject(self, count: int, target: str, seed: int, bits: tuple[int, ...]) -> str:
        """Flip bits in normal-memory tensors; a JSON report of the flips."""
        raise BackendError("fault injection needs protect=true")

    def inject_crash(self, kind: str) -> str:
        """Make the process that runs the model crash (or hang); a one-line report."""
        raise BackendError("inject_crash needs isolation=process: with isolation=none the model "
                           "runs in the node's own process, which the crash would take down")

    def close(self) -> None:
        """Release threads and memory."""


def hardware_id(device: str) -> str:
    """The device as /diagnostics names it: `cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def flips_report(log) -> str:
    """JSON summary of an UndoLog: how many flips, which tensors, the first few records."""
    records = list(log)
    return json.dumps({
        "flips": len(records),
        "tensors": sorted({r.tensor for r in records}),
        "first": [{"tensor": r.tensor, "index": r.flat_index, "bit": r.bit}
                  for r in records[:8]],
    })


def to_verdict(st: FaultStatus) -> Verdict:
    """The node's report of one FaultStatus: level, message and key/values."""
    detected = len(st.detections)
    if st.verified:
        level = WARN if detected else OK
        message = (f"fault detected and repaired ({detected} failed checks)" if detected
                   else "verified")
    elif st.error:
        level, message = ERROR, f"verifier failed: {st.error}"
    elif detected:
        level, message = ERROR, f"fault detected, NOT repaired ({detected} failed checks)"
    elif st.input_out_of_range:
        level, message = ERROR, "input outside the declared range: result not verified"
    else:
        level, message = ERROR, "not verified"
    values: dict[str, object] = {
        "verified": st.verified,
        "inference_id": st.inference_id,
        "detected": detected,
        "repaired": len(st.repaired),
        "checks_run": st.checks_run,
        "weights_checked": st.weights_checked,
        "input_out_of_range": st.input_out_of_range,
        "forward_ms": st.forward_s * 1e3,
        "queue_ms": st.queue_s * 1e3,
        "verify_ms": st.verify_s * 1e3,
        "repair_ms": st.repair_s * 1e3,
    }
    if detected:
        first = st.detections[0]
        values["detected_layer"] = first.layer
        values["detected_tensor"] = first.tensor
        values["detected_check"] = first.check
        values["detail"] = first.detail
        values["detections"] = [f"{d.layer}/{d.tensor}/{d.check}"
                                for d in st.detections[:MAX_LISTED]]
    if st.repaired:
        values["repaired_tensors"] = [f"{n}({k})" for n, k in
                                      list(st.repaired.items())[:MAX_LISTED]]
        values["rerun_from"] = st.rerun_from or ""
    if st.detection_latency_s is not None:
        values["detection_latency_ms"] = st.detection_latency_s * 1e3
    if getattr(st, "restore_overlap", ""):  # a weight restore overlapped: verified or re-run
        values["restore_overlap"] = st.restore_overlap
    if st.error:
        values["error"] = st.error
    return Verdict(verified=st.verified, level=level, message=message, detected=detected,
                   repaired=len(st.repaired), unrepaired=int(detected > 0 and not st.verified),
                   publishable=st.verified, output=(st.output.detach().cpu()
                                                    if st.output is not None else None),
                   values=values)
