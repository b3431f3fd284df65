"""The node's running health: counters, input rate, latencies, and the /diagnostics statuses.

`Health` is updated from several executor threads (intake, inference, verifier, services), so
every method takes its lock. It reports two statuses, as diagnostic_updater tasks would, both
with the device as hardware_id:

- `<node>: input`: rate, drops and rejects. WARN when no input arrived for `input_timeout`
  seconds while active (a dead camera) or inputs were rejected since the last report. Drops are
  counted by reason (superseded by a newer input, queue full, shutdown), not a fault and not a
  WARN: a slow model on a fast camera drops by design under `newest_first`.
- `<node>: inference`: OK while every result is verified; WARN when a fault was detected and
  repaired; ERROR when a result could not be verified, a fault was not repaired, the model gave
  a non-finite output, or (isolation=process) a worker crashed. A fault level is held for
  `fault_hold` seconds, so a detection is seen by any monitor that looks within that time.

Memory is bounded: rejects are counted per `InputError.kind` (a closed set) and only the last
reason is kept, cut short.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus

from save_ros.ros.convert import diagnostic_status

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", DiagnosticStatus.STALE: "STALE"}
LATENCY_WINDOW = 1000  # latencies kept for percentiles (the most recent ones)
MAX_KINDS = 16  # reject kinds counted separately; the rest under "other"
MAX_REASON = 200  # characters of the last reject reason / problem kept


@dataclass
class Outcome:
    """What became of one inference, as the verifier (or the bare path) reported it."""

    verified: bool
    detected: int
    repaired: int
    unrepaired: int
    latency_s: float
    nonfinite: bool = False  # the model's output was NaN/inf for an in-box input


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


class Health:
    """Thread-safe counters of inputs and outcomes; renders the /diagnostics statuses."""

    def __init__(self, name: str, hardware_id: str, protected: bool = True,
                 fault_hold: float = 5.0, input_timeout: float = 1.0,
                 unprotected_reason: str = "") -> None:
        self._lock = threading.Lock()
        self.protected = protected
        self.unprotected_reason = unprotected_reason
        self.name = name
        self.hardware_id = hardware_id
        self.fault_hold = fault_hold
        self.input_timeout = input_timeout
        self.active = False
        self.received = 0
        self.dropped: Counter[str] = Counter()  # reason -> count
        self.rejected: Counter[str] = Counter()  # InputError kind -> count
        self.last_reject = ""
        self.inferred = 0
        self.published = 0
        self.provisional = 0
        self.verified = 0
        self.unverified = 0
        self.detected = 0
        self.repaired = 0
        self.unrepaired = 0
        self.nonfinite = 0
        self.failed = 0  # inferences that raised
        self.injected = 0
        self.recoveries = 0
        self.worker_failures = 0  # worker crashes and hangs (isolation=process)
        self.failovers = 0
        self.cold_failovers = 0  # no warm standby was ready: a new worker had to start
        self.calibration = ""  # live calibration progress
        self.awaiting_verdict = 0  # inferences waiting for a verdict now (max_awaiting_verdict)
        self.awaiting_verdict_max = 0  # ... the most at once since start
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._since_report: Counter[str] = Counter()
        self._last_input = time.monotonic()
        self._last_report = time.monotonic()
        self._received_at_report = 0
        self._held_level, self._held_until, self._held_message = OK, 0.0, ""
        self.last_problem = ""

    # -- events ---------------------------------------------------------------------------
    def set_active(self, active: bool) -> None:
        """The node was activated (inputs expected) or deactivated."""
        with self._lock:
            self.active = active
            self._last_input = time.monotonic()

    def on_received(self) -> None:
        """An input message arrived."""
        with self._lock:
            self.received += 1
            self._last_input = time.monotonic()

    def on_rejected(self, kind: str, reason: str) -> None:
        """An input was refused (bad encoding, size, NaN, outside the box ...)."""
        with self._lock:
            if kind not in self.rejected and len(self.rejected) >= MAX_KINDS:
                kind = "other"
            self.rejected[kind] += 1
            self._since_report["rejected"] += 1
            self.last_reject = _cut(reason)

    def on_dropped(self, reason: str, n: int = 1) -> None:
        """`n` inputs were dropped unanswered by inference (superseded, queue_full, shutdown)."""
        with self._lock:
            self.dropped[reason] += n

    def on_awaiting(self, n: int) -> None:
        """`n` inferences wait for their verdict now."""
        with self._lock:
            self.awaiting_verdict = n
            self.awaiting_verdict_max = max(self.awaiting_verdict_max, n)

    def on_inferred(self) -> None:
        """An inference ran."""
        with self._lock:
            self.inferred += 1

    def on_failed(self, reason: str) -> None:
        """An inference raised (the backend failed on an accepted input)."""
        with self._lock:
            self.failed += 1
            self._since_report["failed"] += 1
            self.last_problem = _cut(reason)

    def on_published(self, provisional: bool = False) -> None:
        """A result went out on ~/output (or ~/provisional_output)."""
        with self._lock:
            if provisional:
                self.provisional += 1
            else:
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
            self.nonfinite += int(outcome.nonfinite)
            self._since_report["detected"] += outcome.detected
            self._since_report["unrepaired"] += outcome.unrepaired
            self._since_report["nonfinite"] += int(outcome.nonfinite)
            self._latencies.append(outcome.latency_s)
            level = self._inference_level_locked()
            if level != OK:
                self._hold(level, self._inference_message_locked(level))

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
            self.last_problem = _cut(detail)
            self._hold(ERROR, "inference worker crashed or hung; failed over to the standby")

    def on_failover(self, warm: bool) -> None:
        """Another worker took over from a failed one (`warm`: a ready standby did)."""
        with self._lock:
            self.failovers += 1
            self.cold_failovers += int(not warm)

    def _hold(self, level: bytes, message: str) -> None:
        if level >= self._held_level or time.monotonic() >= self._held_until:
            self._held_level, self._held_message = level, message
        self._held_until = time.monotonic() + self.fault_hold

    # -- levels ---------------------------------------------------------------------------
    def _inference_level_locked(self) -> bytes:
        s = self._since_report
        if s["unverified"] or s["unrepaired"] or s["worker_failures"] or s["nonfinite"] \
                or s["failed"]:
            return ERROR
        if s["detected"]:
            return WARN
        return OK

    def _inference_message_locked(self, level: bytes) -> str:
        s = self._since_report
        if level == ERROR:
            if s["worker_failures"]:
                return "inference worker crashed or hung; failed over to the standby"
            if s["nonfinite"]:
                return ("model output not finite for an in-box input (weights match their "
                        "golden copies): a model/input problem, not a hardware fault")
            if s["failed"]:
                return "inference failed"
            return "unverified or unrepaired results"
        if level == WARN:
            return "fault detected and repaired"
        if not self.protected:
            return self.unprotected_reason or "unprotected (protect=false): results are not " \
                "verified"
        return "all results verified"

    def _input_level_locked(self, now: float) -> tuple[bytes, str]:
        idle = now - self._last_input
        if self.active and self.input_timeout > 0 and idle > self.input_timeout:
            what = "no input yet" if not self.received else "no input"
            return WARN, f"{what} for {idle:.1f} s (stale input; is the camera/topic alive?)"
        if self._since_report["rejected"]:
            return WARN, f"{self._since_report['rejected']} inputs rejected since last report"
        if not self.active:
            return OK, "inactive (lifecycle): not subscribed"
        return OK, "receiving"

    def level(self) -> bytes:
        """The highest level of both statuses now."""
        now = time.monotonic()
        with self._lock:
            return max(self._input_level_locked(now)[0], self._inference_locked(now)[0])

    def _inference_locked(self, now: float) -> tuple[bytes, str]:
        level = self._inference_level_locked()
        message = self._inference_message_locked(level)
        if now < self._held_until and self._held_level > level:
            level, message = self._held_level, f"{self._held_message} (held)"
        if level == OK and not self.protected and self.unprotected_reason:
            return WARN, self.unprotected_reason
        return level, message

    def latency_percentiles(self) -> dict[str, float]:
        """p50 / p90 / p99 / max of recent end-to-end inference latencies, in milliseconds."""
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64) * 1e3
        if not len(lat):
            return {}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"latency_p50_ms": p50, "latency_p90_ms": p90, "latency_p99_ms": p99,
                "latency_max_ms": float(lat.max())}

    def report(self, reset: bool = True) -> list[DiagnosticStatus]:
        """The /diagnostics statuses (input, inference); `reset` starts a new window."""
        percentiles = self.latency_percentiles()
        now = time.monotonic()
        with self._lock:
            in_level, in_message = self._input_level_locked(now)
            level, message = self._inference_locked(now)
            elapsed = max(now - self._last_report, 1e-9)
            inputs: dict[str, object] = {
                "received": self.received,
                "rate_hz": (self.received - self._received_at_report) / elapsed,
                "last_input_age_s": now - self._last_input,
                "dropped": sum(self.dropped.values()),
                "rejected": sum(self.rejected.values()),
            }
            for reason, n in sorted(self.dropped.items()):
                inputs[f"dropped_{reason}"] = n
            for kind, n in sorted(self.rejected.items()):
                inputs[f"rejected_{kind}"] = n
            if self.last_reject:
                inputs["last_reject"] = self.last_reject
            if self.calibration:
                inputs["calibration"] = self.calibration
            values: dict[str, object] = {
                "inferred": self.inferred, "published": self.published,
                "provisional_published": self.provisional, "verified": self.verified,
                "unverified": self.unverified, "faults_detected": self.detected,
                "tensors_repaired": self.repaired, "unrepaired": self.unrepaired,
                "nonfinite_outputs": self.nonfinite, "inference_failures": self.failed,
                "faults_injected": self.injected, "recoveries": self.recoveries,
                "worker_failures": self.worker_failures, "failovers": self.failovers,
                "cold_failovers": self.cold_failovers,
                "awaiting_verdict": self.awaiting_verdict,
                "awaiting_verdict_max": self.awaiting_verdict_max,
            }
            values.update(percentiles)
            if level != OK and self.last_problem:
                values["last_problem"] = self.last_problem
            if reset:
                self._since_report.clear()
                self._last_report = now
                self._received_at_report = self.received
        return [diagnostic_status(f"{self.name}: input", self.hardware_id, in_level,
                                  in_message, inputs),
                diagnostic_status(f"{self.name}: inference", self.hardware_id, level, message,
                                  values)]
