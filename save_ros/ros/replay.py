"""`save-ros replay`: play a bag's input topic into `save_node`, record its outputs, summarise.

The node runs as its own process (started here from `--config`, or already running with
`--attach`); this tool talks to it only over DDS. Inputs are published at the bag's timing times
`--rate`, as fast as possible (`--as-fast-as-possible`: a flood, drops are expected and counted),
or one at a time (`--lockstep`: each input waits for its fault status, so none is dropped).
`~/output` and `~/fault_status` go into `--out` (a new rosbag2), and a summary is printed: inputs
and outputs, dropped, verified, detected, repaired, end-to-end latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from save_ros.cli import nonnegative_int, positive_float, positive_int
from save_ros.ros.bags import BagError, BagWriter, read_messages, topics
from save_ros.ros.client import INPUT_MSGTYPES, ReplayClient, ReplayResult, compare
from save_ros.ros.params import ParameterError
from save_ros.ros.process import NodeProcess, config_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `save-ros replay`."""
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap)")
    parser.add_argument("--config", type=Path, required=True,
                        help="node parameters YAML (config/<model>.yaml)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=positive_float, default=1.0,
                      help="speed factor on the bag's timing")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="publish without pauses (drops are expected and counted)")
    pace.add_argument("--lockstep", action="store_true",
                      help="publish the next input only after the last one's fault status")
    parser.add_argument("--out", type=Path, help="new rosbag2 for ~/output and ~/fault_status")
    parser.add_argument("--topic", help="input topic in the bag (default: the one whose type "
                        "matches the node's input_type)")
    parser.add_argument("--namespace", default="", help="namespace of the node")
    parser.add_argument("--attach", action="store_true",
                        help="use a node already running (do not start one)")
    parser.add_argument("--inject-every", type=nonnegative_int, default=0, metavar="N",
                        help="call ~/inject_faults before every N-th input (enables injection)")
    parser.add_argument("--inject-count", type=positive_int, help="bit flips per injection")
    parser.add_argument("--inject-seed", type=int, help="seed of the first injection")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable)")
    parser.add_argument("--limit", type=nonnegative_int, default=0,
                        help="replay only the first N inputs (0: all)")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--compare-clean", action="store_true",
                        help="replay once without faults first (lockstep), then compare every "
                        "verified output of the real run with the clean one")


def load_inputs(bag: Path, input_type: str, topic: str | None, limit: int = 0) -> list:
    """The input messages of a bag: on `topic`, or the only topic of the node's input type."""
    if input_type == "float32_multi_array":
        raise BagError("replay matches results to inputs by header stamp, and "
                       "Float32MultiArray has none; record the policy input as JointState")
    want = INPUT_MSGTYPES[input_type]
    available = topics(bag)
    if topic is None:
        matching = [t for t, (msgtype, _) in available.items() if msgtype == want]
        if not matching:  # --topic cannot help: the bag is for another model's node
            raise BagError(f"{bag} has 0 topics of type {want} ({available}), the input of this "
                           f"config (input_type: {input_type}); use a config for this bag")
        if len(matching) > 1:
            raise BagError(f"{bag} has {len(matching)} topics of type {want} "
                           f"({available}); choose one with --topic")
        topic = matching[0]
    elif topic not in available:
        raise BagError(f"{bag} has no topic {topic}; it has {sorted(available)}")
    elif available[topic][0] != want:  # publishing it would fail with rclpy's TypeError
        raise BagError(f"{topic} in {bag} carries {available[topic][0]}, but the node takes "
                       f"{want} (input_type: {input_type}); use a config for this bag")
    msgs = list(read_messages(bag, (topic,)))
    return msgs[:limit] if limit else msgs


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    if args.inject_every:
        out["fault_injection.enabled"] = True
    if args.inject_count is not None:
        out["fault_injection.count"] = args.inject_count
    if args.inject_seed is not None:
        out["fault_injection.seed"] = args.inject_seed
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep:
            raise ParameterError(f"--param {item!r}: write NAME:=VALUE, e.g. -p protect:=false")
        out[name] = yaml.safe_load(value)
    return out


def print_summary(label: str, result: ReplayResult, file=None) -> None:
    """The human-readable summary of one replay (to stdout unless `file` is given)."""
    file = file or sys.stdout  # looked up per call: a default bound at import goes stale
    s = result.summary()
    lat = s["latency_ms"]
    print(f"[{label}] inputs {s['inputs']}  outputs {s['outputs']}  dropped {s['dropped']}  "
          f"rejected {s['rejected']}  verified {s['verified']}  unverified {s['unverified']}",
          file=file)
    lost = s["inputs"] - s["received"]
    if lost > 0 and s.get("received", 0) > 0:
        print(f"[{label}] {lost} inputs never reached the node (DDS dropped them before its "
              f"queue: best-effort input QoS while the node was busy)", file=file)
    print(f"[{label}] faults injected {s['faults_injected']}  detected {s['detected']} "
          f"(in {s['inferences_with_detection']} inferences)  tensors repaired {s['repaired']}",
          file=file)
    if lat:
        print(f"[{label}] end-to-end latency ms (input published -> output received): "
              f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
              f"max {lat['max']:.2f}", file=file)


def run(args: argparse.Namespace) -> int:
    """Run `save-ros replay`."""
    params = config_parameters(args.config)
    overrides = _overrides(args)
    params.update(overrides)
    inputs = load_inputs(args.bag, str(params.get("input_type", "image")), args.topic, args.limit)
    node = None if args.attach else NodeProcess(args.config, args.namespace, overrides).start()
    pace = ("lockstep" if args.lockstep else "afap" if args.as_fast_as_possible else "rate")
    report: dict[str, object] = {"bag": str(args.bag), "config": str(args.config),
                                 "pace": pace, "rate": args.rate}
    try:
        with ReplayClient(node_fqn=(node.fqn if node else NodeProcess(
                namespace=args.namespace).fqn),
                input_topic=str(params.get("input_topic", "~/input")),
                input_type=str(params.get("input_type", "image")),
                reliability=str(params.get("qos.reliability", "best_effort"))) as client:
            client.wait_for_node(node, timeout=60.0)
            clean = None
            if args.compare_clean:
                clean = client.replay(inputs, pace="lockstep")
                print_summary("clean", clean)
                report["clean"] = clean.summary()
            result = client.replay(inputs, pace=pace, rate=args.rate,
                                   inject_every=args.inject_every)
            print_summary("replay", result)
            report["replay"] = result.summary()
            if clean is not None:
                cmp = compare(clean, result)
                report["comparison"] = cmp
                print(f"[compare] verified outputs equal to the clean run: "
                      f"{cmp['verified_equal']}/{cmp['verified_compared']}; all outputs equal: "
                      f"{cmp['all_equal']}/{cmp['all_compared']}")
            if args.out:
                with BagWriter(args.out) as bag:
                    for topic, t_ns, msg in result.recorded:
                        bag.write(topic, msg, t_ns)
                print(f"recorded {len(result.recorded)} messages into {args.out}")
    finally:
        if node is not None:
            code = node.stop()
            report["node_exit_code"] = code
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
