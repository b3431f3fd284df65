"""Hostile inputs through real `save_node` processes: does the node hold up? The results table.

One session per input type and isolation (`none`: the model in the node; `process`: in a worker
process): start the node, warm it up with valid inputs, then
1. `hostile` (lockstep): the hostile cases of `hostile.py`, read back from the rosbag that
   `write_hostile_bag` wrote, one at a time: every input must reach the node and get exactly one
   fault status, each case as it expects (accepted or rejected);
2. `burst` (realtime): the same bag at its own timing (10 ms apart, bursts back to back): every
   input that reached the node (its `received` counter) must get exactly one status (inputs lost
   before the node are counted and their cause named, not checked);
3. `fuzz` (lockstep): `--fuzz` seeded mutations of valid messages, every one answered once.
Every run also checks that no input error is counted as a fault (the node's fault counters
`FAULT_COUNTERS` stay put and no status reports a detection; inputs the node accepts but cannot
verify, e.g. outside the model's input box, are counted as `unverified`, not as faults; a case that
must be accepted must also be verified), that the node's
/diagnostics and fault statuses stay bounded in size, and that its memory does not grow (RSS of
the node and its workers before and after). The node is then stopped with SIGINT: exit code 0.

`save-ros robustness hostile --fuzz 1000 --json docs/results/hostile.json` runs it
(`hostile_cli`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from save_ros.ros.bags import read_messages
from save_ros.tools.bundled import CONFIG_DIR
from save_ros.tools.client import ReplayClient
from save_ros.tools.fuzz import fuzz_messages
from save_ros.tools.hostile import (
    ACCEPT,
    REJECT,
    TOPICS,
    case_labels,
    hostile_cases,
)
from save_ros.tools.process import NodeProcess
from save_ros.tools.replay_result import FAULT_COUNTERS, LARGE_SAMPLE_BYTES, ReplayResult

CONFIGS = {"image": "digits_cnn.yaml", "joint_state": "cartpole_policy.yaml",
           "float32_multi_array": "cartpole_policy.yaml"}
# bounds a node that does not grow must stay within
MAX_DIAGNOSTIC_KEYS = 64  # key/values in one /diagnostics status
MAX_DIAGNOSTIC_BYTES = 8192  # text of one /diagnostics status
MAX_STATUS_BYTES = 2048  # text of one fault status (its header, a copy of the input's, aside)
MAX_RSS_GROWTH_MB = 48.0  # RSS growth of node + workers over one run


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (0 if it is gone)."""
    total_kb, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total_kb += next(int(line.split()[1]) for line in status.splitlines()
                             if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total_kb / 1024


@dataclass
class Run:
    """One pass of messages through a node, and what the checks found."""

    input_type: str
    isolation: str
    run: str
    pace: str
    cases: int
    sent: int = 0
    received: int | None = None
    answered: int = 0
    accepted: int = 0
    unverified: int = 0  # accepted, but the node could not vouch for the result
    rejected: int = 0
    dropped: int = 0
    lost_in_transport: int = 0  # lockstep inputs DDS could not carry (large, best effort)
    republished_duplicates: int = 0  # lockstep copies the node took although it took the first
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    diagnostics_keys: int = 0
    diagnostics_bytes: int = 0
    status_bytes: int = 0
    causes: list[str] = field(default_factory=list)  # why inputs were lost, from evidence
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # case -> outcome -> n
    violations: list[str] = field(default_factory=list)


@dataclass
class Session:
    """One node process: its runs, whether it survived them, its exit code on SIGINT."""

    input_type: str
    isolation: str
    runs: list[Run] = field(default_factory=list)
    survived: bool = False
    exit_code: int | None = None
    output_tail: str = ""

    def violations(self) -> list[str]:
        """Everything that went wrong, each prefixed with where."""
        out = [f"{self.input_type}/{self.isolation}/{r.run}: {v}" for r in self.runs
               for v in r.violations]
        if not self.survived:
            out.append(f"{self.input_type}/{self.isolation}: the node died")
        if self.exit_code != 0:
            out.append(f"{self.input_type}/{self.isolation}: exit code {self.exit_code} on SIGINT")
        return out


def _is(values: dict[str, str], key: str) -> bool:
    return values.get(key) == "true"


def outcome(status: dict[str, str] | None) -> str:
    """What became of one input: rejected, dropped, verified, unverified, or unanswered."""
    if status is None:
        return "unanswered"
    for key in ("rejected", "dropped", "verified"):
        if _is(status, key):
            return key
    return "unverified"


def check(run: Run, result: ReplayResult, labels: list[tuple[str, str]] | None = None,
          protect: bool = True) -> None:
    """Fill `run`'s counts from a replay and list every broken promise in `run.violations`."""
    loss = result.losses()
    statuses = [r.status for r in result.records if r.status is not None]
    run.sent, run.received, run.answered = loss["sent"], loss["received"], loss["answered"]
    run.rejected = sum(_is(s, "rejected") for s in statuses)
    run.dropped = sum(_is(s, "dropped") for s in statuses)
    run.accepted = len(statuses) - run.rejected - run.dropped
    run.diagnostics_keys, run.diagnostics_bytes = (result.diagnostics_keys,
                                                   result.diagnostics_bytes)
    run.status_bytes = result.status_bytes_max
    v = run.violations
    if result.node_exit_code is not None:
        v.append(f"the node exited with code {result.node_exit_code} during the run")
    run.republished_duplicates = loss["republished_duplicates"]
    if run.received is None:
        v.append("the node published no /diagnostics counters")
    elif run.received != run.answered + run.republished_duplicates:
        v.append(f"{run.received} inputs reached the node, {run.answered} got a fault status "
                 f"({run.republished_duplicates} copies published again answered too)")
    if run.pace == "lockstep":
        # lockstep delivers every input, except what DDS cannot carry: a large best-effort sample
        reliability = result.node_parameters.get("qos.reliability")
        lost = [r for r in result.records if not r.answered()]
        excused = [r for r in lost if r.size > LARGE_SAMPLE_BYTES and reliability != "reliable"]
        run.lost_in_transport = len(excused)
        if len(lost) > len(excused):
            v.append(f"lockstep: {run.sent} sent, {run.received} received, {run.answered} "
                     f"answered; {len(lost) - len(excused)} lost that DDS can carry")
    twice = sum(len(r.statuses) > 1 for r in result.records)
    if twice or loss["stray_statuses"]:
        v.append(f"{twice} inputs answered twice, {loss['stray_statuses']} stray statuses")
    for key in FAULT_COUNTERS:
        moved = result.counter_delta(key)
        if moved:
            v.append(f"input errors counted as faults: {key} rose by {moved}")
    detected = [r.index for r in result.records if r.status
                and int(r.status.get("detected", "0") or 0) > 0]
    if detected:
        v.append(f"{len(detected)} statuses report a detected fault (inputs {detected[:5]})")
    run.unverified = sum(outcome(s) == "unverified" for s in statuses)
    run.causes = list(loss["causes"])
    if labels is not None and run.pace == "lockstep":
        for record, (name, expect) in zip(result.records, labels, strict=False):
            got = outcome(record.status)
            counts = run.outcomes.setdefault(name, {"expect": expect})
            counts[got] = counts.get(got, 0) + 1
            why = (record.status or {}).get("_message", "")[:160]
            if expect == ACCEPT and got in ("rejected", "dropped"):
                v.append(f"{name!r} (input {record.index}) {got}: {why}")
            elif expect == ACCEPT and protect and got == "unverified":
                v.append(f"{name!r} (input {record.index}) accepted but not verified: {why}")
            elif expect == REJECT and got not in ("rejected", "unanswered"):
                v.append(f"{name!r} (input {record.index}) was not rejected ({got})")
    if run.diagnostics_keys > MAX_DIAGNOSTIC_KEYS or run.diagnostics_bytes > MAX_DIAGNOSTIC_BYTES:
        v.append(f"/diagnostics grew to {run.diagnostics_keys} keys, {run.diagnostics_bytes} B "
                 f"(bound {MAX_DIAGNOSTIC_KEYS} keys, {MAX_DIAGNOSTIC_BYTES} B)")
    if run.status_bytes > MAX_STATUS_BYTES:
        v.append(f"a fault status of {run.status_bytes} B (bound {MAX_STATUS_BYTES} B)")
    growth = run.rss_after_mb - run.rss_before_mb
    if growth > MAX_RSS_GROWTH_MB:
        v.append(f"memory grew by {growth:.1f} MiB (bound {MAX_RSS_GROWTH_MB} MiB)")


def _node(input_type: str, isolation: str, namespace: str, cache_dir: Path,
          overrides: dict[str, object]) -> NodeProcess:
    config = CONFIG_DIR / CONFIGS[input_type]
    model = _model(input_type)
    return NodeProcess(config, namespace=namespace, overrides={
        "input_type": input_type, "isolation": isolation, "diagnostics_period": 0.5,
        "analysis_cache": str(cache_dir / f"{model}.json"), **overrides}).start()


@dataclass
class HostileNode:
    """A running node under test: its process, a client, and the session that records runs."""

    proc: NodeProcess
    client: ReplayClient
    session: Session
    protect: bool = True

    def run(self, name: str, pace: str, msgs: list, labels: list[tuple[str, str]] | None = None,
            cases: int | None = None, log=None) -> Run:
        """Publish `msgs` at `pace`, check every promise, record the run (and return it)."""
        s = self.session
        run = Run(s.input_type, s.isolation, name, pace, cases if cases is not None
                  else len(msgs))
        run.rss_before_mb = rss_mb(self.proc.proc.pid)
        result = self.client.replay(msgs, pace=pace, settle=1.0, status_timeout=20.0)
        run.rss_after_mb = rss_mb(self.proc.proc.pid)
        check(run, result, labels, self.protect)
        s.runs.append(run)
        if log is not None:
            print(f"  {s.input_type}/{s.isolation}/{name}: {run.sent} sent, {run.received} "
                  f"received, {run.answered} answered, {len(run.violations)} violations",
                  file=log, flush=True)
        return run

    def hostile(self, bag: Path, burst: bool = True, log=None) -> list[Run]:
        """The hostile cases read back from `bag`: lockstep, then (`burst`) at the bag's timing."""
        input_type = self.session.input_type
        labels = case_labels(input_type)
        msgs = list(read_messages(bag, (TOPICS[input_type],)))
        if len(msgs) < len(labels):
            raise ValueError(f"{bag} holds {len(msgs)} {input_type} messages, fewer than the "
                             f"{len(labels)} hostile cases; write it with write_hostile_bag")
        msgs = msgs[:len(labels)]  # the fuzz a bag may hold after them is not labelled
        cases = len({name for name, _ in labels})
        runs = [self.run("hostile", "lockstep", msgs, labels, cases, log)]
        if burst and self.proc.proc.poll() is None:
            runs.append(self.run("burst", "realtime", msgs, None, cases, log))
        return runs

    def fuzz(self, count: int, seed: int = 0, log=None) -> Run:
        """`count` seeded fuzzed messages, lockstep."""
        msgs = fuzz_messages(self.session.input_type, count, seed)
        return self.run(f"fuzz {count} (seed {seed})", "lockstep", msgs, None, count, log)


@contextmanager
def hostile_node(input_type: str, isolation: str, cache_dir: Path,
                 overrides: dict[str, object] | None = None) -> Iterator[HostileNode]:
    """Start a node for `input_type`, warm it up, yield it; stop it with SIGINT at the end.

    On exit the session records whether the node was alive before the signal, and its exit
    code. The analysis cache in `cache_dir` is shared by the nodes of one model.
    """
    overrides = overrides or {}
    session = Session(input_type, isolation)
    proc = _node(input_type, isolation, f"hostile_{input_type}_{isolation}_{os.getpid()}",
                 cache_dir, overrides)
    try:
        with ReplayClient(node_fqn=proc.fqn, input_type=input_type) as client:
            client.wait_for_node(proc, timeout=180.0)
            client.replay(hostile_cases(input_type)[0].messages * 3)  # warm-up: lazy allocation
            yield HostileNode(proc, client, session, bool(overrides.get("protect", True)))
        session.survived = proc.proc.poll() is None
    finally:
        session.exit_code = proc.stop()
        session.output_tail = proc.output()[-3000:]


def _model(input_type: str) -> str:
    return "digits_cnn" if input_type == "image" else "cartpole_policy"


@contextmanager
def hostile_nodes(specs: list[tuple[str, str]], cache_dir: Path,
                  overrides: dict[str, object] | None = None
                  ) -> Iterator[dict[tuple[str, str], HostileNode]]:
    """Several nodes `(input_type, isolation)` started and stopped together (faster than one by
    one: their start-up and shutdown overlap); yields them by spec.

    Nodes of one model start in turn, so only the first writes the shared analysis cache.
    """
    overrides = overrides or {}
    protect = bool(overrides.get("protect", True))
    waves: list[list[tuple[str, str]]] = []
    for spec in specs:
        wave = next((w for w in waves if all(_model(t) != _model(spec[0]) for t, _ in w)), None)
        if wave is None:
            waves.append(wave := [])
        wave.append(spec)
    nodes: dict[tuple[str, str], HostileNode] = {}
    try:
        for wave in waves:
            started = {spec: _node(spec[0], spec[1], f"hostile_{spec[0]}_{spec[1]}_{os.getpid()}",
                                   cache_dir, overrides) for spec in wave}
            for spec, proc in started.items():
                nodes[spec] = HostileNode(proc, ReplayClient(node_fqn=proc.fqn,
                                                             input_type=spec[0]),
                                          Session(*spec), protect)
            for spec in wave:
                node = nodes[spec]
                node.client.wait_for_node(node.proc, timeout=180.0)
                node.client.replay(hostile_cases(spec[0])[0].messages * 3)  # warm-up
        yield nodes
        for node in nodes.values():
            node.session.survived = node.proc.proc.poll() is None
    finally:
        for node in nodes.values():
            node.client.close()
        stoppers = [threading.Thread(target=_stop, args=(node,)) for node in nodes.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()


def _stop(node: HostileNode) -> None:
    node.session.exit_code = node.proc.stop()
    node.session.output_tail = node.proc.output()[-3000:]


def run_session(input_type: str, isolation: str, bag: Path | None, fuzz: int = 0,
                seed: int = 0, burst: bool = True, cache_dir: Path | None = None,
                overrides: dict[str, object] | None = None, log=None,
                fuzz_passes: int = 1) -> Session:
    """One node for `input_type`: hostile bag (lockstep, then a burst), then `fuzz` messages
    (`fuzz_passes` times, seeds `seed`, `seed + 1`, ...: memory must level off)."""
    cache = Path(cache_dir or tempfile.mkdtemp(prefix="save_ros_hostile_"))
    with hostile_node(input_type, isolation, cache, overrides) as node:
        if bag is not None:
            node.hostile(bag, burst, log)
        for k in range(fuzz_passes if fuzz else 0):
            if node.proc.proc.poll() is not None:
                break
            node.fuzz(fuzz, seed + k, log)
    return node.session


TABLE_HEADER = ("| input | isolation | run | cases | sent | received | answered | accepted "
                "(unverified) | rejected | dropped | survived | RSS before -> after (MiB) | "
                "/diagnostics keys, B | exit | violations |\n|" + "---|" * 15)


def table(sessions: list[Session]) -> str:
    """The hostile-input table (Markdown)."""
    rows = [TABLE_HEADER]
    for s in sessions:
        for r in s.runs:
            rows.append(
                f"| {r.input_type} | {r.isolation} | {r.run} ({r.pace}) | {r.cases} | {r.sent} "
                f"| {r.received} | {r.answered} | {r.accepted} ({r.unverified}) | {r.rejected} | "
                f"{r.dropped} | "
                f"{'yes' if s.survived else 'NO'} | {r.rss_before_mb:.0f} -> "
                f"{r.rss_after_mb:.0f} | {r.diagnostics_keys}, {r.diagnostics_bytes} | "
                f"{s.exit_code} | {len(r.violations) or 'none'} |")
    return "\n".join(rows)


def case_table(sessions: list[Session]) -> str:
    """Per hostile case: what each node did with its messages (Markdown)."""
    rows = ["| input | case | expect | " + " | ".join(
        f"isolation {s.isolation}" for s in sessions if s.input_type == sessions[0].input_type)
        + " |"]
    by_type: dict[str, list[Session]] = {}
    for s in sessions:
        by_type.setdefault(s.input_type, []).append(s)
    rows.append("|" + "---|" * (3 + max(len(v) for v in by_type.values())))
    for input_type, group in by_type.items():
        hostile = [next((r for r in s.runs if r.run == "hostile"), None) for s in group]
        names = list(hostile[0].outcomes) if hostile and hostile[0] else []
        for name in names:
            cells = []
            expect = hostile[0].outcomes[name]["expect"]
            for run in hostile:
                got = dict(run.outcomes.get(name, {})) if run else {}
                got.pop("expect", None)
                cells.append(", ".join(f"{n} {k}" for k, n in sorted(got.items())) or "-")
            rows.append(f"| {input_type} | {name} | {expect} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
