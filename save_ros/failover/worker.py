"""The worker process: loads (or maps) the model, warms it up, then answers requests on a pipe.

Protocol, parent -> worker: ("infer", id, array, wait), ("call", id, function, args) (run an
operation of `failover.remote` on the model), ("arm", CrashKind) (fail on the next request,
before answering it), ("crash", CrashKind) (fail now), ("stop",). Worker -> parent: ("result",
id, value) for a call,
("ready", info), ("start_failed", text), ("output", id, array, status, verdict_follows,
(received, computed): the worker's monotonic times of reading the request and of having the
output on the CPU),
("verdict", id, status), ("error", id, exception) for a bad input (the worker lives on),
("fatal", id, text) just before the worker exits because its device context is lost,
("crashing", id, monotonic time) just before an injected crash.
Arrays travel by value (numpy pickles; several inputs as a tuple or dict of arrays, one per
input); only the weights are shared.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import nn

from save_ros.failover import crash
from save_ros.failover.config import FailoverConfig, WorkerModel
from save_ros.failover.events import RemoteError
from save_ros.failover.packed import PackedWeights
from save_ros.failover.requests import Payload, as_tensors, run_plain
from save_ros.failover.weights import ModelSource, shared_bytes, storage_pointers

FATAL_EXIT_CODE = 3  # the worker quit on purpose: its CUDA context is unusable
# Messages of CUDA errors that poison the context: every later call fails, so only a new
# process recovers.
_STICKY_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                       "illegal instruction", "misaligned address", "CUDA error")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its model; pickled into the new process."""

    source: ModelSource
    example_input: Payload  # one batch (of each input), for the warm-up and the analysis
    config: FailoverConfig
    input_range: Any = None  # passed through to protect()
    protect_config: Any = None  # a ProtectConfig without its analysis, or None for defaults
    analysis: dict[str, Any] | None = None  # Analysis.to_dict() done once by the parent


class _Runner:
    """Runs one inference with the chosen backend: (output, status, verdict future or None)."""

    def __init__(self, model: nn.Module, spec: WorkerSpec, device: str) -> None:
        self.device = device
        self.model = model
        self.protected = None
        if spec.config.backend is WorkerModel.PROTECT:
            from save_ros.core.analysis import Analysis
            from save_ros.core.protect import ProtectConfig, protect

            example = as_tensors(spec.example_input, device)
            config = spec.protect_config or ProtectConfig()
            if spec.analysis is not None:
                analysis = Analysis.from_dict(spec.analysis)
            elif device != "cpu":
                # Selection runs on a CPU copy, as the parent does (its gradients are CPU-only).
                from save_ros.core.select import analyze

                analysis = analyze(spec.source.load(), as_tensors(spec.example_input),
                                   spec.input_range, config.calibration, config.margin)
            else:
                analysis = None  # protect() analyses
            # The verifier runs on the worker's own thread: nobody outside drains its checks.
            config = replace(config, verifier="thread", analysis=analysis)
            self.protected = protect(model, example, spec.input_range, config)

    @property
    def target(self) -> Any:
        """What remote operations act on: the ProtectedModel, else the plain model."""
        return self.protected if self.protected is not None else self.model

    def infer(self, x: Any, wait: bool) -> tuple[torch.Tensor, Any, Future | None]:
        """One forward pass; with protect and wait=False the verdict follows as a future."""
        if self.protected is None:
            with torch.inference_mode():
                return run_plain(self.model, x), None, None
        result = self.protected.infer(x, wait=wait)
        # With wait=True the status is already in; a verdict follows only with wait=False.
        return result.output, result.status, None if wait else result.verdict


def is_fatal(exc: BaseException) -> bool:
    """True for errors after which this process cannot compute again (a lost CUDA context)."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _STICKY_CUDA_ERRORS)


def _watch_parent() -> None:
    """Exit when the parent dies, even if the main thread hangs: workers never become orphans."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="failover-parent-watch", daemon=True).start()


def _picklable(value: Any) -> Any:
    """The value itself if it pickles, else its repr (a status must never kill the pipe)."""
    try:
        pickle.dumps(value)
        return value
    except Exception:
        return repr(value)


def _as_array(output: Any) -> np.ndarray:
    """The model output as a CPU numpy array for the pipe."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; the failover runtime "
                        "carries one tensor per result")
    return output.detach().cpu().numpy()


def worker_main(conn: Connection, spec: WorkerSpec, shared_model: PackedWeights | None,
                spawned_at: float, death: Connection | None = None) -> None:
    """Entry point of a worker process (target of multiprocessing.Process).

    `death` is the write end of a pipe that the fault handler writes to on SIGSEGV, SIGABRT,
    SIGBUS, SIGFPE or SIGILL (the signal's name and the Python traceback): the parent sees the
    crash at once instead of when the kernel has torn the process down.
    """
    entered = time.monotonic()
    if death is not None:
        faulthandler.enable(file=death.fileno(), all_threads=True)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                # the parent closed the pipe (it is shutting down, e.g. a signal during its
                # start-up): leave quietly, no traceback on the node's terminal (issue 19)
                os._exit(0)

    config = spec.config
    device = config.device
    try:
        torch.set_num_threads(config.num_threads)
        model = spec.source.load() if shared_model is None else shared_model.module()
        model = model.to(device).eval()
        received = storage_pointers(model) if shared_model is not None else {}
        loaded = time.monotonic()
        runner = _Runner(model, spec, device)
        prepared = time.monotonic()
        warm_output, _, warm_verdict = runner.infer(as_tensors(spec.example_input, device), True)
        if warm_verdict is not None:
            warm_verdict.result()
        warmed = time.monotonic()
    except Exception:
        send(("start_failed", traceback.format_exc()))
        return
    info = {
        "pid": os.getpid(),
        "device": device,
        "spawn_to_main_s": entered - spawned_at,  # interpreter start, import torch, unpickle
        "load_s": loaded - entered,
        "prepare_s": prepared - loaded,  # protect(): analysis and placement
        "warmup_s": warmed - prepared,
        "ready_s": warmed - spawned_at,
        # Bytes still read from the parent's copy: protect() moves weights into storage of
        # its own, and a CPU copy moved to the GPU is not shared either.
        "shared_bytes": shared_bytes(model, received),
        "warm_output": _as_array(warm_output),
    }
    send(("ready", info))
    armed: crash.CrashKind | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        op = message[0]
        if op == "stop":
            return
        if op == "arm":
            armed = message[1]
            continue
        if op == "call":  # ("call", id, function, args): run an operation on the target
            _, rid, function, args = message
            try:
                send(("result", rid, function(runner.target, *args)))
            except Exception as exc:
                send(("error", rid, _picklable_exc(exc)))
            continue
        rid = message[1] if op == "infer" else None
        try:
            if op == "crash":
                send(("crashing", None, time.monotonic()))  # lets the parent time detection
                crash.perform(message[1], device)
                continue
            _, rid, array, wait = message
            received = time.monotonic()
            if armed is not None:
                kind, armed = armed, None
                send(("crashing", rid, time.monotonic()))
                crash.perform(kind, device)
            output, status, verdict = runner.infer(as_tensors(array, device), wait)
            array = _as_array(output)
            send(("output", rid, array, _picklable(status), verdict is not None,
                  (received, time.monotonic())))
            if verdict is not None:
                verdict.add_done_callback(
                    lambda f, rid=rid: send(("verdict", rid, _picklable(f.result()))
                                            if f.exception() is None
                                            else ("error", rid, _picklable_exc(f.exception()))))
        except Exception as exc:
            if is_fatal(exc):
                send(("fatal", rid, f"{type(exc).__name__}: {exc}"))
                conn.close()
                os._exit(FATAL_EXIT_CODE)
            send(("error", rid, _picklable_exc(exc)))


def _picklable_exc(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RemoteError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RemoteError(f"{type(exc).__name__}: {exc}")
