"""What the node runs inputs through: a SAVE `ProtectedModel`, or the bare model as a baseline.

The node sees one small interface (`Backend`): infer an input, get the output at once and a
future of its `Verdict`; run the pending checks; recover, reanalyze, inject faults. The verdict
is the node's view of a `FaultStatus`: the level, message and key/values `~/fault_status` shows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch
from diagnostic_msgs.msg import DiagnosticStatus

from save_ros.errors import UserError
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.params import Isolation, NodeConfig

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


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
    """Interface the node uses; see `BareBackend` and `ProtectedBackend`."""

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


class BareBackend(Backend):
    """The model without SAVE: the latency baseline; every result is reported unverified."""

    def __init__(self, loaded: LoadedModel, device: str) -> None:
        self.device = torch.device(device)
        self.module = loaded.module.to(self.device)
        self._lock = threading.Lock()
        self._logs: list = []  # undo logs of injected faults, newest last

    def describe(self) -> str:
        """One line for the start-up log."""
        return f"UNPROTECTED bare model on {self.device}"

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, Future]:
        """Run the model; the verdict is ready at once and says 'not verified'."""
        with self._lock, torch.no_grad():
            output = self.module(x.to(self.device)).cpu()
        future: Future = Future()
        resolve(future, Verdict(verified=False, level=OK, message="unprotected (protect=false)",
                                values={"verified": False, "protected": False}))
        return output, future

    def inject(self, count: int, target: str, seed: int, bits: tuple[int, ...]) -> str:
        """Flip bits in any weight (nothing is reliable here): the unprotected baseline."""
        from save_ros.faults.faultmodels import RandomFlips
        from save_ros.faults.inject import inject_weights
        from save_ros.faults.targets import Target

        pattern = ("*",) if target == "weights" else (target,)
        with self._lock:
            try:
                log = inject_weights(self.module, RandomFlips(count, bits or None),
                                     Target(tensors=pattern), seed)
            except ValueError as exc:
                raise BackendError(f"cannot inject into {target!r}: {exc}") from exc
            self._logs.append(log)
        return flips_report(log)

    def recover(self) -> str:
        """Undo every injected flip (the bare model has no golden copies, only undo logs)."""
        with self._lock:
            flips = sum(len(log) for log in self._logs)
            while self._logs:
                self._logs.pop().undo(self.module)
        return f"undid {flips} injected flips"


def make_backend(cfg: NodeConfig, loaded: LoadedModel, logger,
                 on_event: Callable[[object], None] | None = None) -> Backend:
    """The backend the parameters ask for; `on_event` gets worker events (isolation=process)."""
    if cfg.protect and loaded.why_unprotectable:
        raise BackendError(f"{loaded.name} cannot be protected: {loaded.why_unprotectable}; "
                           "or serve it unprotected with protect:=false")
    if cfg.isolation is Isolation.PROCESS:
        from save_ros.ros.failover_backend import FailoverBackend

        return FailoverBackend(cfg, loaded, logger, on_event)
    if not cfg.protect:
        return BareBackend(loaded, cfg.device)
    from save_ros.ros.protected_backend import ProtectedBackend

    return ProtectedBackend(cfg, loaded, logger)


def flips_report(log) -> str:
    """JSON summary of an UndoLog: how many flips, which tensors, the first few records."""
    records = list(log)
    return json.dumps({
        "flips": len(records),
        "tensors": sorted({r.tensor for r in records}),
        "first": [{"tensor": r.tensor, "index": r.flat_index, "bit": r.bit}
                  for r in records[:8]],
    })
