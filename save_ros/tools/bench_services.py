"""save_node's services under load, over DDS: request bursts, re-analyses under a stream, RSS.

Two measurements on one `save_node` process (`config/digits_cnn.yaml` by default):
- `burst`: `--clients` clients (one rclpy node and one client each, in this process) call
  `~/get_state`, `~/recover` and `~/reanalyze` (round robin) at the same moment, on a node
  that is otherwise idle, or streaming when `--rate` is set; counted: answered (success or a
  refusal with its message) and unanswered after `--timeout` s. Every request must be answered.
- `reanalyze`: stream mono8 digits frames at `--rate` Hz and call `~/reanalyze` `--calls`
  times, one after another. Recorded: the node's RSS (with its children) at the start, its
  peak and at the end, the most inferences waiting for a verdict (`/diagnostics`
  `awaiting_verdict_max`), faults counted (must stay 0: nothing is injected), results
  published unverified (must be 0) and the stream's answered / dropped counts.

`save-ros bench ros-services --mode burst --clients 30 --out burst.json`
`save-ros bench ros-services --mode reanalyze --calls 100 --rate 100 --out reanalyze.json`
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from pathlib import Path

from lifecycle_msgs.srv import GetState
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_srvs.srv import Trigger

from save_ros.argtypes import positive_float, positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.ros.bags import read_messages
from save_ros.tools.bundled import BAGS_DIR, CONFIG_DIR, DIGITS_BAG
from save_ros.tools.client import ReplayClient, stamp_key
from save_ros.tools.hostile_suite import rss_mb
from save_ros.tools.process import NodeProcess

SERVICES = {"get_state": GetState, "recover": Trigger, "reanalyze": Trigger}


def burst(fqn: str, clients: int, services: tuple[str, ...] = tuple(SERVICES),
          timeout: float = 60.0, client_depth: int = 10) -> dict[str, object]:
    """`clients` separate clients each call one service once, all at once; count the answers.

    `client_depth` is each client's reply history (rclpy's default: 10). rmw_fastrtps hands
    every reply of a service to every client's reply reader, which keeps only the last
    `client_depth`: with hundreds of clients spun by one executor in one process, a reply is
    pushed out by others' before its client takes it (measured: 300 of 300 answered with
    depth 1000, 45 with 10, on a node that took and answered all 300).
    """
    import rclpy

    context = Context()
    rclpy.init(args=[], context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes, calls = [], []
    try:
        for i in range(clients):
            node = Node(f"burst_{os.getpid()}_{i}", context=context,
                        start_parameter_services=False, enable_rosout=False)
            name = services[i % len(services)]
            nodes.append(node)
            calls.append((name, node.create_client(SERVICES[name], f"{fqn}/{name}",
                                                   qos_profile=QoSProfile(depth=client_depth))))
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        deadline = time.monotonic() + 60.0
        for _, client in calls:  # every client has discovered its server
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"{fqn}: a service was not discovered within 60 s")
        answers: list[tuple[str, float, object]] = []
        lock, all_in = threading.Lock(), threading.Event()

        def answered(name: str, future) -> None:
            with lock:
                answers.append((name, time.monotonic() - t0, future.result()))
                if len(answers) == len(calls):
                    all_in.set()

        t0 = time.monotonic()
        for name, client in calls:
            request = SERVICES[name].Request()
            client.call_async(request).add_done_callback(
                lambda f, name=name: answered(name, f))
        all_in.wait(timeout)
        with lock:
            got = list(answers)
    finally:
        executor.shutdown(timeout_sec=1.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    per: dict[str, dict[str, object]] = {}
    for name in services:
        mine = [a for a in got if a[0] == name]
        sent = sum(1 for c in calls if c[0] == name)
        refused = [r for _, _, r in mine if hasattr(r, "success") and not r.success]
        per[name] = {"sent": sent, "answered": len(mine), "unanswered": sent - len(mine),
                     "refused": len(refused),
                     "refusals": sorted({r.message[:120] for r in refused})}
    return {"clients": clients, "client_depth": client_depth, "answered": len(got),
            "unanswered": len(calls) - len(got),
            "last_answer_s": round(max((t for _, t, _ in got), default=0.0), 3),
            "timeout_s": timeout, "per_service": per}


class Stream:
    """Publishes the digits frames in a loop at `rate` Hz on its own thread until stopped;
    `keys` are the stamps it sent (unique across the streams of one process)."""

    _streams = itertools.count()

    def __init__(self, client: ReplayClient, rate: float) -> None:
        self.client, self.rate, self.sent = client, rate, 0
        self.keys: set[int] = set()
        self._sec = 100_000 * (1 + next(self._streams))
        self.frames = [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)][:64]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            msg = self.frames[self.sent % len(self.frames)]
            msg.header.stamp.sec, msg.header.stamp.nanosec = self._sec + self.sent // 1000, \
                (self.sent % 1000) * 1_000_000
            self.keys.add(stamp_key(msg.header))
            self.client.pub.publish(msg)
            self.sent += 1
            self._stop.wait(max(0.0, t0 + self.sent / self.rate - time.monotonic()))

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5.0)


def _counter(diag: dict[str, str], key: str) -> int:
    try:
        return int(float(diag.get(key, "0")))
    except ValueError:
        return 0


def reanalyze_under_stream(proc: NodeProcess, client: ReplayClient, calls: int, rate: float,
                           settle: float = 30.0) -> dict[str, object]:
    """Stream at `rate` Hz and call ~/reanalyze `calls` times in a row; RSS and verdict backlog."""
    pid = proc.proc.pid
    rss = [rss_mb(pid)]
    before = client.latest_diagnostics(timeout=5.0)
    answers, refusals, t0 = 0, [], time.monotonic()
    with Stream(client, rate) as stream:
        for _ in range(calls):
            resp = client.call("reanalyze", timeout=120.0)
            answers += 1
            if not resp.success:
                refusals.append(resp.message[:120])
            rss.append(rss_mb(pid))
        elapsed = time.monotonic() - t0
    # the backlog drains: every frame the node received is answered (best-effort input QoS
    # may lose frames before the node; the node's `received` counter says how many it took)
    deadline, last = time.monotonic() + settle, (-1, -1)
    while time.monotonic() < deadline:
        after = client.latest_diagnostics(timeout=2.0)
        with client._cond:
            values = [v for key in stream.keys for _, v in client.result.statuses.get(key, ())]
        now = (len(values), _counter(after, "received"))
        if now[0] >= now[1] - _counter(before, "received") or now == last:
            break
        last = now
    rss.append(rss_mb(pid))
    published_unverified = sum(1 for v in values if v.get("published") == "true"
                               and v.get("verified") != "true")
    return {
        "calls": calls, "rate_hz": rate, "seconds": round(elapsed, 1), "answered": answers,
        "refused": len(refusals), "refusals": sorted(set(refusals)),
        "frames_sent": stream.sent,
        "received_by_node": _counter(after, "received") - _counter(before, "received"),
        "statuses": len(values),
        "verified": sum(1 for v in values if v.get("verified") == "true"),
        "dropped": sum(1 for v in values if v.get("dropped") == "true"),
        "published_unverified": published_unverified,
        "faults_detected": _counter(after, "faults_detected") - _counter(before,
                                                                         "faults_detected"),
        "tensors_repaired": _counter(after, "tensors_repaired") - _counter(before,
                                                                           "tensors_repaired"),
        "awaiting_verdict_max": _counter(after, "awaiting_verdict_max"),
        "rss_start_mb": round(rss[0], 1), "rss_peak_mb": round(max(rss), 1),
        "rss_end_mb": round(rss[-1], 1), "rss_growth_mb": round(rss[-1] - rss[0], 1),
        "rss_per_call_mb": [round(r, 1) for r in rss],
    }


def node(config: Path, namespace: str, overrides: dict[str, object],
         cache_dir: Path) -> NodeProcess:
    """A save_node process of `config` with its analysis cache in `cache_dir`."""
    return NodeProcess(config, namespace=namespace, overrides={
        "analysis_cache": str(cache_dir / "analysis.json"), **overrides}).start()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `save-ros bench ros-services`."""
    parser.add_argument("--mode", choices=("burst", "reanalyze"), default="burst")
    parser.add_argument("--config", type=Path, default=CONFIG_DIR / "digits_cnn.yaml")
    parser.add_argument("--clients", type=positive_int, default=30, help="burst: clients")
    parser.add_argument("--services", default=",".join(SERVICES),
                        help="burst: services called round robin (get_state,recover,reanalyze)")
    parser.add_argument("--client-depth", type=positive_int, default=10,
                        help="burst: reply history of each client (rclpy's default 10)")
    parser.add_argument("--timeout", type=positive_float, default=60.0,
                        help="burst: seconds to wait for every answer")
    parser.add_argument("--calls", type=positive_int, default=20, help="reanalyze: calls")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="Hz of the input stream (reanalyze: default 100)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="a node parameter (repeatable), e.g. services.qos_depth:=10")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here")


def run(args: argparse.Namespace) -> int:
    """Start the node, measure, print, write the record."""
    import json
    import tempfile

    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        print(f"save-ros bench ros-services: unknown service(s) {unknown}; choose from "
              f"{', '.join(SERVICES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_services_") as tmp:
        overrides = dict(p.split(":=", 1) for p in args.param if ":=" in p)
        proc = node(args.config, f"bench_services_{os.getpid()}", overrides, Path(tmp))
        try:
            with ReplayClient(node_fqn=proc.fqn) as client:
                client.wait_for_node(proc, timeout=120.0)
                rate = args.rate or (100.0 if args.mode == "reanalyze" else 0.0)
                if args.mode == "burst":
                    if rate:
                        with Stream(client, rate):
                            figures = burst(proc.fqn, args.clients, services, args.timeout,
                                            args.client_depth)
                    else:
                        figures = burst(proc.fqn, args.clients, services, args.timeout,
                                            args.client_depth)
                    figures["rate_hz"] = rate
                else:
                    figures = reanalyze_under_stream(proc, client, args.calls, rate)
        finally:
            code = proc.stop()
        figures["node_exit_code"] = code
        log = proc.output()
        figures["traceback_in_log"] = "Traceback" in log
        figures["node_log_errors"] = [line[:200] for line in log.splitlines()
                                      if "ERROR" in line or "WARN" in line][:10]
    record = {**run_record(f"ros_services_{args.mode}"), "parameters": overrides, **figures}
    print(json.dumps({k: v for k, v in record.items() if k != "rss_per_call_mb"}, indent=1))
    if args.out:
        write_json(args.out, record)
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.bench_services")


if __name__ == "__main__":
    sys.exit(main())
