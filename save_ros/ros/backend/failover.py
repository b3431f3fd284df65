"""The node's backend for `isolation=process`: the model runs in a worker process with a standby.

A `save_ros.failover.FailoverModel` holds an active worker and a warm standby (the SAVE-protected
model with `protect=true`, the bare model otherwise). When the active worker dies (segfault, lost
device context, exit) or hangs past `isolation_hang_timeout_s`, the inputs it held are re-run on
the standby, so the node keeps serving and loses no input it accepted; the events reach the node
through `on_event` (diagnostics). The SAVE checks run on a thread inside the worker, so
`run_pending_checks` has nothing to do here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import torch

from save_ros.core.box import InputBox
from save_ros.core.protect import ProtectConfig
from save_ros.failover import (
    CrashKind,
    FailoverConfig,
    FailoverError,
    FailoverEvent,
    FailoverModel,
    ModelSource,
    RemoteOperationError,
    WeightSharing,
    remote,
)
from save_ros.ros.backend.base import WARN, Backend, BackendError, Verdict, resolve, to_verdict
from save_ros.ros.backend.prepare import protect_config, starting_analysis
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.params import NodeConfig

STARTUP_TIMEOUT_S = 120.0  # first worker: import, (analysis from the parent), warm-up


class FailoverBackend(Backend):
    """Serves the model from crash-isolated worker processes; verdicts as `ProtectedBackend`."""

    def __init__(self, cfg: NodeConfig, loaded: LoadedModel, logger,
                 on_event: Callable[[FailoverEvent], None] | None = None) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.logger = logger
        self._on_event = on_event
        self.cache_hit = False
        scripted = isinstance(loaded.module, torch.jit.ScriptModule)
        box = loaded.input_box()
        example = loaded.example_input()
        protect_config = self._protect_config(box, example) if cfg.protect else None
        if scripted:  # a ScriptModule does not pickle: each worker loads the file itself
            source = ModelSource.named(cfg.model, str(Path(cfg.model_file).expanduser()))
            sharing = WeightSharing.NONE
        elif str(cfg.device).startswith("cuda") and torch.cuda.is_available():
            # one copy on the device, mapped by every worker through CUDA IPC handles: a
            # standby starts from device memory (device-to-device copy), not from the host
            source, sharing = loaded.module, WeightSharing.CUDA_IPC
        else:  # one copy in shared memory, mapped by every worker
            source, sharing = loaded.module, WeightSharing.SHARED_MEMORY
        config = FailoverConfig(backend="protect" if cfg.protect else "plain",
                                weight_sharing=sharing, device=cfg.device,
                                hang_timeout_s=cfg.hang_timeout_s,
                                startup_timeout_s=STARTUP_TIMEOUT_S)
        # the longest one inference may take through failovers before the node gives up on it
        self._infer_timeout = (config.hang_timeout_s + config.startup_timeout_s) * \
            config.max_attempts
        try:
            self.pm = FailoverModel(source, example, box, config,
                                    on_event=self._event, protect_config=protect_config)
        except (FailoverError, ValueError, TypeError, RuntimeError) as exc:
            raise BackendError(f"cannot start the inference worker for {loaded.name}: "
                               f"{exc}") from exc
        info = self.pm.worker_info()
        logger.info(f"inference worker {self.pm.active_pid} ready in "
                    f"{info.get('ready_s', float('nan')):.2f} s; standby starting")

    def _protect_config(self, box: InputBox, example: torch.Tensor) -> ProtectConfig:
        """ProtectConfig as the node's parameters ask; its Analysis done once here, or cached:
        the workers (and every standby) get it as a dict."""
        config = protect_config(self.cfg, self.loaded.calibration)
        config.analysis, self.cache_hit = starting_analysis(
            self.cfg, self.loaded, self.loaded.module, example, box, config, self.logger)
        return config

    def _event(self, event: FailoverEvent) -> None:
        """Log a worker event and pass it on (called on the failover reporter thread)."""
        if event.is_error:
            self.logger.error(f"inference worker {event.kind.value} (pid {event.pid}): "
                              f"{event.detail}")
        elif event.kind.value == "failover":
            self.logger.warning(f"failover: {event.detail} in "
                                f"{(event.duration_s or 0.0) * 1e3:.1f} ms")
        else:
            self.logger.info(f"inference worker {event.kind.value} (pid {event.pid}): "
                             f"{event.detail}")
        if self._on_event is not None:
            self._on_event(event)

    # -- Backend --------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the start-up log."""
        what = "SAVE-protected" if self.cfg.protect else "UNPROTECTED bare model"
        cache = " (analysis from cache)" if self.cache_hit else ""
        return (f"{what} on {self.cfg.device} in worker process {self.pm.active_pid} with a "
                f"warm standby (isolation=process){cache}")

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, Future]:
        """Infer in the active worker; blocks through a failover until the output is back."""
        try:
            result = self.pm.infer(x, wait=False, timeout=self._infer_timeout)
        except TimeoutError as exc:
            raise BackendError(f"no worker answered within {self._infer_timeout:.0f} s") from exc
        verdict: Future = Future()
        attempts, pid = result.attempts, result.worker_pid
        phases = " ".join(f"{k}={v * 1e3:.2f}" for k, v in result.phases().items())

        def done(f: Future) -> None:
            try:
                status = f.result()
                # plain backend: nothing verifies it
                value = Verdict.unprotected() if status is None else to_verdict(status)
            except Exception as exc:  # the verifier (or its worker) failed: unverified
                value = Verdict.failed(f"verification failed: {exc!r}")
            value.values["worker_pid"] = pid
            if attempts > 1:  # this input was in the worker that crashed: say so, stamped
                value.values["attempts"] = attempts
                value.values["failover"] = True
                value.level = max(value.level, WARN)
                value.message += (f"; re-run on worker {pid} after the worker holding it failed "
                                  f"(attempt {attempts})")
                value.values["failover_phases_ms"] = phases
                value.values["answered_monotonic"] = result.timeline.get("answered", 0.0)
            resolve(verdict, value)

        if result.verdict is None:
            resolve(verdict, Verdict.failed("the worker sent no verdict"))
        else:
            result.verdict.add_done_callback(done)
        return result.output.detach().cpu(), verdict

    def recover(self) -> str:
        """Restore the active worker's weights from their golden copies."""
        try:
            restored = self.pm.recover()
        except (FailoverError, RemoteOperationError) as exc:
            raise BackendError(f"recover failed: {exc}") from exc
        names = sorted(restored)
        return (f"restored {sum(restored.values())} elements in {len(names)} tensors: "
                f"{', '.join(names[:8])}" if names else "all weights match their golden copies")

    def reanalyze(self, calibration: torch.Tensor | None = None) -> str:
        """Redo Selection and Allocation in the active worker (a standby keeps its analysis)."""
        if calibration is not None:
            raise BackendError("reanalyze with new calibration inputs needs isolation=none")
        try:
            return self.pm.reanalyze().replace("\n", "; ")
        except (FailoverError, RemoteOperationError, ValueError) as exc:
            raise BackendError(f"reanalyze failed: {exc}") from exc

    def inject(self, count: int, target: str, seed: int, bits: tuple[int, ...]) -> str:
        """Flip bits in the active worker's normal-memory weights (a standby stays clean)."""
        pattern = "*" if target == "weights" else target
        try:
            records = self.pm.call(remote.inject_weight_flips, count, pattern, seed, bits)
        except Exception as exc:  # raised in the worker and sent back (ValueError, KeyError...)
            try:
                names = self.pm.call(remote.normal_tensor_names)
            except FailoverError:
                names = []
            raise BackendError(f"cannot inject into {target!r}: {exc}; normal-memory tensors "
                               f"are {names}") from exc
        return json.dumps({"flips": len(records),
                           "tensors": sorted({r["tensor"] for r in records}),
                           "first": records[:8], "worker_pid": self.pm.active_pid})

    def inject_crash(self, kind: str) -> str:
        """Arm a crash of the active worker on its next inference."""
        try:
            pid = self.pm.inject_crash(CrashKind(kind), when="next", target="active")
        except (FailoverError, ValueError) as exc:
            raise BackendError(f"cannot inject a {kind} crash: {exc}") from exc
        return (f"worker {pid} armed: it fails ({kind}) on its next inference; the standby "
                f"{self.pm.standby_pids} takes over")

    def close(self) -> None:
        """Stop every worker."""
        self.pm.close()
