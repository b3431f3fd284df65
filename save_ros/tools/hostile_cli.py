"""`save-ros robustness hostile`: hostile inputs through real save_node processes, the table.

One session per input type and isolation (`hostile_suite.run_session`): the hostile bag
(`hostile.write_hostile_bag`) in lockstep and at its own timing, then `--fuzz` seeded mutations;
every promise of `hostile_suite` checked. Exit 1 if any promise was broken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from save_ros.argtypes import nonnegative_int, positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.tools.fuzz import INPUT_TYPES
from save_ros.tools.hostile import write_hostile_bag
from save_ros.tools.hostile_suite import Session, case_table, run_session, table


def _rmw() -> str:
    from rclpy.utilities import get_rmw_implementation_identifier

    return get_rmw_implementation_identifier()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `save-ros robustness hostile`."""
    parser.add_argument("--types", nargs="+", choices=INPUT_TYPES, default=list(INPUT_TYPES))
    parser.add_argument("--isolation", nargs="+", choices=("none", "process"),
                        default=["none", "process"])
    parser.add_argument("--fuzz", type=nonnegative_int, default=1000,
                        help="fuzzed messages per session")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuzz")
    parser.add_argument("--fuzz-passes", type=positive_int, default=1,
                        help="fuzz passes per session (seeds --seed, --seed + 1, ...)")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile bag")
    parser.add_argument("--no-burst", action="store_true",
                        help="skip the realtime pass of the hostile bag")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    """Run the suite; print the table; exit 1 if any promise was broken."""
    sessions: list[Session] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="save_ros_hostile_") as tmp:
        bag = Path(tmp) / "hostile_bag"
        counts = write_hostile_bag(bag, tuple(args.types))
        print(f"hostile bag {bag}: {counts}", flush=True)
        for isolation in args.isolation:
            for input_type in args.types:
                sessions.append(run_session(
                    input_type, isolation, None if args.no_hostile else bag, args.fuzz,
                    args.seed, burst=not args.no_burst, cache_dir=Path(tmp), log=sys.stdout,
                    fuzz_passes=args.fuzz_passes))
    print(table(sessions))
    print()
    print(case_table(sessions))
    problems = [v for s in sessions for v in s.violations()]
    for p in problems:
        print(f"VIOLATION {p}")
    if args.json:
        record = run_record("save_ros.hostile_suite", started)
        record["machine"]["rmw"] = _rmw()
        write_json(args.json, record | {
            "seconds": round(time.time() - started, 1),
            "sessions": [asdict(s) for s in sessions], "violations": problems})
    return 1 if problems else 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.hostile_cli")


if __name__ == "__main__":
    sys.exit(main())
