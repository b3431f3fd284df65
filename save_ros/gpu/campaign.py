"""Weight-flip coverage campaign on the CUDA path: flip, run, check, repair, compare, repeat.

Each trial flips `k` seeded (element, bit) pairs drawn uniformly over every bit of every weight in
normal memory (k = 1 for single-bit trials, 2..`max_flips` for multi-bit ones), runs the protected
model once through `infer` (checks, then restore and re-run on a detection), compares the output
that failed the checks with the fault-free one, and checks that the repaired output is
bit-identical to it. Flips go through
`save_ros.core.bits.flip_`, on the CUDA tensors themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from save_ros.core.bits import flip_, layout_of
from save_ros.eval.metrics import Proportion
from save_ros.gpu.runtime import CudaProtectedModel


@dataclass
class CampaignResult:
    """Counts over the trials of one campaign."""

    trials: int = 0
    single: int = 0
    multi: int = 0
    output_changed: int = 0  # output not bit-identical to the fault-free one
    top1_changed: int = 0
    detected: int = 0  # any check fired on the faulty run
    detected_changed: int = 0  # ... among output-changing trials
    range_detected_changed: int = 0  # range checks alone (same inference, no checksum)
    range_detected_top1: int = 0
    sdc: int = 0  # output changed, no check fired
    repaired_exact: int = 0  # after infer(): output bit-identical and weights golden
    repair_failed: int = 0
    repair_s: list[float] = field(default_factory=list)
    detect_s: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary with Wilson intervals and repair-time percentiles."""
        rs = np.asarray(self.repair_s) * 1e3
        ds = np.asarray(self.detect_s) * 1e3
        pct = lambda a: {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)),  # noqa: E731
                         "max": float(a.max())} if a.size else None
        return {
            "trials": self.trials, "single_bit_trials": self.single,
            "multi_bit_trials": self.multi,
            "output_changed": self.output_changed, "top1_changed": self.top1_changed,
            "detected_share_of_output_changing":
                Proportion(self.detected_changed, self.output_changed).to_dict(),
            "sdc": Proportion(self.sdc, self.output_changed).to_dict(),
            "range_only_share_of_output_changing":
                Proportion(self.range_detected_changed, self.output_changed).to_dict(),
            "range_only_share_of_top1_changing":
                Proportion(self.range_detected_top1, self.top1_changed).to_dict(),
            "detected_any": self.detected,
            "repaired_exact": self.repaired_exact, "repair_failed": self.repair_failed,
            "repair_ms": pct(rs), "detect_ms": pct(ds), "seconds": self.seconds,
        }


def run_campaign(
    pm: CudaProtectedModel, x: torch.Tensor, trials: int, seed: int = 0, max_flips: int = 8,
    single_share: float = 0.5, time_limit_s: float | None = None,
) -> CampaignResult:
    """Run seeded weight-flip trials against `pm` on input `x` (stops early at time_limit_s).

    `pm` must check every weight on every inference (checksum_every=1): each trial is one
    `infer` on the faulty weights, whose first (failed) output is kept for the comparison.
    """
    if pm.config.checksum_every != 1:
        raise ValueError("a coverage campaign needs checksum_every=1 (every weight, every run)")
    pm.config.keep_failed_output = True
    rng = np.random.default_rng(seed)
    names = pm.normal_tensors()
    numel = np.asarray([pm.live(n).numel() for n in names], dtype=np.int64)
    width = np.asarray([layout_of(pm.live(n).dtype).width for n in names], dtype=np.int64)
    bits_per = numel * width
    cum = np.cumsum(bits_per)
    golden = pm.infer(x).output.clone()
    golden_top1 = golden.argmax(dim=-1)
    res = CampaignResult()
    t_start = time.perf_counter()
    for _ in range(trials):
        if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
            break
        single = rng.random() < single_share
        k = 1 if single else int(rng.integers(2, max_flips + 1))
        # uniform over every bit of normal memory
        g = rng.integers(0, int(cum[-1]), size=k)
        ti = np.searchsorted(cum, g, side="right")
        local = g - np.concatenate([[0], cum[:-1]])[ti]
        for i, loc in zip(ti.tolist(), local.tolist(), strict=True):
            flip_(pm.live(names[i]), int(loc // width[i]), int(loc % width[i]))
        r = pm.infer(x)  # full checks on the faulty weights, then repair and re-run
        status = r.status
        fired = bool(status.detections)
        out = status.failed_output if fired else r.output
        ranged = any(d.check == "range" for d in status.detections)
        changed = not torch.equal(out, golden)
        top1 = bool((out.argmax(dim=-1) != golden_top1).any()) or not bool(
            torch.isfinite(out).all())
        res.trials += 1
        res.single += single
        res.multi += not single
        res.output_changed += changed
        res.top1_changed += top1
        res.detected += fired
        res.detected_changed += changed and fired
        res.range_detected_changed += changed and ranged
        res.range_detected_top1 += top1 and ranged
        res.sdc += changed and not fired
        if fired:
            res.repair_s.append(status.repair_s)
            res.detect_s.append(status.detect_s)
            if status.verified and torch.equal(r.output, golden):
                res.repaired_exact += 1
            else:
                res.repair_failed += 1
        if not status.verified or (changed and not fired):
            pm.recover()  # never carry a fault into the next trial
    res.seconds = time.perf_counter() - t_start
    return res
