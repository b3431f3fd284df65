"""The `save-ros` command: one verb per user job, each in the module that owns the job.

The jobs: try it (`demo`), serve a model (`serve`: save_node itself), `analyze` a model, measure
its `robustness` (campaigns, PVF, faults during training, hostile inputs), `bench` it, and the
node's user tools (`replay` a bag through it, `watch` it). A maintainer's verbs (model and bag
building) sit under `maintainer`. The old flat names (`campaign`, `pvf`, `train`, ...) still
work as hidden aliases that print one deprecation line on stderr.

A verb's module provides `add_arguments(parser)` and `run(args) -> int`; `serve` hands its
arguments untouched to save_node's `main`. Modules are imported only when their verb runs, so
`save-ros --help` stays fast and works without torch or ROS. A `UserError` (or a path, YAML or
bag the user gave that cannot be read) is one line on stderr and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from save_ros.errors import UserError


@dataclass(frozen=True)
class Verb:
    """A verb: the module that owns its job and its one-line help."""

    module: str
    help: str


@dataclass(frozen=True)
class Group:
    """A verb that takes one more word (`save-ros bench cpu`): its help and its sub-verbs."""

    help: str
    verbs: dict[str, Verb] = field(default_factory=dict)
    word: str = "VERB"  # the sub-verb's name in the usage line


ROBUSTNESS = Group("measure robustness: fault campaigns, PVF, faults during training, hostile "
                   "inputs", {
    "campaign": Verb("save_ros.eval.campaign_cli", "seeded fault-injection campaign on a model"),
    "demo": Verb("save_ros.eval.demo", "a one-minute campaign on the default model"),
    "training": Verb("save_ros.eval.training_cli", "faults during a fine-tune, with rollback"),
    "pvf": Verb("save_ros.eval.pvf", "per-layer parameter vulnerability factor (PVF)"),
    "hostile": Verb("save_ros.tools.hostile_cli",
                    "hostile and fuzzed inputs through real save_node processes: the promises "
                    "the node keeps"),
    "hostile-bag": Verb("save_ros.tools.hostile",
                        "write the hostile-input bag (replay it into a node with save-ros replay)"),
}, word="MEASUREMENT")
BENCH = Group("benchmark: speed and overhead, in-process and through save_node", {
    "cpu": Verb("save_ros.eval.bench.cpu",
                "SAVE vs unprotected vs baselines at batch 1, side by side (bundled models)"),
    "scale": Verb("save_ros.eval.bench.scale",
                  "robot-scale models through protect(): analysis, speed, coverage (GPU or CPU)"),
    "failover": Verb("save_ros.eval.bench.failover",
                     "worker crash to next result: warm vs cold standby (no ROS)"),
    "policies": Verb("save_ros.eval.bench.policies",
                     "the zoo's policies unprotected: parameters, forward time per dtype"),
    "fx-sites": Verb("save_ros.eval.bench.fx_sites",
                     "what fx-node activation fault sites cost a forward pass, as ratios"),
    "ros": Verb("save_ros.tools.bench_node",
                "save_node over DDS: latency, capacity, rate ladder, bare vs SAVE"),
    "ros-stream": Verb("save_ros.tools.bench_stream",
                       "a camera stream through save_node: latency, freshness, faults"),
    "ros-failover": Verb("save_ros.tools.bench_failover",
                         "worker crash to next output through save_node (isolation=process)"),
    "ros-services": Verb("save_ros.tools.bench_services",
                         "save_node's services under load: request bursts, re-analyses under a "
                         "stream, RSS"),
}, word="MEASUREMENT")
MAINTAINER = Group("the maintainer's verbs: build the models the package ships", {
    "train": Verb("save_ros.models.train", "re-train the bundled reference models (fixed seeds)"),
    "train-zoo": Verb("save_ros.models.zoo.train_cli",
                      "train the zoo's robot-scale models on procedural scenes (GPU, minutes)"),
    "zoo-report": Verb("save_ros.eval.zoo_report",
                       "decision diversity of the zoo's models: plain init vs input-dependent"),
    "bags": Verb("save_ros.tools.bundled",
                 "re-write the committed bags under bags/ (digits, CartPole): the same messages"),
})
# the user's jobs, in the order a newcomer meets them
COMMANDS: dict[str, Verb | Group] = {
    "demo": Verb("save_ros.tools.demo",
                 "try it: a protected node on the bundled bag, faults on, results compared"),
    "serve": Verb("save_ros.ros.node",
                  "serve a model: run save_node (same arguments: --ros-args -p NAME:=VALUE ...)"),
    "analyze": Verb("save_ros.eval.analyze_cli",
                    "SAVE Selection: value ranges and bit attribution of a model"),
    "robustness": ROBUSTNESS,
    "bench": BENCH,
    "replay": Verb("save_ros.tools.replay",
                   "replay a rosbag through the node and record its outputs"),
    "watch": Verb("save_ros.tools.watch",
                  "show a running save_node's output, fault status and diagnostics live"),
}
# old verb -> the words that replaced it; still accepted, with one deprecation line on stderr
ALIASES: dict[str, tuple[str, ...]] = {
    "campaign": ("robustness", "campaign"),
    "campaign-demo": ("robustness", "demo"),
    "train-campaign": ("robustness", "training"),
    "pvf": ("robustness", "pvf"),
    "train": ("maintainer", "train"),
    "train-zoo": ("maintainer", "train-zoo"),
}


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
    """The top-level parser: one sub-parser per user job (arguments added lazily); the
    maintainer's verbs are listed apart, after the user's."""
    maintainer = [f"  maintainer {name:<12}  {verb.help}"
                  for name, verb in MAINTAINER.verbs.items()]
    parser = SubcommandParser(
        prog="save-ros",
        description="SAVE fault tolerance for neural-network inference: try it, serve it, "
                    "measure it.",
        epilog="maintainer's verbs:\n" + "\n".join(maintainer),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, entry in COMMANDS.items():
        words = f" ({', '.join(entry.verbs)})" if isinstance(entry, Group) else ""
        sub.add_parser(name, help=entry.help + words, add_help=False)
    sub.add_parser("maintainer", add_help=False)  # no help=: listed in the epilog instead
    return parser


def group_parser(name: str, group: Group) -> argparse.ArgumentParser:
    """The parser of `save-ros NAME` (a group): one sub-parser per sub-verb."""
    parser = SubcommandParser(prog=f"save-ros {name}", description=group.help)
    sub = parser.add_subparsers(dest="verb", metavar=group.word)
    for verb, entry in group.verbs.items():
        sub.add_parser(verb, help=entry.help, add_help=False)
    return parser


def _missing_word(parser: argparse.ArgumentParser, word: str) -> int:
    """argparse's convention for a missing subcommand: the help, on stderr, exit 2."""
    parser.print_help(sys.stderr)
    print(f"{parser.prog}: error: name a {word} (see above)", file=sys.stderr)
    return 2


def _resolve(argv: list[str]) -> tuple[str, Verb, list[str]] | int:
    """(verb's full name, the verb, its arguments), or the exit code of a help / usage error."""
    parser = build_parser()
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if not argv:
        return _missing_word(parser, "COMMAND")
    if argv[0] in ALIASES:
        new = " ".join(ALIASES[argv[0]])
        print(f"save-ros {argv[0]}: deprecated name; use 'save-ros {new}' (same arguments)",
              file=sys.stderr)
        argv = [*ALIASES[argv[0]], *argv[1:]]
    entry = (COMMANDS | {"maintainer": MAINTAINER}).get(argv[0])
    if entry is None:
        parser.parse_args(argv)  # the usage error: invalid choice, exit 2
    if isinstance(entry, Verb):
        return argv[0], entry, argv[1:]
    sub = group_parser(argv[0], entry)
    if len(argv) < 2:
        return _missing_word(sub, entry.word)
    if argv[1] in ("-h", "--help"):
        sub.print_help()
        return 0
    if argv[1] not in entry.verbs:
        sub.parse_args(argv[1:])  # the usage error: invalid choice, exit 2
    return f"{argv[0]} {argv[1]}", entry.verbs[argv[1]], argv[2:]


def _serve(rest: list[str], as_process: bool) -> int:
    """`save-ros serve ARGS`: save_node's own entry point on ARGS (its --help, exit codes)."""
    from save_ros.ros import node
    from save_ros.ros.usage import SERVE_PROG  # the node's help names `save-ros serve` then

    argv = [SERVE_PROG, *rest]
    if not as_process:  # called in-process (tests): the caller's signal handlers come back
        return node.main(argv)
    sys.argv = argv  # as save_node run as a process would see them
    return node.main()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `save-ros`."""
    resolved = _resolve(list(sys.argv[1:] if argv is None else argv))
    if isinstance(resolved, int):
        return resolved
    name, verb, rest = resolved
    if name == "serve":
        return _serve(rest, as_process=argv is None)
    try:
        module = importlib.import_module(verb.module)
    except ModuleNotFoundError as exc:
        if exc.name and verb.module.startswith(exc.name):
            print(f"save-ros {name}: not available in this build ({verb.module} missing)",
                  file=sys.stderr)
            return 2
        raise
    sub = SubcommandParser(prog=f"save-ros {name}", description=verb.help)
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
