"""The node's running health: counters, latency percentiles, and the /diagnostics status.

`Health` is updated from several executor threads (intake, inference, verifier, services), so
every method takes its lock. Its level follows what rqt_robot_monitor shows: OK while every result
is verified; WARN when inputs were rejected or dropped, or a fault was detected and repaired,
since the last report; ERROR when a result could not be verified or a fault was not repaired,
or (isolation=process) an inference worker crashed or hung.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus

from save_ros.ros.convert import diagnostic_status

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", DiagnosticStatus.STALE: "STALE"}
LATENCY_WINDOW = 1000  # latencies kept for percentiles (the most recent ones)


@dataclass
class Outcome:
    """What became of one inference, as the verifier (or the bare path) reported it."""

    verified: bool
    detected: int
    repaired: int
    unrepaired: int
    latency_s: float


class Health:
    """Thread-safe counters of inputs and outcomes; renders the /diagnostics status."""

    def __init__(self, name: str, hardware_id: str, protected: bool = True) -> None:
        self._lock = threading.Lock()
        self.protected = protected
        self.name = name
        self.hardware_id = hardware_id
        self.received = 0
        self.dropped = 0
        self.rejected: Counter[str] = Counter()
        self.inferred = 0
        self.published = 0
        self.verified = 0
        self.unverified = 0
        self.detected = 0
        self.repaired = 0
        self.unrepaired = 0
        self.injected = 0
        self.recoveries = 0
        self.worker_failures = 0  # worker crashes and hangs (isolation=process)
        self.failovers = 0
        self.cold_failovers = 0  # no warm standby was ready: a new worker had to start
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._since_report: Counter[str] = Counter()
        self.last_problem = ""

    def on_received(self) -> None:
        """An input message arrived."""
        with self._lock:
            self.received += 1

    def on_rejected(self, reason: str) -> None:
        """An input was refused (bad encoding, size, NaN ...)."""
        with self._lock:
            self.rejected[reason.split(";")[0][:60]] += 1
            self._since_report["rejected"] += 1
            self.last_problem = f"input rejected: {reason}"

    def on_dropped(self) -> None:
        """The inference queue was full and its oldest input was dropped."""
        with self._lock:
            self.dropped += 1
            self._since_report["dropped"] += 1

    def on_inferred(self) -> None:
        """An inference ran."""
        with self._lock:
            self.inferred += 1

    def on_published(self) -> None:
        """A result went out on ~/output."""
        with self._lock:
            self.published += 1

    def on_outcome(self, outcome: Outcome) -> None:
        """The verdict of one inference arrived."""
        with self._lock:
            if outcome.verified:
                self.verified += 1
            else:
                self.unverified += 1
                # a bare (protect=false) node never verifies: that is its setting, not a fault
                self._since_report["unverified"] += int(self.protected)
            self.detected += outcome.detected
            self.repaired += outcome.repaired
            self.unrepaired += outcome.unrepaired
            self._since_report["detected"] += outcome.detected
            self._since_report["unrepaired"] += outcome.unrepaired
            self._latencies.append(outcome.latency_s)

    def on_injected(self, flips: int) -> None:
        """Faults were injected through ~/inject_faults."""
        with self._lock:
            self.injected += flips

    def on_recovered(self) -> None:
        """~/recover ran."""
        with self._lock:
            self.recoveries += 1

    def on_worker_failure(self, detail: str) -> None:
        """An inference worker crashed, hung, or could not start (isolation=process)."""
        with self._lock:
            self.worker_failures += 1
            self._since_report["worker_failures"] += 1
            self.last_problem = detail

    def on_failover(self, warm: bool) -> None:
        """Another worker took over from a failed one (`warm`: a ready standby did)."""
        with self._lock:
            self.failovers += 1
            self.cold_failovers += int(not warm)

    def level(self) -> bytes:
        """OK / WARN / ERROR for what happened since the last report."""
        with self._lock:
            return self._level_locked()

    def _level_locked(self) -> bytes:
        s = self._since_report
        if s["unverified"] or s["unrepaired"] or s["worker_failures"]:
            return ERROR
        if s["detected"] or s["rejected"] or s["dropped"]:
            return WARN
        return OK

    def latency_percentiles(self) -> dict[str, float]:
        """p50 / p90 / p99 / max of recent end-to-end inference latencies, in milliseconds."""
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64) * 1e3
        if not len(lat):
            return {}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"latency_p50_ms": p50, "latency_p90_ms": p90, "latency_p99_ms": p99,
                "latency_max_ms": float(lat.max())}

    def report(self, reset: bool = True) -> DiagnosticStatus:
        """The /diagnostics status; `reset` starts a new reporting window for the level."""
        percentiles = self.latency_percentiles()
        with self._lock:
            level = self._level_locked()
            messages = {
                OK: "all results verified" if self.protected
                else "unprotected (protect=false): results are not verified",
                WARN: "faults detected and repaired, or inputs rejected/dropped",
                ERROR: "unverified or unrepaired results",
            }
            if self._since_report["worker_failures"]:
                messages[ERROR] = "inference worker crashed or hung; failed over to the standby"
            values: dict[str, object] = {
                "received": self.received, "dropped": self.dropped,
                "rejected": sum(self.rejected.values()), "inferred": self.inferred,
                "published": self.published, "verified": self.verified,
                "unverified": self.unverified, "faults_detected": self.detected,
                "tensors_repaired": self.repaired, "unrepaired": self.unrepaired,
                "faults_injected": self.injected, "recoveries": self.recoveries,
                "worker_failures": self.worker_failures, "failovers": self.failovers,
                "cold_failovers": self.cold_failovers,
            }
            values.update(percentiles)
            for reason, n in sorted(self.rejected.items()):
                values[f"rejected: {reason}"] = n
            if level != OK and self.last_problem:
                values["last_problem"] = self.last_problem
            if reset:
                self._since_report.clear()
        return diagnostic_status(self.name, self.hardware_id, level, messages[level], values)
