"""Start `save_node` as a real process (what `ros2 run` / `ros2 launch` would do) and stop it.

Used by `save-ros replay`, the demo and the tests: the node runs in its own process and is
reached only over DDS, exactly as on a robot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from save_ros.errors import UserError
from save_ros.ros.params import ParameterError


class NodeStartError(UserError, RuntimeError):
    """The node process exited before it was ready; the message holds its output."""


def node_command() -> list[str]:
    """The `save_node` entry point of this environment (or `python -m` where not installed)."""
    script = Path(sys.executable).parent / "save_node"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "save_ros.ros.node"]


def _ros_value(value: object) -> str:
    """A parameter value as `-p name:=value` wants it (YAML flow syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'" if value == "" or value.lower() in ("true", "false") else value
    return str(value)


def config_parameters(path: str | Path) -> dict[str, object]:
    """The flattened `ros__parameters` of a node config YAML (`qos.depth`, ...)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    sections = {str(k): v for k, v in data.items()
                if isinstance(v, dict) and "ros__parameters" in v} if isinstance(data, dict) else {}
    if not sections:
        raise ParameterError(f"{path} has no '<node>: ros__parameters:' section; start from "
                             "config/digits_cnn.yaml")
    for key, section in sections.items():
        # rcl applies `save_node:`, `/ns/save_node:` and wildcards to the node; any other name
        # would be ignored by it and the node would silently serve its defaults
        if key.rstrip("/").split("/")[-1] in ("save_node", "*", "**"):
            return _flatten(section["ros__parameters"])
    raise ParameterError(f"{path}: section(s) {', '.join(sections)} do not apply to save_node; "
                         "name the section 'save_node:' or '/**:'")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class NodeProcess:
    """A `save_node` process: config file, namespace and parameter overrides."""

    config: str | Path | None = None
    namespace: str = ""
    overrides: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    launcher: list[str] | None = None  # the command before `--ros-args` (None: save_node)
    proc: subprocess.Popen | None = None
    _log: object = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def fqn(self) -> str:
        """Fully qualified node name, e.g. `/robot/save_node`."""
        ns = "/" + self.namespace.strip("/") if self.namespace.strip("/") else ""
        return f"{ns}/save_node"

    def command(self) -> list[str]:
        """The command line that starts the node."""
        cmd = [*(self.launcher or node_command()), "--ros-args"]
        if self.config:
            cmd += ["--params-file", str(self._params_file())]
        if self.namespace:
            cmd += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for name, value in self.overrides.items():
            cmd += ["-p", f"{name}:={_ros_value(value)}"]
        return cmd

    def _params_file(self) -> Path:
        """The config, re-keyed to `/**` when namespaced.

        rcl reads a bare `save_node:` key as `/save_node`, so a namespaced node would silently
        ignore it; the copy applies the same parameters to the node in any namespace.
        """
        path = Path(self.config)
        if not self.namespace.strip("/"):
            return path
        data = yaml.safe_load(path.read_text()) or {}
        section = next((v for v in data.values()
                        if isinstance(v, dict) and "ros__parameters" in v), None)
        if section is None:
            raise ValueError(f"{path} has no '<node>: ros__parameters:' section")
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="save_node_params_")
        out = Path(self._tmp.name) / path.name
        out.write_text(yaml.safe_dump({"/**": section}, sort_keys=False))
        return out

    def start(self) -> NodeProcess:
        """Start the process (returns at once; see `ReplayClient.wait_for_node`)."""
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block it
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        return self

    def output(self) -> str:
        """Everything the node printed so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def check_alive(self) -> None:
        """Raise NodeStartError (with the node's output) if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise NodeStartError(f"save_node exited with code {self.proc.returncode}:\n"
                                 f"{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send `sig`, wait for the exit, return the exit code (kill after `timeout`)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
