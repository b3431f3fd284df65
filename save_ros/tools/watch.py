"""`save-ros watch [NODE]`: a running `save_node`'s output, fault status and diagnostics, live.

What `ros2 topic echo` would show on three topics, in one readable view, from the project itself
(the PyPI install has no `ros2` command). NODE is the node's name (`save_node`, the default, as
in config/*.yaml) in any namespace, or its fully qualified name (`/robot1/save_node`); the node is
found on the ROS graph, and its topics by name: `<node>/output` (whatever message type it
advertises), `<node>/fault_status`, and the node's own statuses on `/diagnostics`.

On a terminal the view is a panel redrawn a few times a second; otherwise (a pipe, a file, a
test) one line per message. `--once`, `--count N` and `--seconds S` end it for scripts: exit 0
when what was asked for arrived, 1 when `--seconds` ran out first, 2 for a node name that
matches several nodes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import shutil
import sys
import threading
import time

from save_ros.argtypes import positive_float, positive_int
from save_ros.errors import UserError
from save_ros.tools.watch_view import DiagRecord, OutputRecord, StatusRecord, WatchView

DEFAULT_NODE = "save_node"
REFRESH_S = 0.25  # panel redraws per second on a terminal: 4
_IDS = itertools.count()


class AmbiguousNodeError(UserError, LookupError):
    """The name matches several nodes on the graph; the message lists them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `save-ros watch`."""
    parser.add_argument("node", nargs="?", default=DEFAULT_NODE,
                        help="node name in any namespace, or its full name /ns/name "
                        f"(default {DEFAULT_NODE}, as in config/*.yaml)")
    parser.add_argument("--once", action="store_true",
                        help="exit after one message on each of output, fault_status and the "
                        "node's /diagnostics")
    parser.add_argument("--count", type=positive_int, metavar="N",
                        help="exit after N fault statuses (N inputs answered)")
    parser.add_argument("--seconds", type=positive_float, metavar="S",
                        help="exit after S seconds (with --once/--count: exit 1 if they are not "
                        "met by then)")
    parser.add_argument("--lines", action="store_true",
                        help="one line per message even on a terminal (the default elsewhere)")


def _stamp(msg) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def output_record(msg) -> OutputRecord:
    """An `~/output` message (JointState, vision_msgs Classification, Float64MultiArray)."""
    kind = type(msg).__name__
    if hasattr(msg, "results"):  # vision_msgs/Classification: one hypothesis per class
        scores = [float(getattr(r, "score", 0.0)) for r in msg.results]
        names = [str(getattr(r, "class_id", "")) for r in msg.results]
        best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        return OutputRecord(_stamp(msg), kind, scores, names, best,
                            scores[best] if best is not None else None)
    if hasattr(msg, "position"):  # JointState: position = raw outputs, effort[0] = argmax
        values = [float(v) for v in msg.position]
        decision = int(msg.effort[0]) if len(msg.effort) else None
        probs = list(msg.velocity)
        prob = (float(probs[decision]) if decision is not None and decision < len(probs)
                else None)
        return OutputRecord(_stamp(msg), kind, values, list(msg.name), decision, prob)
    if hasattr(msg, "points"):  # JointTrajectory (an action chunk): point k's joints, in order
        values = [float(v) for p in msg.points for v in p.positions]
        names = [f"{j}[{k}]" for k in range(len(msg.points)) for j in msg.joint_names]
        return OutputRecord(_stamp(msg), kind, values, names)
    values = [float(v) for v in getattr(msg, "data", [])]
    return OutputRecord(_stamp(msg), kind, values)


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _level(status) -> int:
    level = status.level
    return level[0] if isinstance(level, bytes) else int(level)


class Watcher:
    """Subscribes to one node's topics on a context of its own; records go to a queue."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.node = Node(f"save_watch_{os.getpid()}_{next(_IDS)}", context=self.context)
        self.records: queue.Queue = queue.Queue()
        self.fqn = ""
        self.output_type = ""
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop spinning and leave the graph."""
        import rclpy

        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)

    def find_node(self, name: str) -> str | None:
        """The fully qualified name of the node called `name`, None while there is none."""
        found = sorted({(ns.rstrip("/") + "/" + n) for n, ns in
                        self.node.get_node_names_and_namespaces()})
        if name.startswith("/"):
            return name if name in found else None
        matches = [f for f in found if f.endswith("/" + name)]
        if len(matches) > 1:
            raise AmbiguousNodeError(f"{len(matches)} nodes are named {name}: "
                                     f"{', '.join(matches)}; give one of them")
        return matches[0] if matches else None

    def subscribe(self, fqn: str) -> bool:
        """Subscribe to the node's topics once `<fqn>/output` is advertised; False before."""
        from diagnostic_msgs.msg import DiagnosticArray

        from save_ros.ros.bags import message_class

        topic = f"{fqn}/output"
        types = dict(self.node.get_topic_names_and_types()).get(topic)
        if not types:
            return False
        self.fqn, self.output_type = fqn, types[0]
        self.node.create_subscription(message_class(types[0]), topic,
                                      lambda m: self.records.put(output_record(m)),
                                      self._qos(topic))
        self.node.create_subscription(DiagnosticArray, f"{fqn}/fault_status", self._on_status,
                                      self._qos(f"{fqn}/fault_status"))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                                      self._qos("/diagnostics"))
        return True

    def _qos(self, topic: str):
        """Reliable where the publishers are (the node's default), else best effort."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        pubs = self.node.get_publishers_info_by_topic(topic)
        best_effort = any(p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                          for p in pubs)
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                          else ReliabilityPolicy.RELIABLE)

    def _on_status(self, msg) -> None:
        for status in msg.status[:1]:  # the node sends one status per input
            self.records.put(StatusRecord(_stamp(msg), _level(status), status.message,
                                          _values(status)))

    def _on_diag(self, msg) -> None:
        prefix = self.fqn.lstrip("/") + ":"  # the node names its statuses "<fqn>: part"
        for status in msg.status:
            if status.name.lstrip("/").startswith(prefix):
                self.records.put(DiagRecord(status.name, _level(status), status.message,
                                            _values(status)))


class Screen:
    """Where the view goes: a redrawn panel on a terminal, else one line per message."""

    def __init__(self, view: WatchView, stream, lines: bool) -> None:
        self.view, self.stream = view, stream
        self.live = not lines and stream.isatty()
        self._drawn = 0.0

    def line(self, text: str | None) -> None:
        """Print a line in lines mode (the panel shows the change at its next redraw)."""
        if text is not None and not self.live:
            print(text, file=self.stream, flush=True)

    def refresh(self, force: bool = False) -> None:
        """Redraw the panel a few times a second."""
        now = time.monotonic()
        if self.live and (force or now - self._drawn >= REFRESH_S):
            width = shutil.get_terminal_size((100, 24)).columns
            self.stream.write("\x1b[H\x1b[2J" + self.view.panel(width) + "\n")
            self.stream.flush()
            self._drawn = now


def _done(view: WatchView, args: argparse.Namespace) -> bool:
    if args.once and view.outputs and view.status_count and view.diagnostics:
        return True
    return args.count is not None and view.status_count >= args.count


def _missing(view: WatchView, args: argparse.Namespace) -> str:
    seen = (f"{view.outputs} outputs, {view.status_count} fault statuses, {view.diagnostics} "
            "diagnostics")
    wanted = (f"{args.count} fault statuses" if args.count is not None
              else "one message on each topic")
    return f"after {args.seconds:g} s: saw {seen}; wanted {wanted} (is input arriving?)"


def run(args: argparse.Namespace) -> int:
    """Run `save-ros watch`: 0 done (or Ctrl-C), 1 --seconds ran out first, 2 ambiguous name."""
    deadline = time.monotonic() + args.seconds if args.seconds else None
    watcher = Watcher()
    out = sys.stdout
    try:
        return _watch(watcher, args, deadline, out)
    except KeyboardInterrupt:  # the usual way to end a live view
        return 0
    finally:
        watcher.close()


def _watch(watcher: Watcher, args: argparse.Namespace, deadline: float | None, out) -> int:
    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    waiting_said = False
    while True:
        fqn = watcher.find_node(args.node)
        if fqn is not None and watcher.subscribe(fqn):
            break
        if not waiting_said:
            what = f"node {args.node}" if fqn is None else f"{fqn}/output"
            print(f"waiting for {what} on ROS_DOMAIN_ID {os.environ.get('ROS_DOMAIN_ID', '0')}"
                  " ...", file=sys.stderr, flush=True)
            waiting_said = True
        if expired():
            print(f"save-ros watch: no node {args.node} with an output topic appeared in "
                  f"{args.seconds:g} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    view = WatchView(watcher.fqn, watcher.output_type)
    screen = Screen(view, out, args.lines)
    if not screen.live:
        print(view.header(), file=out, flush=True)
    while True:
        try:
            record = watcher.records.get(timeout=REFRESH_S)
        except queue.Empty:
            record = None
        if record is not None:
            screen.line(view.add(record))
            if _done(view, args):
                screen.refresh(force=True)
                return 0
        screen.refresh()
        if expired():
            screen.refresh(force=True)
            if args.once or args.count is not None:
                print(f"save-ros watch: {_missing(view, args)}", file=sys.stderr)
                return 1
            return 0
