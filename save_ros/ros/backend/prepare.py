"""What a SAVE backend starts from: the `ProtectConfig` the parameters ask for, and its Analysis.

`protect_config` maps the node's parameters onto `ProtectConfig` (the in-process and the
crash-isolated backend differ only in who runs the checks). `starting_analysis` loads the
Analysis from `analysis_cache` when its key (`select.key_for`: weights, graph, input box,
Selection settings, and the fingerprint of the Selection code, `analysis.code_fingerprint`, so
another checkout or version never loads it) matches, else runs Selection once and writes the
file; the log names the file loaded, or why it was not used. The key does not
cover the calibration inputs, so with calibration from `calibration.file` / `calibration.bag`
the cache is `<stem>.calib-<digest><suffix>` beside `analysis_cache`: other calibration data
never loads it. A cache that cannot be read or written is logged and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from save_ros.core.analysis import Analysis, AnalysisFormatError
from save_ros.core.box import InputBox
from save_ros.core.protect import ProtectConfig
from save_ros.core.select import analyze, key_for
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.params import NodeConfig


def protect_config(cfg: NodeConfig, calibration: torch.Tensor | None,
                   verifier: str = "thread") -> ProtectConfig:
    """The ProtectConfig of the node's parameters (the only place they meet)."""
    return ProtectConfig(verifier=verifier, reliable_budget_bytes=cfg.reliable_budget_bytes,
                         weight_check_interval=cfg.checksum_period, calibration=calibration)


def cache_path(cfg: NodeConfig, loaded: LoadedModel) -> Path | None:
    """`analysis_cache`, or its per-calibration sibling (see the module docstring); None: off."""
    if not cfg.analysis_cache:
        return None
    path = Path(cfg.analysis_cache).expanduser()
    calib = loaded.calibration
    if calib is None or not (cfg.calibration_file or cfg.calibration_bag):
        return path
    digest = hashlib.sha256()
    for t in (calib if isinstance(calib, tuple | list) else (calib,)):  # a batch per input
        t = t.detach().float() if t.is_floating_point() else t.detach()  # numpy has no bf16
        digest.update(t.cpu().contiguous().numpy().tobytes())
    return path.with_name(f"{path.stem}.calib-{digest.hexdigest()[:12]}{path.suffix}")


def load_cached(path: Path, key: str, logger) -> Analysis | None:
    """The saved Analysis at `path` if its key is `key`, else None (and why, in the log)."""
    if not path.is_file():
        return None
    try:
        analysis = Analysis.load(path, expect_key=key)
    except AnalysisFormatError as exc:
        logger.warning(f"analysis cache not used: {exc}")
        return None
    logger.info(f"analysis loaded from {path} (key {key[:12]}, written by Selection code "
                f"{analysis.code})")
    return analysis


def save_cached(path: Path | None, analysis: Analysis | None, logger) -> None:
    """Write the Analysis to the cache (a read-only cache path must not stop the node)."""
    if path is None or analysis is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        analysis.save(path)
        logger.info(f"analysis saved to {path}")
    except OSError as exc:
        logger.warning(f"cannot write analysis cache {path}: {exc}")


def starting_analysis(cfg: NodeConfig, loaded: LoadedModel, module: nn.Module,
                      example: torch.Tensor, box: InputBox, config: ProtectConfig,
                      logger) -> tuple[Analysis, bool]:
    """(the Analysis to protect with, whether it came from the cache)."""
    path = cache_path(cfg, loaded)
    if path is not None:
        cached = load_cached(path, key_for(module, example, box, config.select_config()), logger)
        if cached is not None:
            return cached, True
    analysis = analyze(module, example, box, config.calibration, config=config.select_config())
    save_cached(path, analysis, logger)
    return analysis, False
