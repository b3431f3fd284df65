"""Campaign metrics: spread of a per-trial figure, Wilson intervals, SDC and AccurateLatency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation, min and max of per-trial values."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Summarise values (NaN-free); an empty list gives NaNs and n=0."""
        vals = [float(v) for v in values]
        if not vals:
            return cls(math.nan, math.nan, math.nan, math.nan, 0)
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        return cls(mean, math.sqrt(var), min(vals), max(vals), len(vals))

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return asdict(self)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Proportion:
    """A count out of n, with its rate and Wilson 95% interval."""

    count: int
    n: int

    @property
    def rate(self) -> float:
        """count / n (NaN when n is 0)."""
        return self.count / self.n if self.n else math.nan

    def to_dict(self) -> dict:
        """JSON-safe dict with rate and ci95."""
        lo, hi = wilson_interval(self.count, self.n)
        return {"count": self.count, "n": self.n, "rate": self.rate, "ci95": [lo, hi]}


@dataclass(frozen=True)
class SampleOutcome:
    """Per-sample outcome of one faulty run against its fault-free reference."""

    changed: torch.Tensor  # top-1 (or action) differs from the fault-free run (regression:
    # some output leaves the tolerance around the fault-free one)
    detected: torch.Tensor  # the method flagged the sample
    nonfinite: torch.Tensor  # the output holds NaN or Inf
    correct: torch.Tensor | None  # top-1 equals the label (classification)

    @property
    def sdc(self) -> torch.Tensor:
        """Silent data corruption: changed and not detected."""
        return self.changed & ~self.detected


def compare(clean: torch.Tensor, faulty: torch.Tensor, detected: torch.Tensor,
            labels: torch.Tensor | None = None,
            tolerance: tuple[float, float] | None = None) -> SampleOutcome:
    """Compare faulty logits with the fault-free ones, sample by sample.

    A sample whose output holds NaN/Inf counts as changed: argmax of NaN logits is meaningless.
    With `tolerance = (rtol, atol)` the outputs are continuous (a regression): a sample changed
    when any output differs from the fault-free one by more than atol + rtol * |clean|.
    """
    nonfinite = ~torch.isfinite(faulty).reshape(len(faulty), -1).all(dim=1)
    if tolerance is not None:
        rtol, atol = tolerance
        a, b = faulty.reshape(len(faulty), -1), clean.reshape(len(clean), -1)
        changed = ~((a - b).abs() <= atol + rtol * b.abs()).all(dim=1) | nonfinite
        return SampleOutcome(changed, detected.reshape(-1).to(torch.bool).expand(len(faulty)),
                             nonfinite, None)
    pred = faulty.argmax(dim=1)
    changed = (pred != clean.argmax(dim=1)) | nonfinite
    correct = None if labels is None else (pred == labels) & ~nonfinite
    return SampleOutcome(changed, detected.reshape(-1).to(torch.bool).expand(len(faulty)),
                         nonfinite, correct)


def accurate_latency(latency: float, error_rate: float) -> float:
    """AccurateLatency = Latency x (1 + ErrorRate), the figure of merit of the design."""
    return latency * (1.0 + error_rate)
