"""The parent's handle on one worker process: start it, talk to it, wait for it, end it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait as wait_any
from typing import Any

from save_ros.failover.events import describe_exit
from save_ros.failover.packed import PackedWeights
from save_ros.failover.worker import WorkerSpec, worker_main

# What Python's fault handler writes for each fatal signal it handles.
_FAULT_SIGNALS = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
                  "Floating-point exception": "SIGFPE", "Illegal instruction": "SIGILL"}


class WorkerProcess:
    """The parent's handle on one worker process."""

    def __init__(self, ctx: Any, spec: WorkerSpec, shared_model: PackedWeights | None) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        # The worker's fault handler writes here from inside its signal handler, before the
        # kernel tears the process down (which takes tens of ms with a CUDA context): the
        # earliest moment a crash can be seen from outside.
        self.death, child_death = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=worker_main,
            args=(child_conn, spec, shared_model, time.monotonic(), child_death),
            name="save-ros-failover-worker", daemon=True)
        self.process.start()
        child_conn.close()  # the child holds its end; EOF then means the child is gone
        child_death.close()
        os.set_blocking(self.death.fileno(), False)
        self.pid: int = self.process.pid
        self.info: dict[str, Any] = {}
        self.fatal: str | None = None  # what the worker said before it quit on purpose
        self.crashed_at: float | None = None  # monotonic time of an injected crash
        self.fault_report = ""  # what the worker's fault handler wrote (signal, traceback)
        self.death_closed = False  # the fault-handler pipe reached end of file
        self.send_lock = threading.Lock()

    def send(self, message: tuple) -> None:
        """Send one protocol message (thread-safe)."""
        with self.send_lock:
            self.conn.send(message)

    def read_fault_report(self) -> bool:
        """Read what the fault handler wrote; True when it reported a fatal signal.

        End of file (the worker exited and its end closed) sets `death_closed`: the pipe is
        then left out of the dispatcher's wait, or it would be readable forever."""
        deadline = time.monotonic() + 0.02  # the handler writes its first line in pieces
        while True:
            try:
                while chunk := os.read(self.death.fileno(), 65536):
                    self.fault_report += chunk.decode("utf-8", "replace")
                self.death_closed = True
                break
            except (BlockingIOError, OSError):
                pass
            if (not self.fault_report or "\n" in self.fault_report
                    or time.monotonic() > deadline):
                break
            wait_any([self.death], 0.002)
        return bool(self.fault_report)

    def fatal_signal(self) -> str | None:
        """The signal the fault handler reported ('SIGSEGV'), or None."""
        for text, name in _FAULT_SIGNALS.items():
            if text in self.fault_report:
                return name
        return "a fatal signal" if self.fault_report else None

    def kill(self, wait: bool = True) -> None:
        """SIGKILL (no-op when already dead), then reap so no zombie stays.

        With `wait=False` the reaping happens on a background thread: the caller does not wait
        while the kernel tears the process (and its CUDA context) down."""
        if self.process.is_alive():
            self.process.kill()
        if wait:
            self._reap()
        else:
            threading.Thread(target=self._reap, name="failover-reap", daemon=True).start()

    def _reap(self) -> None:
        self.process.join(5.0)
        self.conn.close()
        self.death.close()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit; kill it when it does not."""
        try:
            self.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        self.kill()

    def wait_ready(self, timeout: float, closing: Callable[[], bool]) -> str | None:
        """Wait for the worker's ready message: None when ready, else why it is not (killed).

        `closing()` is polled; when it turns true the worker is killed and None returned.
        """
        deadline = time.monotonic() + timeout
        while True:
            if closing():
                self.kill()
                return None
            ready = wait_any([self.conn, self.process.sentinel], 0.1)
            if self.conn in ready:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    self.kill()
                    return f"worker {describe_exit(self.process.exitcode)} at start"
                if message[0] == "ready":
                    self.info = message[1]
                    return None
                self.kill()
                return str(message[1])
            if self.process.sentinel in ready:
                self.kill()
                return f"worker {describe_exit(self.process.exitcode)} at start"
            if time.monotonic() > deadline:
                self.kill()
                return f"not ready within {timeout} s"

