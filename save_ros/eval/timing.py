"""Timing of the measurements: methods side by side, so load drifts hit all of them alike.

CPU latencies are reported only as ratios measured in one run: `interleaved` runs every method
once per round, in turn, and keeps per round the wall time and the calling thread's CPU time
(on a shared machine the best round estimates the cost, the median mostly measures the
neighbours). `median_ms` and `thread_cpu_us` time one call; `summary` gives percentiles of samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Rounds:
    """Seconds per call of one method, one entry per round: wall clock and thread CPU."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def spread_us(self) -> dict[str, float]:
        """Best and median round, wall and thread CPU, in microseconds."""
        return {"min_us": min(self.wall) * 1e6, "median_us": statistics.median(self.wall) * 1e6,
                "thread_cpu_us": min(self.cpu) * 1e6,
                "thread_cpu_median_us": statistics.median(self.cpu) * 1e6}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int,
                calls_per_fn: int = 1) -> dict[str, Rounds]:
    """Every fn once per round, in turn (after one warm-up each); per-call seconds per round.

    `calls_per_fn`: how many inferences one call of a fn makes (a block of inputs).
    """
    out = {k: Rounds() for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            c = time.thread_time()
            t = time.perf_counter()
            f()
            out[k].wall.append((time.perf_counter() - t) / calls_per_fn)
            out[k].cpu.append((time.thread_time() - c) / calls_per_fn)
    return out


def median_ms(fn: Callable[[], object], iters: int) -> float:
    """Median wall milliseconds of one call over `iters` calls."""
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def thread_cpu_us(fn: Callable[[], object], reps: int = 300, block: int = 20) -> float:
    """Median thread-CPU microseconds of one call, measured in blocks of `block` calls."""
    fn()
    blocks = []
    for _ in range(max(1, reps // block)):
        c = time.thread_time()
        for _ in range(block):
            fn()
        blocks.append((time.thread_time() - c) / block * 1e6)
    return statistics.median(blocks)


def summary(samples: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """n, mean, min, max and the percentiles `p<q>` of the samples (linear interpolation, as
    numpy's default); empty samples give {}."""
    xs = sorted(float(v) for v in samples)
    if not xs:
        return {}
    out: dict[str, float] = {"n": len(xs), "mean": statistics.fmean(xs), "min": xs[0],
                             "max": xs[-1]}
    for q in qs:
        pos = (len(xs) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        out[f"p{q}"] = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return out
