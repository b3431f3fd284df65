"""Operations that run inside the active worker, on its model: `FailoverModel.call(fn, ...)`.

Each function takes the worker's target first (the `ProtectedModel` with the protect backend,
the plain `nn.Module` otherwise) and returns something that pickles. They live here, free of
ROS imports, so a worker never imports rclpy to run one.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class RemoteOperationError(RuntimeError):
    """The operation needs the protect backend (or another target than the worker has)."""


def _protected(target: Any, what: str) -> Any:
    if isinstance(target, nn.Module):
        raise RemoteOperationError(f"{what} needs backend='protect'; this worker runs the plain "
                                   "model")
    return target


def recover(target: Any) -> dict[str, int]:
    """Restore every weight that differs from its golden copy: tensor -> elements restored."""
    return dict(_protected(target, "recover").recover().elements)


def reanalyze(target: Any) -> str:
    """Redo Selection, Allocation and the check plan in this worker; its summary."""
    protected = _protected(target, "reanalyze")
    protected.reanalyze()
    return protected.summary()


def summary(target: Any) -> str:
    """The protected model's summary (or the plain model's class name)."""
    return target.summary() if not isinstance(target, nn.Module) else type(target).__name__


def normal_tensor_names(target: Any) -> list[str]:
    """Names of the tensors a fault injector may touch (not in the reliable pool)."""
    if isinstance(target, nn.Module):
        return [name for name, _ in target.named_parameters()]
    return sorted(target.normal_tensors())


def inject_weight_flips(target: Any, count: int, pattern: str = "*", seed: int = 0,
                        bits: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Flip `count` random bits of normal-memory weights matching `pattern`; the flip records."""
    from save_ros.faults.faultmodels import RandomFlips
    from save_ros.faults.inject import inject_weights
    from save_ros.faults.targets import Target

    tensors = (dict(target.named_parameters()) if isinstance(target, nn.Module)
               else target.normal_tensors())
    log = inject_weights(None, RandomFlips(count, bits or None), Target(tensors=(pattern,)), seed,
                         tensors=tensors)
    return [{"tensor": r.tensor, "index": r.flat_index, "bit": r.bit} for r in log]
