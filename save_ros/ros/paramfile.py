"""Checks of `--params-file` arguments before rcl reads them (ROS-free).

rcl's own errors are late, multi-line or silent: a directory is "does not exist", a YAML error
takes two lines, and a file whose sections match no node (`other_node:`, or `save_node:` under a
namespace, which rcl reads as `/save_node`) or an empty file leave the node on its defaults
without a word. `check_args` returns one-line errors (exit 2) and warnings for these.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from save_ros.errors import UserError


class ParamsFileError(UserError, ValueError):
    """A params file cannot be used; one line that says what to fix."""


def _ros_arg(args: list[str], flag: str, key: str) -> str:
    """The value of `-r key:=value` / `--remap key:=value` in `args` ('' if absent)."""
    for a, b in zip(args, args[1:], strict=False):
        if a in flag.split("|") and b.startswith(f"{key}:="):
            return b.split(":=", 1)[1]
    return ""


def node_fqn(args: list[str], name: str = "save_node") -> str:
    """The fully qualified node name that `--ros-args -r __ns:=... -r __node:=...` give."""
    ns = _ros_arg(args, "-r|--remap", "__ns").strip("/")
    node = _ros_arg(args, "-r|--remap", "__node") or _ros_arg(args, "-r|--remap", "__name") \
        or name
    return f"/{ns}/{node}" if ns else f"/{node}"


def section_matches(key: str, fqn: str) -> bool:
    """Whether a params-file section key applies to the node `fqn`, as rcl matches it.

    `/**` and `/**/name` match anywhere; `*` matches one token; a key without a leading slash
    is taken as absolute (rcl prepends '/').
    """
    key = key if key.startswith("/") else "/" + key
    if key in ("/**", fqn):
        return True
    parts = []
    for token in key.strip("/").split("/"):
        if token == "**":
            parts.append("(?:/[^/]+)*")
        else:
            parts.append("/" + "[^/]*".join(re.escape(t) for t in token.split("*")))
    return re.fullmatch("".join(parts), fqn) is not None


def check_file(path: str, fqn: str) -> list[str]:
    """Warnings for one params file; raises ParamsFileError where rcl would fail or mislead."""
    p = Path(path)
    if p.is_dir():
        raise ParamsFileError(f"params file {path} is a directory; give the YAML file in it")
    if not p.is_file():
        raise ParamsFileError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsFileError(f"params file {path} is not valid YAML{where}: {problem}") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsFileError(f"params file {path} cannot be read: {exc}") from None
    if data is None:
        return [f"params file {path} is empty: the node runs on its defaults"]
    if not isinstance(data, dict):
        raise ParamsFileError(f"params file {path} is not a mapping of '<node>: "
                              "ros__parameters:' sections; start from config/digits_cnn.yaml")
    sections = [str(k) for k, v in data.items() if isinstance(v, dict)
                and "ros__parameters" in v]
    if not sections:
        raise ParamsFileError(f"params file {path} has no '<node>: ros__parameters:' section; "
                              "use '/**:' and 'ros__parameters:' as config/digits_cnn.yaml does")
    warnings = []
    matched = [k for k in sections if section_matches(k, fqn)]
    for key in sections:
        if key not in matched:
            warnings.append(f"params file {path}: section {key!r} matches no node here (this "
                            f"node is {fqn}); its parameters are ignored - use '/**:' to apply "
                            "them under any name and namespace")
    return warnings


def check_args(args: list[str]) -> list[str]:
    """Check every `--params-file` of `args`; the warnings, or ParamsFileError."""
    fqn = node_fqn(args)
    warnings = []
    for flag, path in zip(args, args[1:], strict=False):
        if flag == "--params-file":
            warnings += check_file(path, fqn)
    return warnings
