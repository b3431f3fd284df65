"""The SAVE backend of the node: `protect()` with `verifier="external"`, verdicts -> diagnostics.

The node's verifier callback group drives `run_pending_checks`, so the checks run on an executor
thread of their own. An `analysis_cache` path skips Selection at start-up when the saved
Analysis's key matches (`prepare.starting_analysis`).
"""

from __future__ import annotations

from concurrent.futures import Future

import torch

from save_ros.core.protect import ProtectedModel, UnsupportedModelError, protect
from save_ros.faults import EmptyTargetError, NoBitsError, RandomFlips, Target, inject_weights
from save_ros.ros.backend.base import Backend, BackendError, flips_report, resolve, to_verdict
from save_ros.ros.backend.prepare import cache_path, protect_config, save_cached, starting_analysis
from save_ros.ros.model_source import LoadedModel, to_device
from save_ros.ros.params import NodeConfig


class ProtectedBackend(Backend):
    """Serves a `ProtectedModel`; every inference gets a verdict from the SAVE checks."""

    def __init__(self, cfg: NodeConfig, loaded: LoadedModel, logger) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.logger = logger
        self.device = torch.device(cfg.device)
        module = loaded.module.to(self.device)
        example = to_device(loaded.example_input(), self.device)  # a tuple: several inputs
        box = to_device(loaded.input_box(), self.device)
        calibration = (to_device(loaded.calibration, self.device)
                       if loaded.calibration is not None else None)
        config = protect_config(cfg, calibration, verifier="external")
        self._cache = cache_path(cfg, loaded)
        try:
            config.analysis, self.cache_hit = starting_analysis(cfg, loaded, module, example,
                                                                box, config, logger)
            self.pm: ProtectedModel = protect(module, example, box, config)
        except (UnsupportedModelError, ValueError, TypeError, RuntimeError) as exc:
            raise BackendError(f"cannot protect {loaded.name}: {exc}") from exc
        logger.info(self.pm.summary())

    # -- Backend --------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the start-up log."""
        cache = " (analysis from cache)" if self.cache_hit else ""
        return f"SAVE-protected on {self.device}{cache}"

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, Future]:
        """Infer at once; the verdict future resolves when the verifier thread has checked it."""
        result = self.pm.infer(to_device(x, self.device), wait=False)
        verdict: Future = Future()

        def done(f: Future) -> None:
            try:
                resolve(verdict, to_verdict(f.result()))
            except Exception as exc:  # the verifier raised: report the result unverified
                resolve(verdict, error=exc)

        result.verdict.add_done_callback(done)
        return result.output.detach().cpu(), verdict

    def run_pending_checks(self, timeout: float) -> None:
        """Run the queued checks on the calling (verifier) thread."""
        self.pm.run_pending_checks(timeout)

    def recover(self) -> str:
        """Restore every weight that differs from its golden copy."""
        repair = self.pm.recover()
        names = repair.tensors
        return (f"restored {sum(repair.elements.values())} elements in {len(names)} tensors: "
                f"{', '.join(names[:8])}" if names else "all weights match their golden copies")

    def reanalyze(self, calibration: torch.Tensor | None = None) -> str:
        """Redo Selection, Allocation and the check plan (with new calibration inputs)."""
        try:
            self.pm.reanalyze(calibration.to(self.device) if calibration is not None else None)
        except (UnsupportedModelError, ValueError) as exc:
            raise BackendError(f"reanalyze failed: {exc}") from exc
        save_cached(self._cache, self.pm.analysis, self.logger)
        return self.pm.summary().replace("\n", "; ")

    def inject(self, count: int, target: str, seed: int, bits: tuple[int, ...]) -> str:
        """Flip `count` random bits in normal-memory weights (all, or the tensor `target`)."""
        pattern = ("*",) if target == "weights" else (target,)
        try:
            log = inject_weights(None, RandomFlips(count, bits or None), Target(tensors=pattern),
                                 seed, tensors=self.pm.normal_tensors())
        except (EmptyTargetError, NoBitsError, ValueError, KeyError) as exc:
            raise BackendError(f"cannot inject into {target!r}: {exc}; normal-memory tensors "
                               f"are {sorted(self.pm.normal_tensors())}") from exc
        return flips_report(log)

    def close(self) -> None:
        """Stop the verifier."""
        self.pm.close()

