"""The SAVE backend of the node: `protect()` with `verifier="external"`, verdicts -> diagnostics.

The node's verifier callback group drives `run_pending_checks`, so the checks run on an executor
thread of their own. An `analysis_cache` path skips Selection at start-up when the saved
Analysis's key (a hash of the weights, architecture, input box and settings) matches.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from pathlib import Path

import torch

from save_ros.core.analysis import Analysis, AnalysisFormatError
from save_ros.core.protect import ProtectConfig, ProtectedModel, UnsupportedModelError, protect
from save_ros.core.select import key_for
from save_ros.core.verify import FaultStatus
from save_ros.faults.faultmodels import NoBitsError, RandomFlips
from save_ros.faults.inject import inject_weights
from save_ros.faults.targets import EmptyTargetError, Target
from save_ros.ros.backend import ERROR, OK, WARN, Backend, BackendError, Verdict, flips_report
from save_ros.ros.backend import resolve as resolve_future
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.params import NodeConfig

MAX_LISTED = 4  # detections / repaired tensors listed by name in one status


class ProtectedBackend(Backend):
    """Serves a `ProtectedModel`; every inference gets a verdict from the SAVE checks."""

    def __init__(self, cfg: NodeConfig, loaded: LoadedModel, logger) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.logger = logger
        self.device = torch.device(cfg.device)
        module = loaded.module.to(self.device)
        example = loaded.example_input().to(self.device)
        box = loaded.input_box().to(self.device)
        calibration = (loaded.calibration.to(self.device)
                       if loaded.calibration is not None else None)
        config = ProtectConfig(
            verifier="external",
            reliable_budget_bytes=(cfg.reliable_memory_bytes
                                   if cfg.reliable_memory_bytes >= 0 else None),
            weight_check_interval=cfg.checksum_period,
            calibration=calibration,
        )
        self.cache_hit = False
        key = None
        if cfg.analysis_cache:
            key = key_for(module, example, box, config.select_config())
            config.analysis = self._load_cache(self._cache_path(), key)
            self.cache_hit = config.analysis is not None
        try:
            self.pm: ProtectedModel = protect(module, example, box, config)
        except (UnsupportedModelError, ValueError, TypeError, RuntimeError) as exc:
            raise BackendError(f"cannot protect {loaded.name}: {exc}") from exc
        if cfg.analysis_cache and not self.cache_hit:
            self._save_cache(self._cache_path())
        logger.info(self.pm.summary())

    # -- analysis cache -------------------------------------------------------------------
    def _cache_path(self) -> Path:
        """`analysis_cache`, or beside it `<stem>.calib-<digest><suffix>` for calibration from
        calibration.file/bag: the analysis key covers weights, graph and box but not the
        calibration inputs, so other calibration data must not load this analysis."""
        path = Path(self.cfg.analysis_cache).expanduser()
        calib = self.loaded.calibration
        if calib is None or not (self.cfg.calibration_file or self.cfg.calibration_bag):
            return path
        digest = hashlib.sha256(calib.detach().float().cpu().contiguous().numpy().tobytes())
        return path.with_name(f"{path.stem}.calib-{digest.hexdigest()[:12]}{path.suffix}")

    def _load_cache(self, path: Path, key: str) -> Analysis | None:
        if not path.is_file():
            return None
        try:
            analysis = Analysis.load(path, expect_key=key)
        except AnalysisFormatError as exc:
            self.logger.warning(f"analysis cache not used: {exc}")
            return None
        self.logger.info(f"analysis loaded from {path} (key {key[:12]})")
        return analysis

    def _save_cache(self, path: Path) -> None:
        if self.pm.analysis is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.pm.analysis.save(path)
            self.logger.info(f"analysis saved to {path}")
        except OSError as exc:  # a read-only cache path must not stop the node
            self.logger.warning(f"cannot write analysis cache {path}: {exc}")

    # -- Backend --------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the start-up log."""
        cache = " (analysis from cache)" if self.cache_hit else ""
        return f"SAVE-protected on {self.device}{cache}"

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, Future]:
        """Infer at once; the verdict future resolves when the verifier thread has checked it."""
        result = self.pm.infer(x.to(self.device), wait=False)
        verdict: Future = Future()

        def done(f: Future) -> None:
            try:
                resolve_future(verdict, to_verdict(f.result()))
            except Exception as exc:  # the verifier raised: report the result unverified
                resolve_future(verdict, error=exc)

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
        if self.cfg.analysis_cache:
            self._save_cache(self._cache_path())
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


def to_verdict(st: FaultStatus) -> Verdict:
    """The node's report of one FaultStatus: level, message and key/values."""
    detected = len(st.detections)
    if st.verified:
        level = WARN if detected else OK
        message = (f"fault detected and repaired ({detected} failed checks)" if detected
                   else "verified")
    elif st.error:
        level, message = ERROR, f"verifier failed: {st.error}"
    elif detected:
        level, message = ERROR, f"fault detected, NOT repaired ({detected} failed checks)"
    elif st.input_out_of_range:
        level, message = ERROR, "input outside the declared range: result not verified"
    else:
        level, message = ERROR, "not verified"
    values: dict[str, object] = {
        "verified": st.verified,
        "inference_id": st.inference_id,
        "detected": detected,
        "repaired": len(st.repaired),
        "checks_run": st.checks_run,
        "weights_checked": st.weights_checked,
        "input_out_of_range": st.input_out_of_range,
        "forward_ms": st.forward_s * 1e3,
        "queue_ms": st.queue_s * 1e3,
        "verify_ms": st.verify_s * 1e3,
        "repair_ms": st.repair_s * 1e3,
    }
    if detected:
        first = st.detections[0]
        values["detected_layer"] = first.layer
        values["detected_tensor"] = first.tensor
        values["detected_check"] = first.check
        values["detail"] = first.detail
        values["detections"] = [f"{d.layer}/{d.tensor}/{d.check}"
                                for d in st.detections[:MAX_LISTED]]
    if st.repaired:
        values["repaired_tensors"] = [f"{n}({k})" for n, k in
                                      list(st.repaired.items())[:MAX_LISTED]]
        values["rerun_from"] = st.rerun_from or ""
    if st.detection_latency_s is not None:
        values["detection_latency_ms"] = st.detection_latency_s * 1e3
    if st.error:
        values["error"] = st.error
    return Verdict(verified=st.verified, level=level, message=message, detected=detected,
                   repaired=len(st.repaired), unrepaired=int(detected > 0 and not st.verified),
                   publishable=st.verified, output=(st.output.detach().cpu()
                                                    if st.output is not None else None),
                   values=values)
