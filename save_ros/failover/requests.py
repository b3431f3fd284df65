"""What flows through the input queue: requests, their results, and how a request fails."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from save_ros.core.inputs import InputBatch

# what a request carries: one input, or several (positional tuple, or keyword dict)
Payload = np.ndarray | tuple[np.ndarray, ...] | dict[str, np.ndarray]


@dataclass
class FailoverResult:
    """One answer: the output, the runtime's status (None for the plain backend), provenance."""

    output: torch.Tensor
    status: Any  # FaultStatus from the protected runtime, or None
    verdict: Future | None  # wait=False with protect: a Future of the FaultStatus
    request_id: int
    worker_pid: int  # the worker that produced the output
    attempts: int  # 1 unless a worker died while holding the request
    latency_s: float  # submit to output
    # monotonic times (one clock for every process): submitted, sent (last attempt),
    # worker_received, worker_done (output on the worker's CPU), answered (here); after a
    # failover also detected (the failure was noticed) and, for an injected crash, crashed
    timeline: dict[str, float] = field(default_factory=dict)

    def phases(self) -> dict[str, float]:
        """Where a failed-over request's time went (seconds): detection (crash -> noticed;
        only for an injected crash, whose time is known), activation (-> the standby read it),
        inference (-> output on its CPU), return (-> answered); empty without a failover."""
        t = self.timeline
        if "detected" not in t:
            return {}
        parts = {"detection": t["detected"] - t["crashed"]} if "crashed" in t else {}
        return parts | {"activation": t["worker_received"] - t["detected"],
                        "inference": t["worker_done"] - t["worker_received"],
                        "return": t["answered"] - t["worker_done"]}


@dataclass
class Request:
    """One queued inference (or remote call) and the futures its caller holds."""

    id: int
    array: Payload | None  # the input(s); None for a call
    wait: bool
    submitted_at: float
    timeout_s: float  # the watchdog's limit for this request
    call: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
    future: Future = field(default_factory=Future)
    verdict: Future | None = None
    output_done: bool = False
    attempts: int = 0
    sent_at: float = 0.0
    # the last failure of a worker that held it: (crash time if injected, else None; noticed)
    failure: tuple[float | None, float] | None = None


def _one(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"input must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return np.array(x, copy=True, order="C")


def to_array(x: Any) -> Payload:
    """A private contiguous copy, so the caller may reuse its buffer at once: of one input
    (a tensor or array), or of several (a tuple / list / dict / InputBatch of them), in that
    structure (a tuple or a dict of arrays)."""
    if isinstance(x, InputBatch):
        x = x.tensors
    if isinstance(x, Mapping):
        return {str(k): _one(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        if not x:
            raise TypeError("input is an empty sequence; give one tensor per model input")
        return tuple(_one(v) for v in x)
    return _one(x)


def as_tensors(payload: Payload, device: torch.device | str | None = None) -> Any:
    """A request's payload as tensors (on `device`), in its structure: what the model takes."""
    def one(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t.to(device) if device is not None else t

    if isinstance(payload, dict):
        return {k: one(v) for k, v in payload.items()}
    if isinstance(payload, tuple):
        return tuple(one(v) for v in payload)
    return one(payload)


def run_plain(model: Any, x: Any) -> Any:
    """`model` on one input or several (a tuple: positional, a dict: keyword arguments)."""
    if isinstance(x, dict):
        return model(**x)
    return model(*x) if isinstance(x, tuple) else model(x)


def fail(request: Request, exc: BaseException) -> None:
    """Fail the request's output future, or its verdict when the output was delivered."""
    target = request.verdict if request.output_done else request.future
    if target is not None and not target.done():
        target.set_exception(exc)
    if request.verdict is not None and not request.verdict.done():
        request.verdict.set_exception(exc)
