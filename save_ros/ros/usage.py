"""`save_node --help`: usage, every parameter with its default and description, configs, examples.

Built from `params.SPECS` (the same descriptors `ros2 param describe` shows), so the help cannot
drift from what the node declares. Only arguments before `--ros-args` are the node's own; a
`--help` among the ROS arguments is rcl's business.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

HELP_FLAGS = ("-h", "--help")
SERVE_PROG = "save-ros serve"  # argv[0] when the save-ros command started the node

EXAMPLES = """\
examples:
  save_node --ros-args --params-file {config}/digits_cnn.yaml
  save_node --ros-args -p model:=digits_cnn -p input_topic:=/camera/image_raw -p device:=cuda
  save-ros serve --ros-args --params-file {config}/digits_cnn.yaml     (the same node)
  ros2 run save_ros save_node --ros-args --params-file my_robot.yaml     (on a ROS 2 distro)
  save-ros watch save_node      (another shell: the node's output, fault status, diagnostics)
"""


def wants_help(argv: list[str]) -> bool:
    """Whether the node's own arguments (before `--ros-args`) ask for help."""
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    return any(a in HELP_FLAGS for a in own)


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as YAML and -p NAME:=VALUE write it
    return repr(value) if isinstance(value, str) else str(value)


def program(argv: list[str]) -> str:
    """The name the node was started under: `save-ros serve` (whose argv[0] says so) or
    save_node."""
    return SERVE_PROG if argv and argv[0] == SERVE_PROG else "save_node"


def help_text(width: int = 100, prog: str = "save_node") -> str:
    """The full `save_node --help` text (`prog` names the command in the usage line)."""
    from save_ros.ros.params import SPECS
    from save_ros.ros.policy_params import SPECS as POLICY_SPECS
    from save_ros.ros.share import CONFIG_DIR

    lines = [
        f"usage: {prog} [-h] [--ros-args [-p NAME:=VALUE]... [--params-file FILE]",
        " " * len(f"usage: {prog} ") + "[-r __ns:=/NS] [-r __node:=NAME]]",
        "",
        *textwrap.wrap(
            "Serve a SAVE-protected PyTorch model on ROS 2 topics: ~/input -> ~/output (verified "
            "or repaired results only), ~/fault_status per input, /diagnostics. Exit codes: 0 "
            "clean shutdown, 2 bad parameter or params file, 3 model cannot be loaded or "
            "protected.", width),
        "",
        *textwrap.wrap("parameters (-p NAME:=VALUE, or a params file under '/**: "
                       "ros__parameters:'; [runtime] ones can be changed with ros2 param set):",
                       width),
    ]
    indent = " " * 6
    for spec in SPECS + POLICY_SPECS:
        runtime = "" if spec.read_only else "  [runtime]"
        lines.append(f"  {spec.name} = {_default(spec.default)}{runtime}")
        choices = (" (one of: " + ", ".join(c or "''" for c in spec.choices) + ")"
                   if spec.choices else "")
        lines += textwrap.wrap(spec.description + choices, width, initial_indent=indent,
                               subsequent_indent=indent)
    configs = sorted(Path(CONFIG_DIR).glob("*.yaml")) if Path(CONFIG_DIR).is_dir() else []
    lines += ["", f"config files ({CONFIG_DIR}):"]
    lines += [f"  {p.name}" for p in configs] or ["  (none found)"]
    lines += ["", EXAMPLES.format(config=CONFIG_DIR).rstrip()]
    return "\n".join(lines) + "\n"
