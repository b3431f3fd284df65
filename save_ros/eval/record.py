"""The record every measurement writes beside its figures: the command, the date, the machine.

`run_record(kind)` gives `{"kind", "command", "date_utc", "machine"}`; a result adds its own
figures (and `wall_s`) and `write_json` writes it. Figures go to `docs/results/` with this record.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Machine, versions and thread settings (and the GPU, for a CUDA device), for the record."""
    import numpy

    info: dict[str, Any] = {
        "platform": platform.platform(), "host": platform.node(), "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "loadavg": os.getloadavg()}
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if os.environ.get("RMW_IMPLEMENTATION"):
        info["rmw"] = os.environ["RMW_IMPLEMENTATION"]
    return info


def command_line(argv: list[str] | None = None) -> list[str]:
    """The command as typed: `save-ros VERB ...`, or `python -m MODULE ...`."""
    argv = list(sys.argv if argv is None else argv)
    head = Path(argv[0]).name if argv else ""
    if head in ("save-ros", "cli.py", "__main__.py"):
        return ["save-ros", *argv[1:]]
    if head.endswith(".py"):
        return ["python", "-m", _module_of(argv[0]), *argv[1:]]
    return argv


def _module_of(path: str) -> str:
    parts = Path(path).resolve().with_suffix("").parts
    return ".".join(parts[parts.index("save_ros"):]) if "save_ros" in parts else path


def run_record(kind: str, started: float | None = None, command: list[str] | None = None,
               device: str | torch.device | None = None) -> dict[str, Any]:
    """`{"kind", "command", "date_utc", "machine"}` of a measurement started at `started`."""
    return {"kind": kind, "command": command if command is not None else command_line(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                      time.gmtime(time.time() if started is None else started)),
            "machine": machine_info(device)}


def _plain(value: Any) -> Any:
    """numpy and torch scalars and arrays as plain numbers and lists; anything else as text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_json(path: Path, result: dict) -> None:
    """Write a result record as indented JSON (creating its folder) and say where on stdout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    print(f"wrote {path}")
