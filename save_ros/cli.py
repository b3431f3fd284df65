"""The `save-ros` command: one subcommand per job, each in the module that owns the job.

A subcommand module provides `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their subcommand runs, so `save-ros --help` stays fast and works without torch or ROS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("save_ros.ros.demo", "main job: protected node, bundled bag, faults on"),
    "campaign-demo": ("save_ros.eval.demo", "a short campaign on the default model"),
    "campaign": ("save_ros.eval.campaign_cli", "seeded fault-injection campaign on a model"),
    "train-campaign": ("save_ros.eval.training_cli", "faults during a fine-tune, with rollback"),
    "pvf": ("save_ros.eval.pvf", "per-layer parameter vulnerability factor (PVF)"),
    "analyze": ("save_ros.eval.analyze_cli", "SAVE Selection: value ranges and bit attribution"),
    "bench": ("save_ros.eval.bench", "protected vs unprotected latency, side by side"),
    "bench-gpu": ("save_ros.eval.bench_gpu", "CUDA path: latency, repair, coverage on a GPU"),
    "replay": ("save_ros.ros.replay", "replay a rosbag through the node and record its outputs"),
    "train": ("save_ros.models.train", "re-train the bundled reference models (fixed seeds)"),
    "failover-bench": ("save_ros.failover.bench", "worker crash to next result: warm vs cold"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command (arguments added lazily)."""
    parser = argparse.ArgumentParser(
        prog="save-ros",
        description="SAVE fault tolerance for neural-network inference: tools and evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `save-ros`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"save-ros {name}: not available in this build ({module_name} missing)",
                  file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"save-ros {name}", description=help_)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"save-ros {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
