"""What the failover runtime reports: events for diagnostics, and the errors a caller can see."""

from __future__ import annotations

import enum
import signal
import time
from dataclasses import dataclass, field


class EventKind(enum.Enum):
    """The kinds of event a `FailoverModel` reports through its callback."""

    STANDBY_READY = "standby_ready"  # a worker finished loading and waits warm
    CRASH = "crash"  # a worker process died (signal or exit code in `detail`)
    HANG = "hang"  # a worker did not answer within the watchdog timeout and was killed
    FAILOVER = "failover"  # another worker took over; `duration_s` = failure to takeover
    START_FAILED = "start_failed"  # a new worker could not load; it is retried with backoff
    REQUEST_DROPPED = "request_dropped"  # a request took down `max_attempts` workers


ERROR_KINDS = frozenset({EventKind.CRASH, EventKind.HANG, EventKind.START_FAILED,
                         EventKind.REQUEST_DROPPED})


@dataclass(frozen=True)
class FailoverEvent:
    """One event; `is_error` says whether a node should publish it as a diagnostic ERROR."""

    kind: EventKind
    pid: int | None  # the worker the event is about
    detail: str
    role: str = "active"  # "active" or "standby"
    # FAILOVER: failure detected -> new worker active; STANDBY_READY: start -> ready;
    # CRASH/HANG of an injected crash: crash -> detected.
    duration_s: float | None = None
    warm: bool | None = None  # FAILOVER only: a warm standby was ready at the failure
    new_pid: int | None = None  # FAILOVER only: the worker that took over
    # CRASH/HANG of the active worker: monotonic time the failure was noticed
    detected_at: float | None = None
    time: float = field(default_factory=time.time)

    @property
    def is_error(self) -> bool:
        """True for crash, hang, failed start and dropped request."""
        return self.kind in ERROR_KINDS


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended: 'killed by SIGSEGV', 'exit code 1' or 'still running'."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class FailoverError(RuntimeError):
    """Base class of the failover runtime's errors."""


class WorkerStartError(FailoverError):
    """A worker could not start (model load, analysis or warm-up failed); message has why."""


class RequestDroppedError(FailoverError):
    """A request crashed or hung every worker it was given to; it is not retried again."""


class QueueFullError(FailoverError):
    """The bounded input queue is full: the worker cannot keep up, or no worker is ready."""


class ClosedError(FailoverError):
    """The `FailoverModel` is closed (or closing); create a new one."""


class RemoteError(FailoverError):
    """An exception raised inside the worker that could not be sent back as itself."""


class FailoverStateError(FailoverError):
    """The requested worker does not exist right now (e.g. no standby during a failover)."""
