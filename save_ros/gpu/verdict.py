"""The CPU side of GPU verification: compare the copied-back rows with ranges and checksums.

The GPU writes one (min, max) row per activation chunk and one (s1, s2) row per weight chunk;
`RowVerifier` holds the per-row bounds and golden sums as numpy arrays, so a whole model is
checked with four vectorised comparisons, and a failing row names its tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from save_ros.core.cuda.chunks import ChunkPlan
from save_ros.core.verify import Detection, FaultStatus


@dataclass
class GpuFaultStatus:
    """What verification found for one inference, and what was done about it."""

    verified: bool
    detections: list[Detection] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # weights restored from golden copies
    rerun_from: str | None = None  # "input": the whole graph is re-run (graphs have no seams)
    reruns: int = 0
    checks_run: int = 0  # rows compared (activation chunks + weight chunks)
    checksum_run: bool = False
    checksum_share: float = 0.0  # share of weight chunks checksummed in this inference
    latency_s: float = 0.0  # submit -> verdict (repair included)
    detect_s: float = 0.0  # GPU done -> verdict of the first run (CPU compare)
    repair_s: float = 0.0  # detection -> verified result (restore + re-run + re-verify)
    detail: str = ""
    failed_output: object | None = None  # copy of the output that failed (keep_failed_output)

    def to_fault_status(self, inference_id: int = 0) -> FaultStatus:
        """The same verdict as the CPU runtime's `FaultStatus` (for the node and reports)."""
        return FaultStatus(
            inference_id=inference_id, verified=self.verified, detections=list(self.detections),
            repaired={n: -1 for n in self.repaired},  # -1: the whole tensor was restored
            rerun_from=self.rerun_from, checks_run=self.checks_run,
            weights_checked=self.checksum_run, verify_s=self.detect_s, repair_s=self.repair_s,
            detection_latency_s=self.detect_s if self.detections else None,
            notes=[self.detail] if self.detail else [])


@dataclass
class RowVerdict:
    """Raw result of one comparison pass."""

    range_rows: np.ndarray  # failing activation chunk rows
    checksum_rows: np.ndarray  # failing weight chunk rows (empty when no checksum ran)
    rows: int

    @property
    def clean(self) -> bool:
        """True when no row failed."""
        return not self.range_rows.size and not self.checksum_rows.size


class RowVerifier:
    """Per-row bounds for activations and golden sums for weights, compared on the CPU."""

    def __init__(
        self,
        act_plan: ChunkPlan,
        low: dict[str, float],
        high: dict[str, float],
        weight_plan: ChunkPlan,
        golden_rows: np.ndarray,
    ) -> None:
        own = act_plan.owner()
        lo = np.asarray([low[n] for n in act_plan.names], dtype=np.float64)
        hi = np.asarray([high[n] for n in act_plan.names], dtype=np.float64)
        self.act_plan, self.weight_plan = act_plan, weight_plan
        self.low, self.high = lo[own], hi[own]
        self.golden = np.array(golden_rows, dtype=np.int64, copy=True)

    def compare(self, stats: np.ndarray, sums: np.ndarray | None,
                rows: tuple[int, int] | np.ndarray | None = None) -> RowVerdict:
        """Failing rows of `stats` ([n, 2] min/max) and `sums` ([m, 2] s1/s2, or None).

        `rows` limits the checksum comparison to the rows a rotating slice wrote: a (start,
        stop) range, or an index array.
        """
        # written as negations so that NaN (from the torch backend) fails too
        bad = ~(stats[:, 0] >= self.low) | ~(stats[:, 1] <= self.high)
        n = stats.shape[0]
        if sums is None:
            cs = np.empty(0, dtype=np.int64)
        else:
            if isinstance(rows, np.ndarray):  # an interleaved slice (fused rotation)
                cs = rows[(sums[rows] != self.golden[rows]).any(axis=1)]
                n += rows.size
            else:
                r0, r1 = rows if rows is not None else (0, sums.shape[0])
                cs = r0 + np.flatnonzero((sums[r0:r1] != self.golden[r0:r1]).any(axis=1))
                n += r1 - r0
        return RowVerdict(np.flatnonzero(bad), cs, n)

    def detections(self, verdict: RowVerdict, stats: np.ndarray) -> list[Detection]:
        """Readable detections, one per failing tensor (worst chunk reported)."""
        out: list[Detection] = []
        own = self.act_plan.owner()
        for ti in np.unique(own[verdict.range_rows]):
            rows = verdict.range_rows[own[verdict.range_rows] == ti]
            name = self.act_plan.names[ti]
            mn, mx = float(stats[rows, 0].min()), float(stats[rows, 1].max())
            lo, hi = float(self.low[rows[0]]), float(self.high[rows[0]])
            out.append(Detection(name.partition("#")[0], name, "range",
                                 f"[{mn:.4g}, {mx:.4g}] outside [{lo:.4g}, {hi:.4g}]"))
        if verdict.checksum_rows.size:
            wown = self.weight_plan.owner()
            for ti in np.unique(wown[verdict.checksum_rows]):
                name = self.weight_plan.names[ti]
                n = int((wown[verdict.checksum_rows] == ti).sum())
                out.append(Detection(name.rpartition(".")[0], name, "checksum",
                                     f"{n} chunk(s) of {self.weight_plan.chunk} differ"))
        return out

    def corrupted_weights(self, verdict: RowVerdict) -> list[str]:
        """Names of weights whose checksum rows differ from the golden ones."""
        if not verdict.checksum_rows.size:
            return []
        return self.weight_plan.names_of(verdict.checksum_rows)
