"""The parent's handle on one worker process: start it, talk to it, wait for it, end it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait as wait_any
from typing import Any

import torch

from save_ros.failover.events import describe_exit
from save_ros.failover.worker import WorkerSpec, worker_main


class WorkerProcess:
    """The parent's handle on one worker process."""

    def __init__(self, ctx: Any, spec: WorkerSpec, shared_model: torch.nn.Module | None) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=worker_main, args=(child_conn, spec, shared_model, time.monotonic()),
            name="save-ros-failover-worker", daemon=True)
        self.process.start()
        child_conn.close()  # the child holds its end; EOF then means the child is gone
        self.pid: int = self.process.pid
        self.info: dict[str, Any] = {}
        self.fatal: str | None = None  # what the worker said before it quit on purpose
        self.crashed_at: float | None = None  # monotonic time of an injected crash
        self.send_lock = threading.Lock()

    def send(self, message: tuple) -> None:
        """Send one protocol message (thread-safe)."""
        with self.send_lock:
            self.conn.send(message)

    def kill(self) -> None:
        """SIGKILL (no-op when already dead) and reap, so no zombie stays."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()

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

