"""What `save-ros watch` shows: one line per message, or a live panel on a terminal.

No ROS here: the watcher turns messages into the plain records below (`OutputRecord`,
`StatusRecord`, `DiagRecord`) and `WatchView` keeps counts and the latest of each, so the text is
tested without a node.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
DIAG_REPEAT_S = 10.0  # lines mode: an unchanged /diagnostics status is printed this often
MAX_VALUES = 6  # continuous outputs shown before "..."
RATE_WINDOW_S = 5.0  # the panel's output rate: over the last 5 s
# /diagnostics values worth a glance, in this order (the rest are in the message itself)
DIAG_KEYS = {
    "input": ("received", "rate_hz", "dropped", "rejected", "last_input_age_s"),
    "inference": ("inferred", "verified", "unverified", "faults_detected", "tensors_repaired",
                  "unrepaired", "faults_injected", "latency_p50_ms", "latency_p99_ms"),
}


def stamp_text(stamp_ns: int | None) -> str:
    """A header stamp as `sec.nanosec` (what `ros2 topic echo` shows), '-' without one."""
    if stamp_ns is None:
        return "-"
    return f"{stamp_ns // 10**9}.{stamp_ns % 10**9:09d}"


def level_name(level: int) -> str:
    """OK / WARN / ERROR / STALE for a DiagnosticStatus level."""
    return LEVELS.get(level, str(level))


def _number(value: str) -> str:
    """A diagnostics value, floats to 3 significant digits."""
    try:
        f = float(value)
    except ValueError:
        return value
    return value if f.is_integer() and "." not in value else f"{f:.3g}"


@dataclass
class OutputRecord:
    """One `~/output` message: its stamp, numbers, and the decision when the node gives one."""

    stamp_ns: int | None
    msgtype: str  # short: JointState, Classification, Float64MultiArray
    values: list[float]  # raw outputs (logits or actions), or Classification scores
    names: list[str] = field(default_factory=list)
    decision: int | None = None  # argmax class or action (effort[0], or the best score)
    probability: float | None = None  # softmax probability of the decision, when published

    def text(self) -> str:
        """`class 7 'seven' p=0.998` for a decision, else the first values."""
        if self.decision is not None:
            name = self.names[self.decision] if self.decision < len(self.names) else ""
            named = f" {name!r}" if name and name != str(self.decision) else ""
            prob = f" p={self.probability:.3f}" if self.probability is not None else ""
            return f"class {self.decision}{named}{prob}"
        shown = ", ".join(f"{v:.4g}" for v in self.values[:MAX_VALUES])
        more = ", ..." if len(self.values) > MAX_VALUES else ""
        return f"values [{shown}{more}]"


@dataclass
class StatusRecord:
    """One `~/fault_status` message: the verdict on one input."""

    stamp_ns: int | None
    level: int
    message: str
    values: dict[str, str]

    def text(self) -> str:
        """Level and message, then what failed and what was repaired, or the timings."""
        v = self.values
        parts = [f"{level_name(self.level):5s} {self.message}"]
        if v.get("detections"):
            parts.append(f"failed: {v['detections']}")
        if v.get("repaired_tensors"):
            parts.append(f"repaired: {v['repaired_tensors']}")
        if v.get("rerun_from"):
            parts.append(f"re-run from {v['rerun_from']}")
        timing = [f"{k[:-3]} {float(v[k]):.2f} ms" for k in ("forward_ms", "verify_ms")
                  if k in v and _is_float(v[k])]
        if timing:
            parts.append(", ".join(timing))
        return "  ".join(parts)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class DiagRecord:
    """One of the node's statuses on `/diagnostics` (`<fqn>: input` or `<fqn>: inference`)."""

    name: str
    level: int
    message: str
    values: dict[str, str]

    @property
    def part(self) -> str:
        """`input` or `inference` (the part after the node's name)."""
        return self.name.rsplit(":", 1)[-1].strip()

    def text(self) -> str:
        """Level, message and the key counters of this status."""
        keys = DIAG_KEYS.get(self.part, ())
        shown = "  ".join(f"{k} {_number(self.values[k])}" for k in keys if k in self.values)
        return f"{self.name}  {level_name(self.level)} {self.message}" + (
            f"  ({shown})" if shown else "")


class WatchView:
    """Counts, rates and the latest record of each stream; lines or a panel."""

    def __init__(self, fqn: str, output_type: str = "", recent: int = 5) -> None:
        self.fqn = fqn
        self.output_type = output_type
        self.started = time.monotonic()
        self.outputs = 0
        self.statuses: Counter[str] = Counter()  # by level name
        self.diagnostics = 0
        self.last_output: OutputRecord | None = None
        self.last_status: StatusRecord | None = None
        self.diag: dict[str, DiagRecord] = {}
        self.faults: deque[StatusRecord] = deque(maxlen=recent)  # statuses that were not OK
        self._diag_printed: dict[str, float] = {}  # part -> when its line was last printed
        self._arrivals: deque[float] = deque(maxlen=10_000)  # output arrival times (rate)

    @property
    def status_count(self) -> int:
        """Fault statuses seen (one per input the node answered)."""
        return sum(self.statuses.values())

    def add(self, record: OutputRecord | StatusRecord | DiagRecord) -> str | None:
        """Take one record; its line (what a non-terminal prints), None for a /diagnostics
        status that says what the last one said less than `DIAG_REPEAT_S` ago."""
        if isinstance(record, OutputRecord):
            self.outputs += 1
            self._arrivals.append(time.monotonic())
            self.last_output = record
            return f"output  {stamp_text(record.stamp_ns)}  {record.text()}"
        if isinstance(record, StatusRecord):
            self.statuses[level_name(record.level)] += 1
            self.last_status = record
            if record.level != 0:
                self.faults.append(record)
            return f"status  {stamp_text(record.stamp_ns)}  {record.text()}"
        self.diagnostics += 1
        last = self.diag.get(record.part)
        self.diag[record.part] = record
        now = time.monotonic()
        if (last is not None and (last.level, last.message) == (record.level, record.message)
                and now - self._diag_printed.get(record.part, 0.0) < DIAG_REPEAT_S):
            return None
        self._diag_printed[record.part] = now
        return f"diag    {record.text()}"

    def output_rate(self, window: float = RATE_WINDOW_S) -> float:
        """Outputs per second over the last `window` seconds (or since the start)."""
        now = time.monotonic()
        span = min(window, max(now - self.started, 1e-9))
        return sum(1 for t in self._arrivals if now - t <= span) / span

    def header(self) -> str:
        """What is watched, first line of either view."""
        kind = f" ({self.output_type})" if self.output_type else ""
        return (f"watching {self.fqn}: {self.fqn}/output{kind}, {self.fqn}/fault_status, "
                "/diagnostics")

    def panel(self, width: int = 100) -> str:
        """The live view: one block per stream, the latest values, recent faults."""
        elapsed = time.monotonic() - self.started
        levels = "  ".join(f"{lv} {self.statuses[lv]}" for lv in ("OK", "WARN", "ERROR")
                           if lv in self.statuses or lv == "OK")
        kind = f" ({self.output_type})" if self.output_type else ""
        lines = [f"watching {self.fqn}  ({elapsed:.0f} s, Ctrl-C to stop)",
                 f"  {self.fqn}/output{kind}, {self.fqn}/fault_status, /diagnostics", "",
                 f"output        {self.outputs:6d} msgs  {self.output_rate():5.1f}/s  last: "
                 + (f"{stamp_text(self.last_output.stamp_ns)}  {self.last_output.text()}"
                    if self.last_output else "none yet"),
                 f"fault_status  {self.status_count:6d} msgs  {levels}",
                 "  last: " + (f"{stamp_text(self.last_status.stamp_ns)}  "
                               f"{self.last_status.text()}" if self.last_status else "none yet"),
                 f"/diagnostics  {self.diagnostics:6d} msgs"]
        lines += [f"  {d.text()}" for _, d in sorted(self.diag.items())] or ["  none yet"]
        lines += ["", f"recent faults ({len(self.faults)} shown; statuses not OK):"]
        lines += [f"  {stamp_text(f.stamp_ns)}  {f.text()}" for f in self.faults] or ["  none"]
        return "\n".join(line if len(line) <= width else line[: width - 3] + "..."
                         for line in lines)
