"""SAVE Verification: what a verdict says, and the verifier that produces verdicts off the hot path.

The inference thread only runs the model and queues a `Job` (the input, the output and every
saved value). A `Verifier` takes jobs off the queue, either on its own thread
(`mode="thread"`) or when someone calls `run_pending(timeout)` (`mode="external"`, e.g. a ROS
executor thread), and resolves each job's `Future` with a `FaultStatus`. What a job checks is
decided by the `ProtectedModel` that owns the verifier (see protect.py); this module holds the
records and the queue.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch


class VerifierMode(str, enum.Enum):
    """Who runs the checks."""

    THREAD = "thread"  # the runtime's own verifier thread
    EXTERNAL = "external"  # whoever calls `run_pending_checks(timeout)`


@dataclass
class Detection:
    """One failed check: where, which tensor, which check, and what it saw."""

    layer: str
    tensor: str
    check: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """Plain data for JSON and ROS messages."""
        return {"layer": self.layer, "tensor": self.tensor, "check": self.check,
                "detail": self.detail}


@dataclass
class FaultStatus:
    """The verdict on one inference: checked, faulty or not, what was repaired, how long it took.

    `verified` is True when every planned check passed (after repair, if one was needed) and the
    input lay inside the declared range; the result is then the fault-free one (bit-exact where
    checks are exact, else within the stated ABFT tolerance). With a weight-check schedule other
    than every inference (`weight_check_interval` > 1 or `weight_check_budget_s`), a weight flip
    that no layer check sees stays unseen until its chunk's turn (`weights_checked` says whether
    this inference had one). `output` holds the corrected output when Edit re-ran part of the
    model, else None (the immediate output was right).
    """

    inference_id: int
    verified: bool = False
    input_out_of_range: bool = False
    detections: list[Detection] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)  # tensor -> elements restored
    rerun_from: str | None = None
    output: torch.Tensor | None = None
    checks_run: int = 0
    weights_checked: bool = False
    notes: list[str] = field(default_factory=list)  # benign events (range excursions confirmed)
    forward_s: float = 0.0  # the inference itself
    queue_s: float = 0.0  # waiting for the verifier
    verify_s: float = 0.0  # the checks
    repair_s: float = 0.0  # restore + re-run + re-check
    detection_latency_s: float | None = None  # inference start -> verdict, when faulty
    error: str | None = None  # the verifier itself failed (the result is then unverified)

    @property
    def faulty(self) -> bool:
        """True when any check failed (a fault was detected)."""
        return bool(self.detections)

    @property
    def repaired_ok(self) -> bool:
        """True when a fault was detected and the repaired result passed its checks."""
        return self.faulty and self.verified

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and ROS messages (without the output tensor)."""
        return {
            "inference_id": self.inference_id, "verified": self.verified,
            "input_out_of_range": self.input_out_of_range,
            "detections": [d.to_dict() for d in self.detections],
            "repaired": dict(self.repaired), "rerun_from": self.rerun_from,
            "checks_run": self.checks_run, "weights_checked": self.weights_checked,
            "notes": list(self.notes), "forward_s": self.forward_s, "queue_s": self.queue_s,
            "verify_s": self.verify_s, "repair_s": self.repair_s,
            "detection_latency_s": self.detection_latency_s, "error": self.error,
        }


@dataclass
class Job:
    """One inference waiting for its verdict."""

    inference_id: int
    inputs: tuple[torch.Tensor, ...]
    output: Any
    values: tuple[Any, ...]
    t_start: float
    t_end: float
    epoch: int  # weight-repair epoch when the inference started
    check_weights: bool
    weight_window: tuple[int, int | None]
    runtime: Any  # the check plan in force when the inference ran
    future: Future = field(default_factory=Future)


class Verifier:
    """A queue of jobs and who drains it: a thread of its own, or an external caller."""

    def __init__(self, handler: Callable[[Job], FaultStatus], mode: VerifierMode | str) -> None:
        self.mode = VerifierMode(mode)
        self._handler = handler
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.mode is VerifierMode.THREAD:
            self._thread = threading.Thread(target=self._loop, name="save-verifier", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queue a job; its future resolves with the FaultStatus."""
        if self._closed:
            raise RuntimeError("this ProtectedModel is closed; create a new one with protect()")
        self._queue.put(job)
        return job.future

    def pending(self) -> int:
        """Jobs waiting (approximate)."""
        return self._queue.qsize()

    def _run(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(self._handler(job))
        except BaseException as exc:  # the caller sees it through the future
            job.future.set_exception(exc)

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                job = self._queue.get()
                if job is None:
                    return
                self._run(job)

    def run_pending(self, timeout: float | None = None) -> int:
        """Run queued checks until the queue is empty or `timeout` s passed; return how many."""
        if self.mode is not VerifierMode.EXTERNAL:
            raise RuntimeError("run_pending_checks is for verifier='external'; the thread "
                               "verifier drains its own queue")
        deadline = None if timeout is None else time.perf_counter() + timeout
        n = 0
        with torch.inference_mode():
            while deadline is None or time.perf_counter() < deadline:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    break
                self._run(job)
                n += 1
        return n

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting jobs; let the thread finish what is queued."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
