"""Fault-resilient inference: the model runs in a worker process with a warm standby.

`FailoverModel` has the inference API of `ProtectedModel` (`infer(x, wait=True)`), so the ROS
node can hold one instead; a crash or hang of the worker is reported through a callback and the
request is answered by the standby. No ROS imports here.
"""

from save_ros.failover.config import (
    ConfigError,
    FailoverConfig,
    StartMethod,
    WeightSharing,
    WorkerModel,
)
from save_ros.failover.crash import CrashKind, CrashUnavailableError
from save_ros.failover.events import (
    ClosedError,
    EventKind,
    FailoverError,
    FailoverEvent,
    FailoverStateError,
    QueueFullError,
    RemoteError,
    RequestDroppedError,
    WorkerStartError,
)
from save_ros.failover.remote import RemoteOperationError
from save_ros.failover.supervisor import FailoverModel, FailoverResult
from save_ros.failover.weights import ModelSource

__all__ = [
    "WorkerModel", "ClosedError", "ConfigError", "CrashKind", "CrashUnavailableError", "EventKind",
    "FailoverConfig", "FailoverError", "FailoverEvent", "FailoverModel", "FailoverResult",
    "FailoverStateError", "ModelSource", "QueueFullError", "RemoteError", "RemoteOperationError",
    "RequestDroppedError", "StartMethod", "WeightSharing", "WorkerStartError",
]
