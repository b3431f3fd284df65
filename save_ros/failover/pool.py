"""The standby pool: warm workers started one at a time in the background, dead ones replaced."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from save_ros.failover.config import FailoverConfig
from save_ros.failover.events import EventKind, FailoverEvent, describe_exit
from save_ros.failover.packed import PackedWeights
from save_ros.failover.process import WorkerProcess
from save_ros.failover.worker import WorkerSpec

MAX_BACKOFF_S = 8.0


class StandbyPool:
    """Keeps `wanted()` ready workers idle; shares the supervisor's condition (and its lock)."""

    def __init__(self, ctx: Any, spec: WorkerSpec, shared_model: PackedWeights | None,
                 config: FailoverConfig, cond: threading.Condition, wanted: Callable[[], int],
                 emit: Callable[[FailoverEvent], None], wake: Callable[[], None]) -> None:
        self._ctx, self._spec, self._shared_model = ctx, spec, shared_model
        self._config, self._cond, self._wanted, self._emit, self._wake = (config, cond, wanted,
                                                                         emit, wake)
        self.idle: deque[WorkerProcess] = deque()  # ready, oldest first
        self.starting: WorkerProcess | None = None
        self.start_error: str | None = None  # why the very first worker could not start
        self.taken = False  # a worker was taken at least once
        self.taken_at = 0.0  # monotonic time of the last take
        self.closing = False  # set by the supervisor, under the lock
        self._thread = threading.Thread(target=self._loop, name="failover-spawn", daemon=True)

    def start(self) -> None:
        """Start the background thread that starts workers."""
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the background thread (after `closing` was set)."""
        self._thread.join(timeout)

    def take(self) -> WorkerProcess | None:
        """(Lock held) The oldest live ready worker, or None; the pool then starts another."""
        self.drop_dead()
        if not self.idle:
            return None
        self.taken = True
        self.taken_at = time.monotonic()
        self._cond.notify_all()
        return self.idle.popleft()

    def drop_dead(self) -> None:
        """(Lock held) A standby that died while idle is reported and replaced."""
        for worker in [w for w in self.idle if not w.process.is_alive()]:
            self.idle.remove(worker)
            worker.kill()
            self._emit(FailoverEvent(EventKind.CRASH, worker.pid,
                                     f"idle standby {describe_exit(worker.process.exitcode)}",
                                     role="standby"))  # the condition's lock is re-entrant

    def _loop(self) -> None:
        backoff = self._config.restart_backoff_s
        while True:
            with self._cond:
                while not self.closing and len(self.idle) >= self._wanted():
                    self._cond.wait(0.2)
                    self.drop_dead()
                # let a takeover's first inference run before a new process starts beside it
                self._cond.wait_for(lambda: self.closing, max(
                    0.0, self.taken_at + self._config.respawn_delay_s - time.monotonic()))
                if self.closing:
                    return
            worker, error = self._start_one()
            if worker is None:
                if error is None:
                    return  # closing
                self._emit(FailoverEvent(EventKind.START_FAILED, None, error, role="standby"))
                with self._cond:
                    if not self.taken:
                        self.start_error = error  # the constructor raises it
                        self._cond.notify_all()
                        return
                    self._cond.wait_for(lambda: self.closing, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = self._config.restart_backoff_s
            with self._cond:
                if not self.closing:
                    self.idle.append(worker)
                    self._cond.notify_all()
            if self.closing:
                worker.stop()
                return
            self._emit(FailoverEvent(EventKind.STANDBY_READY, worker.pid,
                                     f"ready in {worker.info['ready_s']:.3f} s", role="standby",
                                     duration_s=worker.info["ready_s"]))
            self._wake()

    def _start_one(self) -> tuple[WorkerProcess | None, str | None]:
        """Start one worker and wait until it is ready: (worker, None) or (None, why)."""
        try:
            worker = WorkerProcess(self._ctx, self._spec, self._shared_model)
        except Exception as exc:  # e.g. a model that does not pickle (TorchScript)
            return None, (f"cannot start a worker: {type(exc).__name__}: {exc}; pass a "
                          "ModelSource the worker can load instead")
        with self._cond:
            self.starting = worker
        try:
            error = worker.wait_ready(self._config.startup_timeout_s, lambda: self.closing)
        finally:
            with self._cond:
                self.starting = None
        if error is not None or self.closing:
            return None, error
        return worker, None
