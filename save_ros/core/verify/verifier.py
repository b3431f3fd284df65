"""The verifier queue: verdicts are produced off the inference thread.

The inference thread only runs the model and queues a `Job` (the input, the output and every
saved value). A `Verifier` takes jobs off the queue, either on its own thread
(`mode="thread"`) or when someone calls `run_pending(timeout)` (`mode="external"`, e.g. a ROS
executor thread), and resolves each job's `Future` with the `FaultStatus` its handler returns
(the `ProtectedModel`'s: the layer checks of `checker`, then Edit where one failed).
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

from save_ros.core.verify.status import FaultStatus


class VerifierMode(str, enum.Enum):
    """Who runs the checks."""

    THREAD = "thread"  # the runtime's own verifier thread
    EXTERNAL = "external"  # whoever calls `run_pending_checks(timeout)`


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
    plan: Any  # the CheckPlan in force when the inference ran
    future: Future = field(default_factory=Future)
    sums: Any = None  # (write sums, read sums) of the plan's memory checksums, else None


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
