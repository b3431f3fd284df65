"""The `save-ros` command: one verb per job, each in the module that owns the job.

A verb's module provides `add_arguments(parser)` and `run(args) -> int`; `bench` takes one more
word, the measurement (`save-ros bench cpu ...`). Modules are imported only when their verb runs,
so `save-ros --help` stays fast and works without torch or ROS. A `UserError` (or a path, YAML
or bag the user gave that cannot be read) is one line on stderr and exit 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn

from save_ros.errors import UserError

# verb -> (module, one-line help); `bench` has one sub-verb per measurement
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("save_ros.ros.tools.demo", "main job: protected node, bundled bag, faults on"),
    "replay": ("save_ros.ros.tools.replay",
               "replay a rosbag through the node and record its outputs"),
    "watch": ("save_ros.ros.tools.watch",
              "show a running save_node's output, fault status and diagnostics live"),
    "analyze": ("save_ros.eval.analyze_cli", "SAVE Selection: value ranges and bit attribution"),
    "campaign": ("save_ros.eval.campaign_cli", "seeded fault-injection campaign on a model"),
    "campaign-demo": ("save_ros.eval.demo", "a one-minute campaign on the default model"),
    "train-campaign": ("save_ros.eval.training_cli", "faults during a fine-tune, with rollback"),
    "pvf": ("save_ros.eval.pvf", "per-layer parameter vulnerability factor (PVF)"),
    "train": ("save_ros.models.train", "re-train the bundled reference models (fixed seeds)"),
    "train-zoo": ("save_ros.models.zoo.train_cli",
                  "train the zoo's robot-scale models on procedural scenes (GPU, minutes)"),
}
BENCH: dict[str, tuple[str, str]] = {
    "cpu": ("save_ros.eval.bench.cpu",
            "SAVE vs unprotected vs baselines at batch 1, side by side (bundled models)"),
    "scale": ("save_ros.eval.bench.scale",
              "robot-scale models through protect(): analysis, speed, coverage (GPU or CPU)"),
    "failover": ("save_ros.eval.bench.failover",
                 "worker crash to next result: warm vs cold standby (no ROS)"),
    "policies": ("save_ros.eval.bench.policies",
                 "the zoo's policies unprotected: parameters, forward time per dtype"),
    "ros": ("save_ros.ros.tools.bench_node",
            "save_node over DDS: latency, capacity, rate ladder, bare vs SAVE"),
    "ros-stream": ("save_ros.ros.tools.bench_stream",
                   "a camera stream through save_node: latency, freshness, faults"),
    "ros-failover": ("save_ros.ros.tools.bench_failover",
                     "worker crash to next output through save_node (isolation=process)"),
    "ros-services": ("save_ros.ros.tools.bench_services",
                     "save_node's services under load: request bursts, re-analyses under a "
                     "stream, RSS"),
}
BENCH_HELP = "measure: " + ", ".join(BENCH)


class SubcommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that names the command and points to --help."""

    def error(self, message: str) -> NoReturn:
        """Print `save-ros <cmd>: error: <message>` and exit 2 (the usage block drowns it)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an exception caused by the user's input, None for a bug.

    The user's: a `UserError` (the project's errors whose message says what to do), a path that
    cannot be read or written, a config file that is not YAML, a folder that is no rosbag2. Any
    other exception, a bare ValueError from deep down included, is a bug and keeps its traceback.
    """
    root = type(exc).__module__.split(".")[0]
    path = isinstance(exc, OSError) and exc.filename is not None
    if path or isinstance(exc, FileNotFoundError):
        msg = f"{exc.filename}: {exc.strerror}" if path and exc.strerror else str(exc)
    elif root == "yaml":
        msg = f"not valid YAML: {exc}"
    elif root == "rosbags":
        msg = f"cannot read the bag: {exc}"
    elif isinstance(exc, UserError):
        msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    else:
        return None
    return " ".join(str(msg).split())  # one line, even for multi-line messages


# options that name a file or folder a subcommand writes at the END of its run: checked before it
OUTPUT_OPTIONS = ("json", "out", "report", "plot")


def unwritable_output(args: argparse.Namespace) -> str | None:
    """Why an output path in `args` cannot be written (its folder is a file, read-only), or None."""
    for option in OUTPUT_OPTIONS:
        path = getattr(args, option, None)
        if not isinstance(path, Path):
            continue
        if option != "out" and path.is_dir():  # --out may name a folder (a bag, train's)
            return f"--{option} {path} is a folder; give a file name"
        folder = path.parent
        while not folder.exists():  # the folders that do not exist yet are created on write
            folder = folder.parent
        if not folder.is_dir():
            return f"--{option} {path}: {folder} is a file, not a folder"
        if not os.access(folder, os.W_OK):
            return f"--{option} {path}: {folder} is not writable"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb (arguments added lazily)."""
    parser = SubcommandParser(
        prog="save-ros",
        description="SAVE fault tolerance for neural-network inference: tools and evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in (COMMANDS | {"bench": ("", BENCH_HELP)}).items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def _bench_parser() -> argparse.ArgumentParser:
    parser = SubcommandParser(prog="save-ros bench", description=BENCH_HELP)
    sub = parser.add_subparsers(dest="measurement", metavar="MEASUREMENT")
    for name, (_, help_) in BENCH.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def _resolve(argv: list[str]) -> tuple[str, str, str, list[str]] | int:
    """(verb as typed, module, help, its arguments), or the exit code of a help / usage error."""
    parser = build_parser()
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if not argv:  # argparse's convention for a missing subcommand: the help, on stderr, exit 2
        parser.print_help(sys.stderr)
        print("save-ros: error: name a COMMAND (see above)", file=sys.stderr)
        return 2
    if argv[0] == "bench":
        bench = _bench_parser()
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            bench.print_help(sys.stdout if len(argv) > 1 else sys.stderr)
            return 0 if len(argv) > 1 else 2
        if argv[1] not in BENCH:
            bench.parse_args(argv[1:])  # the usage error: invalid choice, exit 2
        module_name, help_ = BENCH[argv[1]]
        return f"bench {argv[1]}", module_name, help_, argv[2:]
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)  # the usage error: invalid choice, exit 2
    module_name, help_ = COMMANDS[argv[0]]
    return argv[0], module_name, help_, argv[1:]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `save-ros`."""
    resolved = _resolve(list(sys.argv[1:] if argv is None else argv))
    if isinstance(resolved, int):
        return resolved
    name, module_name, help_, rest = resolved
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"save-ros {name}: not available in this build ({module_name} missing)",
                  file=sys.stderr)
            return 2
        raise
    sub = SubcommandParser(prog=f"save-ros {name}", description=help_)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    bad_output = unwritable_output(args)
    if bad_output:  # fail now, not after an hour-long campaign whose figures would be lost
        sub.error(bad_output)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"save-ros {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        msg = user_error_message(exc)
        if msg is None:
            raise
        print(f"save-ros {name}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
