"""The failover supervisor's dispatcher: one request at a time to the active worker, and failover.

`DispatchLoop` is the half of `save_ros.failover.supervisor.FailoverModel` that its dispatcher
thread runs: it sends the next queued request to the active worker, reads the worker's answers
and resolves their Futures, and detects a dead worker (pipe closed, process gone) or a hung one
(a request past its timeout, the watchdog). On a failure it kills the worker, puts the requests
it held back at the head of the queue (or drops one that took down `max_attempts` workers) and
promotes a warm standby. The state it works on (queue, in-flight requests, active worker, pool,
counters, the condition that guards them) is built by `FailoverModel.__init__`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait as wait_any

import torch

from save_ros.failover.config import FailoverConfig
from save_ros.failover.events import (
    EventKind,
    FailoverEvent,
    RequestDroppedError,
    describe_exit,
)
from save_ros.failover.pool import StandbyPool
from save_ros.failover.process import WorkerProcess
from save_ros.failover.requests import FailoverResult, Request, fail

log = logging.getLogger(__name__)


class DispatchLoop:
    """The dispatcher thread of `FailoverModel`: send, answer, detect death and hangs, fail over."""

    # built by FailoverModel.__init__; guarded by _cond
    config: FailoverConfig
    _cond: threading.Condition
    _pending: deque[Request]
    _inflight: dict[int, Request]
    _awaiting: Request | None
    _active: WorkerProcess | None
    _failure: tuple[float, int, bool] | None
    _closing: bool
    _counts: dict[str, int]
    _pool: StandbyPool
    _wake_r: int
    _emit: Callable[[FailoverEvent], None]  # FailoverModel's: records and reports an event

    def _dispatch_loop(self) -> None:
        # This thread is the supervisor: an unexpected error is logged and the loop goes on.
        while not self._closing:
            try:
                self._dispatch_once()
            except Exception:
                log.exception("failover: dispatcher error (continuing)")
                time.sleep(0.05)

    def _dispatch_once(self) -> None:
        """Send one request if the worker is free, then wait for an answer, death or timeout."""
        request = None
        with self._cond:
            if self._closing:
                return
            if self._active is None and not self._promote():
                self._cond.wait(0.1)
                return
            worker = self._active
            if self._awaiting is None and self._pending:
                request = self._pending.popleft()
                self._cond.notify_all()  # room in the queue
                request.attempts += 1
                request.sent_at = time.monotonic()
                self._awaiting = request
                self._inflight[request.id] = request
            deadline = min((r.sent_at + r.timeout_s for r in self._inflight.values()),
                           default=None)
        if request is not None:
            # A request whose output was delivered is re-run only for its verdict.
            wait = request.wait or request.output_done
            message = (("infer", request.id, request.array, wait) if request.call is None
                       else ("call", request.id, *request.call))
            try:
                worker.send(message)
            except (OSError, ValueError):
                self._on_failure(worker, EventKind.CRASH, "pipe to worker broken")
                return
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        watched = [worker.conn, worker.process.sentinel, self._wake_r]
        if not worker.death_closed:
            watched.append(worker.death)
        ready = wait_any(watched, timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        if worker.death in ready and worker.read_fault_report():
            # the worker's fault handler spoke from inside its signal handler: it is dying
            self._drain(worker)  # answers it sent before the fault still count
            self._on_failure(worker, EventKind.CRASH,
                             f"killed by {worker.fatal_signal()}, reported by its fault handler",
                             early=True)
            return
        dead = False
        if worker.conn in ready or worker.process.sentinel in ready:
            dead = not self._drain(worker)
        if dead or worker.process.sentinel in ready:
            self._on_failure(worker, EventKind.CRASH,
                             worker.fatal or "worker process died")
            return
        with self._cond:
            overdue = [r for r in self._inflight.values()
                       if time.monotonic() - r.sent_at > r.timeout_s]
        if overdue:
            self._on_failure(worker, EventKind.HANG,
                             f"request {overdue[0].id} unanswered after "
                             f"{overdue[0].timeout_s} s (watchdog)")

    def _drain(self, worker: WorkerProcess) -> bool:
        """Handle every message waiting from the worker; False when its pipe is closed."""
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, worker: WorkerProcess, message: tuple) -> None:
        op, rid = message[0], message[1]
        if op == "fatal":
            worker.fatal = f"worker quit, device context lost: {message[2]}"
            return
        if op == "crashing":
            worker.crashed_at = message[2]  # CLOCK_MONOTONIC is one clock for all processes
            return
        with self._cond:
            request = self._inflight.get(rid)
            if request is None:
                return  # an answer to a request already failed over or closed
            if request is self._awaiting and op in ("output", "error", "result"):
                self._awaiting = None
            done = True
            if op == "result":
                request.output_done = True
                request.future.set_result(message[2])
            elif op == "output":
                _, _, array, status, verdict_follows, (received, computed) = message
                if request.output_done:  # a re-run for the verdict only
                    if request.verdict is not None and not request.verdict.done():
                        request.verdict.set_result(status)
                else:
                    request.output_done = True
                    self._counts["answered"] += 1
                    now = time.monotonic()
                    timeline = {"submitted": request.submitted_at, "sent": request.sent_at,
                                "worker_received": received, "worker_done": computed,
                                "answered": now}
                    if request.failure is not None:
                        crashed, timeline["detected"] = request.failure
                        if crashed is not None:
                            timeline["crashed"] = crashed
                    request.future.set_result(FailoverResult(
                        torch.from_numpy(array), status, request.verdict, request.id, worker.pid,
                        request.attempts, now - request.submitted_at, timeline))
                    if request.verdict is not None and not verdict_follows:
                        request.verdict.set_result(status)
                    done = not verdict_follows
            elif op == "verdict" and request.verdict is not None:
                request.verdict.set_result(message[2])
            elif op == "error":
                fail(request, message[2])
            if done:
                del self._inflight[rid]

    def _on_failure(self, worker: WorkerProcess, kind: EventKind, detail: str,
                    early: bool = False) -> None:
        """The active worker died or hung: kill it, requeue its requests, hand over.

        `early`: its fault handler reported a fatal signal; the process is still being torn
        down, so it is reaped in the background and the standby takes over at once."""
        failed_at = time.monotonic()
        worker.kill(wait=not early)
        how = "being torn down" if early else describe_exit(worker.process.exitcode)
        dropped = []
        with self._cond:
            self._active = None
            self._awaiting = None
            held = sorted(self._inflight.values(), key=lambda r: r.id)
            self._inflight.clear()
            for request in reversed(held):
                request.failure = (worker.crashed_at, failed_at)
                if request.attempts >= self.config.max_attempts:
                    dropped.append(request)
                else:
                    self._pending.appendleft(request)  # first in line, in the original order
                    self._counts["resubmitted"] += 1
            self._failure = (failed_at, worker.pid, bool(self._pool.idle))
            self._cond.notify_all()
        if early:  # after the hand-over: logging is not on the crashed request's path
            log.error("failover: worker %s crashed; its fault handler wrote:\n%s", worker.pid,
                      _head(worker.fault_report))
        injected = "" if worker.crashed_at is None else "injected crash, "
        self._emit(FailoverEvent(kind, worker.pid, f"{injected}{detail} ({how}); "
                                 f"{len(held) - len(dropped)} request(s) resubmitted",
                                 duration_s=None if worker.crashed_at is None
                                 else failed_at - worker.crashed_at, detected_at=failed_at))
        for request in dropped:
            fail(request, RequestDroppedError(
                f"request {request.id} took down {request.attempts} workers; dropped "
                f"(max_attempts={self.config.max_attempts}): check this input"))
            self._emit(FailoverEvent(EventKind.REQUEST_DROPPED, worker.pid,
                                     f"request {request.id} after {request.attempts} attempts"))

    def _promote(self) -> bool:
        """(Lock held) Make a ready standby the active worker; False when none is ready."""
        self._active = self._pool.take()  # the pool then starts the next standby
        if self._active is None:
            return False
        if self._failure is not None:
            failed_at, old_pid, warm = self._failure
            self._failure = None
            event = FailoverEvent(
                EventKind.FAILOVER, old_pid,
                f"worker {self._active.pid} took over from {old_pid} "
                f"({'warm standby' if warm else 'cold start'})",
                duration_s=time.monotonic() - failed_at, warm=warm, new_pid=self._active.pid)
            self._emit(event)  # the condition's lock is re-entrant
        return True


def _head(report: str, lines: int = 12) -> str:
    """The first lines of a fault-handler report (the signal and the innermost frames)."""
    kept = report.strip().splitlines()
    return "\n".join(kept[:lines] + ([f"... ({len(kept) - lines} more lines)"]
                                     if len(kept) > lines else []))
