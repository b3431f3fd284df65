"""`ProtectConfig`: every setting of `protect()`, each with a working default.

The CPU runtime (`core.runtime`) and the CUDA backend (`core.cuda.runtime`) honour every field
or refuse it with a reason (`CudaConfigError`); `select_config()` gives the Selection settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from save_ros.core.allocate import DEFAULT_BUDGET_FRACTION
from save_ros.core.analysis import Analysis
from save_ros.core.select.config import SelectConfig


@dataclass
class ProtectConfig:
    """How to protect a model. Every field has a working default."""

    reliable_budget_bytes: int | None = None  # None: reliable_budget_fraction of weight bytes
    reliable_budget_fraction: float = DEFAULT_BUDGET_FRACTION
    verifier: str = "thread"  # "thread" or "external" (run_pending_checks drives it)
    checks: str = "auto"  # or force one kind on every layer (ablations): none, range, dmr,
    # abft, checksum (`core.verify.kinds.FORCE_KINDS`; each kind is an object there)
    weight_check_interval: int = 1  # checksum normal-memory weights every N-th inference; 0: never
    weight_check_budget_s: float | None = None  # else: rotate chunks, this much time each
    weight_chunk: int = 256  # elements per checksum chunk
    # inputs for the observed ranges: a batch in the structure of protect()'s example input
    # (a tensor, or a tuple / list / dict of tensors, one per input; core.inputs)
    calibration: Any = None
    margin: float = 0.1  # calibration ranges widened by this share of their width
    confirm_range_alarms: bool = True  # re-compute before calling a range excursion a fault
    robust_allowance: bool = True  # ABFT tolerance also admits flips of robust mantissa bits
    min_vulnerable_share: float = 0.0  # range check, not redundancy, at or below this share
    # at most this share of a forward pass's time on redundancy (DMR / ABFT), spent where it
    # covers the most vulnerable bits; the rest falls back to range checks. None: cover all
    redundancy_budget: float | None = None
    # compare runs of DMR layers once, at the end of the run (checkplan._chain): same verified
    # outputs, fewer compares, but flips the run masks are no longer reported; off by default
    chain_dmr: bool = False
    # memory checksums of activations (bit sum when written vs after the last read) instead of
    # DMR / ABFT / range: exact for every memory flip, no re-computation (`core.verify.kinds`);
    # both backends run them (on CUDA inside the captured graph). "auto": on the CPU backend,
    # off in the CUDA graph backend, where a separate sum kernel per tensor costs more than the
    # DMR it replaces (measured: docs/results/robot_scale.md) until sums are fused into the
    # producing kernels
    memory_checksums: bool | str = "auto"
    max_reruns: int = 2  # Edit attempts before a result is reported unverified
    analysis: Analysis | None = None  # a precomputed (e.g. loaded) analysis of this model
    # what a robust flip may not change: "classification" (top-1), "regression" (every output
    # within `tolerance`), "control" (the same for actions: a vector or an (N, T, D) chunk),
    # "auto" (see core.select); `selection` gives every Selection setting
    task: str = "auto"
    tolerance: float | None = None
    selection: SelectConfig | None = None
    # CUDA inputs: "graph" = the CUDA backend (core/cuda: forward and checks in one CUDA
    # graph), "generic" = this eager runtime on CUDA tensors (for comparison)
    cuda_backend: str = "graph"

    def select_config(self) -> SelectConfig:
        """The Selection settings these fields ask for (`selection` wins when given)."""
        if self.selection is not None:
            return self.selection
        return SelectConfig(margin=self.margin, task=self.task, tolerance=self.tolerance)
