"""Worker crash to next output through save_node (isolation=process), over DDS, N crashes.

One isolated node (`config/<model>_isolated.yaml` or the model's config with `isolation:=process`)
serves inputs in lockstep. Each repetition calls `~/inject_crash` (the active worker is armed to
crash on its next inference), publishes one input right after the reply, and times:
- `crash_to_output`: the `~/inject_crash` call sent -> that input's output received (the figure
  of the task: service round trip + crash + detection + takeover by the standby + re-run);
- `input_to_output`: the same input published -> its output (the failover as a subscriber sees it);
- `clean_input_to_output`: inputs without a crash, measured in the same run between crashes;
- `inprocess_input_to_output`: the same inputs through a second node with `isolation=none`
  (the model in the node's process), alternating with the isolated node: the cost of the pipe.
Every crashed input's output is compared bit for bit with the fault-free output of its frame.
Between crashes the bench waits `--gap` seconds so the next standby is warm; the node's
`cold_failovers` counter says whether any failover had to start a worker instead.

`python -m save_ros.tools.bench_failover --crashes 12 --out docs/results/failover_ros.json`
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from save_ros.argtypes import nonnegative_float, nonnegative_int, positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.eval.timing import summary
from save_ros.ros.bags import read_messages
from save_ros.tools.bench_node import _restamped
from save_ros.tools.bundled import BAGS_DIR, CONFIG_DIR, DIGITS_BAG
from save_ros.tools.client import InputRecord, ReplayClient, ReplayResult, stamp_key
from save_ros.tools.process import NodeProcess


def _publish_and_wait(client: ReplayClient, msg, timeout: float) -> tuple[float, list | None]:
    """Publish one input, wait for its output: (publish time, output or None)."""
    stamp = stamp_key(msg.header)
    with client._cond:
        client.result = ReplayResult()
        client.result.add_input(InputRecord(0, stamp, sent_at=(t := time.monotonic())))
    client.pub.publish(msg)
    with client._cond:
        client._cond.wait_for(lambda: stamp in client.result.outputs, timeout)
        got = client.result.outputs.get(stamp)
    return t, got


# the crashed input's path inside the node (its status's failover_phases_ms) and after it
PHASES = ("detection", "activation", "inference", "return", "verdict_and_publication")


def _add_phases(phases: dict[str, list[float]], client: ReplayClient, stamp: int,
                received: float, timeout: float = 2.0) -> None:
    """The crashed input's phases from its status; verdict_and_publication = answered in the
    node -> output received here (one CLOCK_MONOTONIC: node and bench share the host)."""
    deadline = time.monotonic() + timeout
    status: dict[str, str] | None = None
    while time.monotonic() < deadline:
        with client._cond:
            status = client.result.final_status(stamp)
        if status and "failover_phases_ms" in status:
            break
        time.sleep(0.01)
    if not status or not status.get("failover_phases_ms"):
        return
    for part in status["failover_phases_ms"].split():
        name, _, value = part.partition("=")
        if name in phases:
            phases[name].append(float(value))
    answered = float(status.get("answered_monotonic", 0.0))
    if answered:
        phases["verdict_and_publication"].append((received - answered) * 1e3)


def _stats(values: list[float]) -> dict[str, float]:
    s = summary(values, (50, 90))
    return {"median": s["p50"], "p90": s["p90"], "min": s["min"], "max": s["max"], "n": s["n"]}


def measure(crashes: int, kind: str, gap: float, clean_per_gap: int,
            device: str = "cpu") -> dict[str, object]:
    """Run the node, inject `crashes` crashes; the figures (ms) and counters."""
    frames = [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)][:12]
    with tempfile.TemporaryDirectory() as tmp:
        proc = NodeProcess(CONFIG_DIR / "digits_cnn_isolated.yaml",
                           namespace=f"failover_bench_{os.getpid()}", overrides={
                               "fault_injection.enabled": True,
                               "fault_injection.crash_kind": kind,
                               "analysis_cache": str(Path(tmp) / "digits_cnn.json"),
                               "qos.depth": 100, "qos.reliability": "reliable",
                               "queue_size": 100, "diagnostics_period": 0.5,
                               "device": device}).start()
        plain = NodeProcess(CONFIG_DIR / "digits_cnn.yaml",
                            namespace=f"failover_bench_inproc_{os.getpid()}", overrides={
                                "analysis_cache": str(Path(tmp) / "digits_cnn.json"),
                                "qos.depth": 100, "qos.reliability": "reliable",
                                "queue_size": 100, "diagnostics_period": 0.5,
                                "device": device}).start()
        try:
            with ReplayClient(node_fqn=proc.fqn, reliability="reliable") as client, \
                    ReplayClient(node_fqn=plain.fqn, reliability="reliable") as inproc:
                client.wait_for_node(proc, timeout=180.0)
                inproc.wait_for_node(plain, timeout=180.0)
                inproc.replay(_restamped(frames, 24, 100.0, 1), pace="lockstep")
                inproc_ms = []
                warm = client.replay(_restamped(frames, 24, 100.0, 1), pace="lockstep")
                reference = {i % 12: warm.final_output(stamp_key(m.header))
                             for i, m in enumerate(_restamped(frames, 24, 100.0, 1))}
                before = client.latest_diagnostics()
                stream = _restamped(frames, crashes * (1 + clean_per_gap), 100.0, 10)
                crash_ms, input_ms, clean_ms, wrong, missing = [], [], [], 0, 0
                phases: dict[str, list[float]] = {k: [] for k in PHASES}
                k = 0
                for _ in range(crashes):
                    time.sleep(gap)  # the standby started after the last crash gets warm
                    for _ in range(clean_per_gap):
                        t, got = _publish_and_wait(client, stream[k], 10.0)
                        if got:
                            clean_ms.append((got[0][0] - t) * 1e3)
                        t, got = _publish_and_wait(inproc, stream[k], 10.0)
                        if got:
                            inproc_ms.append((got[0][0] - t) * 1e3)
                        k += 1
                    t0 = time.monotonic()
                    reply = client.call("inject_crash", timeout=10.0)
                    if not reply.success:
                        raise RuntimeError(f"~/inject_crash failed: {reply.message}")
                    t, got = _publish_and_wait(client, stream[k], 30.0)
                    if got is None:
                        missing += 1
                    else:
                        crash_ms.append((got[0][0] - t0) * 1e3)
                        input_ms.append((got[0][0] - t) * 1e3)
                        wrong += int(got[-1][1] != reference[k % 12])
                        _add_phases(phases, client, stamp_key(stream[k].header), got[0][0])
                    k += 1
                time.sleep(1.0)
                after = client.latest_diagnostics()
                proc.check_alive()
        finally:
            exit_code = proc.stop()
            plain.stop()

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    return {
        "crash_kind": kind, "crashes": crashes,
        "crash_to_output_ms": _stats(crash_ms), "input_to_output_ms": _stats(input_ms),
        "clean_input_to_output_ms": _stats(clean_ms),
        "inprocess_input_to_output_ms": _stats(inproc_ms),
        "ratio_isolated_vs_inprocess_clean": (statistics.median(clean_ms)
                                              / statistics.median(inproc_ms)),
        "ratio_crashed_vs_clean_input_to_output": (statistics.median(input_ms)
                                                   / statistics.median(clean_ms)),
        "crashed_input_phases_ms": {k: _stats(v) for k, v in phases.items() if v},
        "outputs_missing": missing, "outputs_not_bit_equal": wrong,
        "worker_failures": delta("worker_failures"), "failovers": delta("failovers"),
        "cold_failovers": delta("cold_failovers"), "dropped": delta("dropped"),
        "node_exit_code": exit_code,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench ros-failover`."""
    parser.add_argument("--crashes", type=positive_int, default=12, help="crashes to inject")
    parser.add_argument("--kind", default="segfault", choices=("segfault", "exit", "hang"))
    parser.add_argument("--gap", type=nonnegative_float, default=2.0,
                        help="seconds between crashes (lets the next standby get warm)")
    parser.add_argument("--clean", type=nonnegative_int, default=3,
                        help="fault-free inputs between crashes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both nodes)")
    parser.add_argument("--out", type=Path, help="JSON results")


def run(args: argparse.Namespace) -> int:
    """Measure; print a summary line; write JSON."""
    result: dict[str, object] = run_record("save_ros.bench_ros_failover", device=args.device)
    result.update(measure(args.crashes, args.kind, args.gap, args.clean, args.device))
    result["loadavg_end"] = os.getloadavg()
    c, i, n = (result["crash_to_output_ms"], result["input_to_output_ms"],
               result["clean_input_to_output_ms"])
    print(f"{args.kind} x{args.crashes}: ~/inject_crash -> next output median {c['median']:.1f} ms "
          f"(p90 {c['p90']:.1f}); crashed input -> output {i['median']:.1f} ms vs clean "
          f"{n['median']:.1f} ms (in-process node "
          f"{result['inprocess_input_to_output_ms']['median']:.1f} ms); missing "
          f"{result['outputs_missing']}, not bit-equal "
          f"{result['outputs_not_bit_equal']}, cold failovers {result['cold_failovers']}/"
          f"{result['failovers']}", flush=True)
    phases = result["crashed_input_phases_ms"]
    if phases:
        print("crashed input, median ms: " + ", ".join(
            f"{k} {v['median']:.2f}" for k, v in phases.items()), flush=True)
    if args.out:
        write_json(args.out, result)
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.bench_failover")


if __name__ == "__main__":
    sys.exit(main())
