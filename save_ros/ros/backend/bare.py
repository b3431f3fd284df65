"""The bare model without SAVE: the node's latency baseline (`protect: false`)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import torch

from save_ros.faults import RandomFlips, Target, inject_weights
from save_ros.ros.backend.base import Backend, BackendError, Verdict, flips_report, resolve
from save_ros.ros.model_source import LoadedModel, to_device


class BareBackend(Backend):
    """The model without SAVE: the latency baseline; every result is reported unverified."""

    def __init__(self, loaded: LoadedModel, device: str) -> None:
        self.device = torch.device(device)
        self.module = loaded.module.to(self.device)
        self._lock = threading.Lock()
        self._logs: list = []  # undo logs of injected faults, newest last

    def describe(self) -> str:
        """One line for the start-up log."""
        return f"UNPROTECTED bare model on {self.device}"

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, Future]:
        """Run the model; the verdict is ready at once and says 'not verified'."""
        with self._lock, torch.no_grad():
            xs = to_device(x, self.device)  # a tuple for a policy of several inputs
            output = (self.module(*xs) if isinstance(xs, tuple) else self.module(xs)).cpu()
        future: Future = Future()
        resolve(future, Verdict.unprotected())
        return output, future

    def inject(self, count: int, target: str, seed: int, bits: tuple[int, ...]) -> str:
        """Flip bits in any weight (nothing is reliable here): the unprotected baseline."""
        pattern = ("*",) if target == "weights" else (target,)
        with self._lock:
            try:
                log = inject_weights(self.module, RandomFlips(count, bits or None),
                                     Target(tensors=pattern), seed)
            except ValueError as exc:
                raise BackendError(f"cannot inject into {target!r}: {exc}") from exc
            self._logs.append(log)
        return flips_report(log)

    def recover(self) -> str:
        """Undo every injected flip (the bare model has no golden copies, only undo logs)."""
        with self._lock:
            flips = sum(len(log) for log in self._logs)
            while self._logs:
                self._logs.pop().undo(self.module)
        return f"undid {flips} injected flips"
