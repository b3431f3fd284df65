"""The ROS demo: SAVE on the default model, bundled bag replayed with faults injected, summarised.

1. start `save_node` (digits_cnn, SAVE on, `~/inject_faults` offered) as its own process;
2. replay the bundled digits bag once without faults (lockstep): the reference outputs;
3. replay it again (lockstep, or `--pace realtime` at the bag's rate times `--rate`), flipping
   `--flips` random bits in normal-memory weights every `--every` frames, and compare every
   verified output with the reference;
4. (unless `--no-baseline`) do the same to a bare node (`protect:=false`): what the flips do
   without SAVE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from save_ros.argtypes import positive_float, positive_int, standalone
from save_ros.ros.bags import read_messages
from save_ros.tools.bundled import BAGS_DIR, CONFIG_DIR, DIGITS_BAG
from save_ros.tools.client import ReplayClient, ReplayResult, compare
from save_ros.tools.process import NodeProcess


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the demo."""
    parser.add_argument("--model", default="digits_cnn",
                        help="digits model (its config/<model>.yaml is used)")
    parser.add_argument("--flips", type=positive_int, default=64, help="bit flips per injection")
    parser.add_argument("--every", type=positive_int, default=10,
                        help="inject before every N-th frame")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first injection")
    parser.add_argument("--pace", choices=("lockstep", "realtime"), default="lockstep",
                        help="lockstep: every frame reaches the node, one at a time; realtime: "
                        "the bag's timing times --rate (frames the node cannot take are lost "
                        "and counted)")
    parser.add_argument("--rate", type=positive_float, default=1.0,
                        help="speed factor on the bag (--pace realtime)")
    parser.add_argument("--publish-policy", choices=("immediate", "verified"),
                        default="immediate", help="immediate: results before their verdict "
                        "(repairs re-published); verified: only checked results")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unprotected node")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")


def _accuracy(result: ReplayResult, frames: list, labels: list[int]) -> tuple[int, int]:
    """Correct decisions among the frames that got an output."""
    correct = total = 0
    for record, label in zip(result.records, labels, strict=False):
        out = record.output
        if out is not None:
            total += 1
            correct += int(max(range(len(out)), key=out.__getitem__) == label)
    return correct, total


def fault_counts(result: ReplayResult, every: int, flips: int) -> dict[str, int]:
    """What the faulty replay did and what the node made of it, each count named for what it
    counts: bit flips (not injections, not detections), inferences, failed checks, outputs.

    An injection is counted as caught when an inference from its frame up to the next
    injection reported a detection (the flips stay in the weights until they are repaired).
    """
    statuses = [r.status or {} for r in result.records]
    detected = [int(s.get("detected", "0")) for s in statuses]
    # ReplayClient.replay calls ~/inject_faults before frame i when i > 0 and i % every == 0
    starts = [i for i in range(len(statuses)) if i and i % every == 0][:len(result.injections)]
    caught = sum(1 for k, start in enumerate(starts)
                 if any(detected[start:starts[k + 1] if k + 1 < len(starts) else None]))
    return {
        "injections": len(result.injections),
        "flips_per_injection": flips,
        # the node's own counter where it reported one (it adds fault_injection.count per call)
        "flips_injected": result.counter_delta("faults_injected")
        or len(result.injections) * flips,
        "injections_caught": caught,
        "inferences_with_detection": sum(1 for d in detected if d),
        "failed_checks": sum(detected),
        "tensors_restored": sum(int(s.get("repaired", "0")) for s in statuses),
        "outputs_repaired": sum(1 for s in statuses
                                if int(s.get("repaired", "0")) and s.get("verified") == "true"),
    }


def _print_session(label: str, result: ReplayResult, counts: dict[str, int],
                   cmp: dict[str, object], acc: tuple[tuple[int, int], tuple[int, int]],
                   protect: bool) -> None:
    """The demo's summary of one node: each figure says what it counts."""
    s = result.summary()
    loss = s["losses"]
    lost = loss.get("lost_before_node", 0) + loss["published_unmatched"]
    lines = [
        f"frames {s['inputs']} sent ({result.pace}), {loss['answered']} answered, {lost} lost; "
        f"outputs {s['outputs']}, of them verified {s['verified']}",
        f"bit flips injected into the weights: {counts['flips_injected']} "
        f"({counts['injections']} injections of {counts['flips_per_injection']})",
    ]
    if protect:
        lines += [
            f"injections detected: {counts['injections_caught']}/{counts['injections']}; "
            f"inferences with a detection: {counts['inferences_with_detection']} "
            f"({counts['failed_checks']} checks failed, {counts['tensors_restored']} tensors "
            "restored from golden copies)",
            f"outputs repaired (fault detected, weights restored, re-run, then published): "
            f"{counts['outputs_repaired']}",
        ]
    else:
        lines.append("detections: none possible (protect=false checks nothing)")
    lines += [
        f"outputs equal to the clean run: {cmp['all_equal']}/{cmp['all_compared']} (verified "
        f"ones: {cmp['verified_equal']}/{cmp['verified_compared']}; first output published per "
        f"input: {cmp['first_output_equal']}/{cmp['all_compared']})",
        f"correct labels: clean run {acc[0][0]}/{acc[0][1]}, with faults {acc[1][0]}/{acc[1][1]}",
    ]
    lat = s["latency_ms"]
    if lat:
        lines.append(f"end-to-end latency ms (input published -> output received): p50 "
                     f"{lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max "
                     f"{lat['max']:.2f}")
    for cause in loss["causes"]:
        lines.append(cause)
    for line in lines:
        print(f"[{label}] {line}", flush=True)


def _session(label: str, args: argparse.Namespace, frames: list, labels: list[int],
             protect: bool) -> dict[str, object]:
    """One node: a clean lockstep run, then a run with injected faults; their comparison."""
    proc = NodeProcess(CONFIG_DIR / f"{args.model}.yaml", namespace=f"demo_{os.getpid()}",
                       overrides={"model": args.model, "protect": protect,
                                  "publish_policy": args.publish_policy if protect
                                  else "immediate",
                                  "fault_injection.enabled": True,
                                  "fault_injection.count": args.flips,
                                  "fault_injection.seed": args.seed}).start()
    print(f"[{label}] starting save_node ({args.model}, protect={str(protect).lower()}) ...",
          flush=True)
    try:
        with ReplayClient(node_fqn=proc.fqn) as client:
            client.wait_for_node(proc, timeout=120.0)
            clean = client.replay(frames, pace="lockstep")
            faulty = client.replay(frames, pace=args.pace, rate=args.rate,
                                   inject_every=args.every)
            cmp = compare(clean, faulty)
            counts = fault_counts(faulty, args.every, args.flips)
            acc_clean, acc_faulty = _accuracy(clean, frames, labels), _accuracy(faulty, frames,
                                                                               labels)
            _print_session(label, faulty, counts, cmp, (acc_clean, acc_faulty), protect)
        code = proc.stop()
        if code != 0:
            print(f"[{label}] save_node exited with {code}; its last output:\n"
                  f"{proc.output()[-2000:]}", file=sys.stderr)
    except BaseException:
        proc.stop()
        raise
    print(f"[{label}] node exit code {code}", flush=True)
    return {"clean": clean.summary(), "faulty": faulty.summary(), "comparison": cmp,
            "fault_counts": counts,
            "accuracy_clean": acc_clean, "accuracy_faulty": acc_faulty, "node_exit_code": code}


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit status 1 if a verified output differs from the fault-free one."""
    from save_ros import models

    spec = models.get_spec(args.model)  # an unknown name lists the bundled ones
    if spec.task is not models.Task.CLASSIFICATION:
        digits = [m for m in models.available()
                  if models.get_spec(m).task is models.Task.CLASSIFICATION]
        print(f"save-ros demo: error: {args.model} is a {spec.task.value} model; the demo replays "
              f"the digits bag, use one of: {', '.join(digits)}", file=sys.stderr)
        return 2
    frames = [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)]
    labels = models.dataset(args.model, "test")[1][: len(frames)].tolist()
    print(f"bag {BAGS_DIR / DIGITS_BAG}: {len(frames)} mono8 64x64 frames; {args.flips} bit "
          f"flips before every {args.every}th frame, seeds from {args.seed}", flush=True)
    report = {"model": args.model, "flips": args.flips, "every": args.every,
              "seed": args.seed, "publish_policy": args.publish_policy, "pace": args.pace,
              "save": _session("SAVE", args, frames, labels, True)}
    if not args.no_baseline:
        report["unprotected"] = _session("unprotected", args, frames, labels, False)
    save = report["save"]["comparison"]
    ok = save["verified_equal"] == save["verified_compared"]
    print(f"SAVE promise (every verified output equals the fault-free one): "
          f"{'kept' if ok else 'BROKEN'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0 if ok else 1


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.demo")


if __name__ == "__main__":
    sys.exit(main())
