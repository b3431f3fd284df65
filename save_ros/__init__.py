"""save_ros: SAVE fault tolerance (Selection, Allocation, Verification, Edit) for PyTorch models.

`protect`, `ProtectConfig` and `ProtectedModel` are imported on first use (module `__getattr__`),
so `import save_ros` stays light (no torch import) for the CLI and the ROS launch tooling.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "protect": "save_ros.core.protect",
    "ProtectConfig": "save_ros.core.protect",
    "ProtectedModel": "save_ros.core.protect",
    "InferenceResult": "save_ros.core.protect",
    "FaultStatus": "save_ros.core.verify",
    "InputError": "save_ros.core.box",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the public runtime names lazily."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'save_ros' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
