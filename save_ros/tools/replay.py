"""`save-ros replay`: play a bag's input topic into `save_node`, record its outputs, summarise.

The node runs as its own process (started here from `--config`, or already running with
`--attach`); this tool talks to it only over DDS, and publishes only once the node has matched
its input subscription and answered a service call (so it has discovered this client too).
Pacing (`--pace`):
- `lockstep` (the default, deterministic): one input at a time over a reliable publisher, each
  waits for its fault status, so every bag message reaches the node and is answered once;
- `realtime`: the bag's timing times `--rate`, with the node's input QoS (best effort for a
  camera): what a robot sees; inputs the node cannot take in time are lost and counted;
- `afap`: no pauses (a flood).
Inputs are kept by their position in the bag (duplicate stamps stay separate inputs).
`~/output` and `~/fault_status` go into `--out` (a new rosbag2), and a summary is printed: sent,
received by the node, answered, lost (with the cause of each loss, from the node's /diagnostics
counters and QoS), verified, detected, repaired, end-to-end latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from save_ros.argtypes import nonnegative_int, positive_float, positive_int
from save_ros.ros.bags import BagError, BagWriter, read_messages, topics
from save_ros.ros.params import ParameterError
from save_ros.tools.client import INPUT_MSGTYPES, PACES, ReplayClient, ReplayResult, compare
from save_ros.tools.process import NodeProcess, config_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `save-ros replay`."""
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap)")
    parser.add_argument("--config", type=Path, required=True,
                        help="node parameters YAML (config/<model>.yaml)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--pace", choices=PACES,
                      help="lockstep (default): every input reaches the node, one at a time; "
                      "realtime: the bag's timing times --rate, losses counted; afap: a flood")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="same as --pace afap")
    pace.add_argument("--lockstep", action="store_true", help="same as --pace lockstep")
    parser.add_argument("--rate", type=positive_float,
                        help="speed factor on the bag's timing (implies --pace realtime)")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"),
                        help="QoS of the input publisher (default: reliable in lockstep, the "
                        "node's qos.reliability otherwise)")
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
    if input_type not in INPUT_MSGTYPES:
        raise BagError(f"input_type {input_type!r}: use one of {', '.join(INPUT_MSGTYPES)}")
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
    loss = s["losses"]
    lat = s["latency_ms"]
    received = "?" if loss["received"] is None else loss["received"]
    lost = loss.get("lost_before_node", 0) + loss["published_unmatched"]
    print(f"[{label}] inputs {s['inputs']} sent ({result.pace}), {received} received by the "
          f"node, {loss['answered']} answered, {lost} lost", file=file)
    print(f"[{label}] outputs {s['outputs']}  rejected {s['rejected']}  dropped by the node "
          f"{loss['dropped_by_node']}  verified {s['verified']}  unverified {s['unverified']}",
          file=file)
    for cause in loss["causes"]:
        print(f"[{label}] {cause}", file=file)
    print(f"[{label}] faults injected {s['faults_injected']}  detected {s['detected']} "
          f"(in {s['inferences_with_detection']} inferences)  tensors repaired {s['repaired']}",
          file=file)
    if lat:
        print(f"[{label}] end-to-end latency ms (input published -> output received): "
              f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
              f"max {lat['max']:.2f}", file=file)


def pace_of(args: argparse.Namespace) -> str:
    """The pace the arguments ask for (lockstep unless told otherwise)."""
    if args.lockstep:
        pace = "lockstep"
    elif args.as_fast_as_possible:
        pace = "afap"
    else:
        pace = args.pace or ("realtime" if args.rate is not None else "lockstep")
    if args.rate is not None and pace != "realtime":
        raise ParameterError(f"--rate applies to --pace realtime, not {pace}")
    return pace


def run(args: argparse.Namespace) -> int:
    """Run `save-ros replay`: 0 done, 1 the node failed or lockstep lost an input, 2 bad input."""
    if args.out is not None and args.out.exists():  # before the replay, not after it
        raise BagError(f"--out {args.out} exists; a rosbag2 is written into a new folder: "
                       "remove it or choose another path")
    params = config_parameters(args.config)
    overrides = _overrides(args)
    params.update(overrides)
    inputs = load_inputs(args.bag, str(params.get("input_type", "image")), args.topic, args.limit)
    if not inputs:
        raise BagError(f"{args.bag} has no messages to replay on that topic")
    pace = pace_of(args)
    rate = args.rate or 1.0
    input_type = str(params.get("input_type", "image"))
    reliability = args.reliability or ("reliable" if pace == "lockstep" else
                                       str(params.get("qos.reliability", "best_effort")))
    node = None if args.attach else NodeProcess(args.config, args.namespace, overrides).start()
    report: dict[str, object] = {"bag": str(args.bag), "config": str(args.config),
                                 "pace": pace, "rate": rate, "reliability": reliability}
    try:
        with ReplayClient(node_fqn=(node.fqn if node else NodeProcess(
                namespace=args.namespace).fqn),
                input_topic=str(params.get("input_topic", "~/input")),
                input_type=input_type, reliability=reliability) as client:
            client.wait_for_node(node, timeout=60.0)
            clean = None
            if args.compare_clean:
                clean = client.replay(inputs, pace="lockstep")
                print_summary("clean", clean)
                report["clean"] = clean.summary()
            result = client.replay(inputs, pace=pace, rate=rate,
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
    return _exit_code(pace, result, report.get("node_exit_code"))


def _exit_code(pace: str, result: ReplayResult, node_exit_code: object) -> int:
    """1 when the node failed (exited early or non-zero) or lockstep left an input unanswered."""
    losses = result.losses()
    if result.node_exit_code is not None or node_exit_code not in (None, 0):
        print(f"save-ros replay: save_node exited with code "
              f"{result.node_exit_code if result.node_exit_code is not None else node_exit_code}",
              file=sys.stderr)
        return 1
    if pace == "lockstep" and losses["unanswered"]:
        print(f"save-ros replay: {losses['unanswered']} of {losses['sent']} inputs got no fault "
              "status in lockstep", file=sys.stderr)
        return 1
    return 0
