"""What the node runs inputs through: the bare model, SAVE in the node's process, or SAVE in
crash-isolated worker processes. `make_backend` picks one from the parameters.

`base` (the `Backend` interface and the node's `Verdict`), `bare`, `protected`, `failover`,
and `prepare` (the ProtectConfig and the cached Analysis the SAVE backends start from).
"""

from __future__ import annotations

from collections.abc import Callable

from save_ros.ros.backend.bare import BareBackend
from save_ros.ros.backend.base import Backend, BackendError, Verdict, hardware_id, resolve
from save_ros.ros.backend.failover import FailoverBackend
from save_ros.ros.backend.protected import ProtectedBackend
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.params import Isolation, NodeConfig

__all__ = ["Backend", "BackendError", "BareBackend", "FailoverBackend", "ProtectedBackend",
           "Verdict", "hardware_id", "make_backend", "resolve"]


def make_backend(cfg: NodeConfig, loaded: LoadedModel, logger,
                 on_event: Callable[[object], None] | None = None) -> Backend:
    """The backend the parameters ask for; `on_event` gets worker events (isolation=process)."""
    if cfg.protect and loaded.why_unprotectable:
        raise BackendError(f"{loaded.name} cannot be protected: {loaded.why_unprotectable}; "
                           "or serve it unprotected with protect:=false")
    if cfg.isolation is Isolation.PROCESS:
        return FailoverBackend(cfg, loaded, logger, on_event)
    if not cfg.protect:
        return BareBackend(loaded, cfg.device)
    return ProtectedBackend(cfg, loaded, logger)
