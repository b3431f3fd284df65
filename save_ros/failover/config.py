"""Settings of the failover runtime: how workers start, share weights and are watched."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from save_ros.errors import UserError


class WorkerModel(enum.Enum):
    """What runs inside a worker: the plain model, or the SAVE-protected model."""

    PLAIN = "plain"  # model(x); the status is None
    PROTECT = "protect"  # save_ros.core.protect.protect(...).infer(x)


class WeightSharing(enum.Enum):
    """How a worker gets its weights."""

    SHARED_MEMORY = "shared_memory"  # one CPU copy in shared memory, mapped by every worker
    CUDA_IPC = "cuda_ipc"  # one GPU copy owned by the parent, mapped through CUDA IPC handles
    NONE = "none"  # each worker loads its own copy from disk (a cold restart)


class StartMethod(enum.Enum):
    """The multiprocessing start method; fork is not offered (unsafe with threads and CUDA)."""

    SPAWN = "spawn"  # a fresh interpreter per worker: imports torch every time (seconds)
    FORKSERVER = "forkserver"  # fork from a server that imported torch once (tens of ms)


class ConfigError(UserError, ValueError):
    """A failover setting is out of range or unknown."""


@dataclass(frozen=True)
class FailoverConfig:
    """Settings of a `FailoverModel`; every time is in seconds."""

    backend: WorkerModel = WorkerModel.PLAIN
    weight_sharing: WeightSharing = WeightSharing.SHARED_MEMORY
    device: str = "cpu"
    share_analysis: bool = True  # protect: analyse once in the parent, not in every worker
    standby: bool = True  # keep a warm standby worker; False = cold restart after a crash
    hang_timeout_s: float = 2.0  # the watchdog: a request unanswered this long is a hang
    startup_timeout_s: float = 120.0  # a worker that is not ready this long is given up
    queue_size: int = 64  # bounded input queue; it survives failover
    max_attempts: int = 3  # a request that took down this many workers is dropped (poison input)
    num_threads: int = 1  # torch threads inside a worker
    start_method: StartMethod = StartMethod.FORKSERVER
    restart_backoff_s: float = 0.5  # pause after a worker failed to start, doubled up to 8 s
    # pause between a takeover and starting the next standby, so that the new process's start
    # (fork, CUDA context) does not compete with the takeover's first inference
    respawn_delay_s: float = 0.1

    def __post_init__(self) -> None:
        for name, enum_type in (
            ("backend", WorkerModel),
            ("weight_sharing", WeightSharing),
            ("start_method", StartMethod),
        ):
            value = getattr(self, name)
            if not isinstance(value, enum_type):
                try:
                    object.__setattr__(self, name, enum_type(value))
                except ValueError:
                    choices = ", ".join(m.value for m in enum_type)
                    raise ConfigError(f"{name}={value!r}: choose one of {choices}") from None
        for name in ("hang_timeout_s", "startup_timeout_s", "restart_backoff_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not self.respawn_delay_s >= 0:
            raise ConfigError(f"respawn_delay_s must be >= 0 seconds, got {self.respawn_delay_s!r}")
        for name in ("queue_size", "max_attempts", "num_threads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.weight_sharing is WeightSharing.CUDA_IPC and not self.device.startswith("cuda"):
            raise ConfigError("weight_sharing='cuda_ipc' needs device='cuda'; "
                              "use 'shared_memory' on the CPU")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FailoverConfig:
        """Build from a plain mapping (YAML, ROS parameters); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown failover setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
