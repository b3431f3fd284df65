"""`FailoverModel`: run inference in a worker process, and fail over to a warm standby on a crash.

A GPU fault (illegal address, a dead CUDA context, a segfault in a kernel) kills the process that
runs the model. Here the model runs in a worker process; this object, in the ROS-facing process,
keeps an active worker and a warm standby (model loaded and analysed, weights mapped from the
one shared copy), a bounded input queue that survives failover, and a watchdog for hangs. When
the active worker dies or hangs, the requests it held go to the standby, which becomes active,
and a new standby starts in the background. It has the inference API of `ProtectedModel`.

Threads: the dispatcher (sends requests to the active worker, reads answers, detects death and
hangs; its loop is `save_ros.failover.dispatch.DispatchLoop`), the standby pool's (keeps the
wanted number of ready workers), and the reporter (calls the event callback, so a slow callback
never delays inference).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch
import torch.multiprocessing as tmp

from save_ros.failover import remote
from save_ros.failover.config import ConfigError, FailoverConfig, StartMethod, WeightSharing
from save_ros.failover.crash import CrashKind, CrashUnavailableError
from save_ros.failover.dispatch import DispatchLoop
from save_ros.failover.events import (
    ClosedError,
    EventKind,
    FailoverEvent,
    FailoverStateError,
    QueueFullError,
    WorkerStartError,
)
from save_ros.failover.pool import StandbyPool
from save_ros.failover.process import WorkerProcess
from save_ros.failover.requests import FailoverResult, Request, fail, to_array
from save_ros.failover.weights import ModelSource, prepare_shared, protect_parts
from save_ros.failover.worker import WorkerSpec

log = logging.getLogger(__name__)
_HISTORY = 1000  # events kept for `events()`


class FailoverModel(DispatchLoop):
    """A model served by worker processes with a warm standby; survives worker crashes and hangs."""

    def __init__(self, source: ModelSource | str | torch.nn.Module,
                 example_input: Any,
                 input_range: Any = None, config: FailoverConfig | None = None,
                 on_event: Callable[[FailoverEvent], None] | None = None,
                 protect_config: Any = None) -> None:
        self.config = config or FailoverConfig()
        module = source if isinstance(source, torch.nn.Module) else None
        if module is not None and (self.config.weight_sharing is not WeightSharing.SHARED_MEMORY
                                   or not self.config.share_analysis):
            raise ConfigError("a model instance reaches workers only through shared memory, "
                              "analysed once here: use weight_sharing='shared_memory' and "
                              "share_analysis=True, or pass a ModelSource workers can load")
        self.source = (ModelSource.named(source) if isinstance(source, str)
                       else ModelSource.instance(module) if module is not None else source)
        self._on_event = on_event
        self._ctx = tmp.get_context(self.config.start_method.value)
        if self.config.start_method is StartMethod.FORKSERVER:
            # The fork server imports torch (and the main module, as multiprocessing does by
            # default) once; every worker forks from it warm instead of importing them again.
            # No effect when this process already started a fork server.
            self._ctx.set_forkserver_preload(["__main__", "torch", "save_ros.failover.worker"])
        # The parent's view of the shared weights (None when every worker loads its own).
        shared = (None if self.config.weight_sharing is WeightSharing.NONE
                  else module if module is not None else self.source.load())
        self._packed = (None if shared is None
                        else prepare_shared(shared, self.config.weight_sharing,
                                            self.config.device))
        self.model = shared  # runs on the packed (shared) memory
        example = to_array(example_input)
        self._spec = WorkerSpec(self.source, example, self.config, input_range,
                                *protect_parts(self.config, self.model, self.source, example,
                                                input_range, protect_config))
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._inflight: dict[int, Request] = {}
        self._awaiting: Request | None = None  # sent, output not yet back
        self._active: WorkerProcess | None = None
        self._failure: tuple[float, int, bool] | None = None  # (when, pid, standby was ready)
        self._closing = False
        self._ids = itertools.count()
        self._history: deque[FailoverEvent] = deque(maxlen=_HISTORY)
        self._counts = {k.value: 0 for k in EventKind} | {"answered": 0, "resubmitted": 0}
        self._events: queue.SimpleQueue[FailoverEvent | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pool = StandbyPool(self._ctx, self._spec, self._packed, self.config, self._cond,
                                 self._wanted, self._emit, self._wake)
        self._reporter = threading.Thread(target=self._report_loop, name="failover-report",
                                          daemon=True)
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="failover-dispatch",
                                            daemon=True)
        self._reporter.start()
        self._pool.start()
        self._dispatcher.start()
        with self._cond:
            ok = self._cond.wait_for(lambda: self._active is not None or self._pool.start_error,
                                     self.config.startup_timeout_s)
            error = self._pool.start_error if self._active is None else None
        if not ok or error:
            self.close()
            raise WorkerStartError(
                f"the first worker for {self.source} did not start: "
                f"{error or f'not ready within {self.config.startup_timeout_s} s'}")

    @classmethod
    def for_model(cls, name: str, config: FailoverConfig | None = None,
                  on_event: Callable[[FailoverEvent], None] | None = None,
                  protect_config: Any = None) -> FailoverModel:
        """A bundled reference model by name; example input and range from its `ModelSpec`."""
        from save_ros import models

        spec = models.get_spec(name)
        low, high = spec.input_range()
        # A real sample is the example: protect's analysis keys its ranges on it.
        example = models.dataset(name, "calib")[0][:1]
        return cls(ModelSource.named(name), example, (low, high), config, on_event,
                   protect_config)

    # ---- inference API (that of ProtectedModel) ----

    def infer(self, x: Any, wait: bool = True,
              timeout: float | None = None) -> FailoverResult:
        """Run one inference; blocks through failover until the answer (or `timeout`).

        `x`: one tensor, or several (a tuple / list / dict / InputBatch) as `example_input`."""
        return self.submit(x, wait).result(timeout)

    def submit(self, x: Any, wait: bool = True, block: bool = True,
               timeout: float | None = None) -> Future:
        """Queue one input; the Future resolves to a `FailoverResult`."""
        request = Request(next(self._ids), to_array(x), wait, time.monotonic(),
                           self.config.hang_timeout_s)
        if not wait:
            request.verdict = Future()
        return self._enqueue(request, block, timeout)

    def call(self, function: Callable[..., Any], *args: Any, timeout_s: float = 120.0) -> Any:
        """Run `function(target, *args)` in the active worker (see `failover.remote`); blocks.

        The call is queued in order with inferences and follows the active worker through a
        failover (it runs again on the new one). Standbys are not touched.
        """
        request = Request(next(self._ids), None, True, time.monotonic(),
                           max(timeout_s, self.config.hang_timeout_s), (function, args))
        return self._enqueue(request, True, None).result(timeout_s + self.config.startup_timeout_s)

    def recover(self) -> dict[str, int]:
        """Repair the active worker's weights from golden copies (protect backend)."""
        return self.call(remote.recover)

    def reanalyze(self) -> str:
        """Redo Selection and Allocation in the active worker (protect backend); its summary."""
        return self.call(remote.reanalyze)

    def _enqueue(self, request: Request, block: bool, timeout: float | None) -> Future:
        with self._cond:
            if self._closing:
                raise ClosedError("this FailoverModel is closed; create a new one")
            room = self._cond.wait_for(
                lambda: self._closing or len(self._pending) < self.config.queue_size,
                timeout if block else 0)
            if self._closing:
                raise ClosedError("this FailoverModel closed while the input waited for room")
            if not room:
                raise QueueFullError(
                    f"input queue full ({self.config.queue_size} waiting): the worker cannot "
                    "keep up; slow the input or raise queue_size")
            self._pending.append(request)
        self._wake()
        return request.future

    # ---- control and introspection ----

    def inject_crash(self, kind: CrashKind | str, when: str = "next",
                     target: str = "active") -> int:
        """Make a worker fail: on its next request ("next") or at once ("now"); returns its pid."""
        kind = CrashKind(kind)
        if kind is CrashKind.CUDA_ASSERT and not self.config.device.startswith("cuda"):
            raise CrashUnavailableError("cuda_assert needs device='cuda' workers")
        if when not in ("next", "now") or target not in ("active", "standby"):
            raise ValueError("inject_crash: when is 'next' or 'now', target 'active' or 'standby'")
        with self._cond:
            idle = self._pool.idle
            worker = self._active if target == "active" else (idle[0] if idle else None)
        if worker is None:
            raise FailoverStateError(f"no {target} worker to crash right now; "
                                     "wait_ready() first")
        worker.send(("arm" if when == "next" else "crash", kind))
        return worker.pid

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until an active worker and (if configured) a warm standby are ready."""
        wanted = 1 if self.config.standby else 0
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closing or (self._active is not None
                                          and len(self._pool.idle) >= wanted),
                timeout) and not self._closing

    @property
    def active_pid(self) -> int | None:
        """Process id of the active worker (None during a failover)."""
        with self._cond:
            return self._active.pid if self._active else None

    @property
    def standby_pids(self) -> list[int]:
        """Process ids of the ready standbys."""
        with self._cond:
            return [w.pid for w in self._pool.idle]

    def worker_pids(self) -> list[int]:
        """Every worker process this object holds now (active, standbys, one starting)."""
        with self._cond:
            workers = [self._active, *self._pool.idle, self._pool.starting]
        return [w.pid for w in workers if w is not None]

    def worker_info(self) -> dict[str, Any]:
        """The active worker's start-up report (timings, shared bytes, device)."""
        with self._cond:
            return dict(self._active.info) if self._active else {}

    def stats(self) -> dict[str, int]:
        """Counters: events by kind, answered requests, resubmitted requests."""
        with self._cond:
            return dict(self._counts)

    def events(self) -> list[FailoverEvent]:
        """The most recent events, oldest first."""
        with self._cond:
            return list(self._history)

    def close(self) -> None:
        """Stop every worker and thread; outstanding requests fail with ClosedError."""
        with self._cond:
            if self._closing:
                return
            self._closing = self._pool.closing = True
            self._cond.notify_all()
        self._wake()
        self._pool.join(10.0)
        self._dispatcher.join(10.0)
        with self._cond:
            workers = [self._active, *self._pool.idle]
            self._active = None
            self._pool.idle.clear()
            requests = list(self._pending) + list(self._inflight.values())
            self._pending.clear()
            self._inflight.clear()
        for worker in workers:
            if worker is not None:
                worker.stop()
        for request in requests:
            fail(request, ClosedError("the FailoverModel closed before this request finished"))
        self._events.put(None)
        if threading.current_thread() is not self._reporter:  # close() from the callback
            self._reporter.join(5.0)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> FailoverModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ----

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or closed

    def _emit(self, event: FailoverEvent) -> None:
        with self._cond:
            self._history.append(event)
            self._counts[event.kind.value] += 1
        self._events.put(event)  # logged and reported on the reporter thread, off the path

    def _report_loop(self) -> None:
        while (event := self._events.get()) is not None:
            (log.error if event.is_error else log.info)("failover: %s pid=%s %s",
                                                       event.kind.value, event.pid, event.detail)
            if self._on_event is None:
                continue
            try:
                self._on_event(event)
            except Exception:  # a faulty callback must not stop reporting
                log.exception("failover: the event callback raised")

    def _wanted(self) -> int:
        return (1 if self.config.standby else 0) + (1 if self._active is None else 0)
