"""SAVE Allocation: fill the reliable-memory pool with the most vulnerable bits per byte.

Two pools: *reliable* (bit-flip free: an ECC region, on-chip SRAM, host memory with ECC; in
simulation the injector never touches it) and *normal*. Candidates are weights and the saved
activations Edit needs, ranked by their Selection score (expected vulnerable bits per byte); the
planner takes them greedily in that order while they fit the byte budget (a tensor that does not
fit is skipped, a smaller one after it may still fit). Activation sizes are per inference at the
batch size of the example input.

Default budget: `DEFAULT_BUDGET_FRACTION` (10 %) of the model's weight bytes. On the bundled
models that holds the most vulnerable layers' biases and small weights plus the early
activations; the benchmark sweeps the budget to show the trade-off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from save_ros.core.analysis import Analysis, TensorKind
from save_ros.errors import UserError

DEFAULT_BUDGET_FRACTION = 0.10


class BudgetError(UserError, ValueError):
    """A negative or otherwise unusable reliable-memory budget."""


@dataclass
class Candidate:
    """One tensor the planner may place: its name, kind, size and vulnerability."""

    name: str
    kind: str  # "weight" or "activation"
    nbytes: int
    vulnerable_bits: float
    score: float  # vulnerable bits per byte


@dataclass
class Placement:
    """Where every tensor lives, and what the reliable pool buys."""

    reliable_budget_bytes: int
    used_bytes: int
    reliable: list[str]  # tensor names in the reliable pool, in placement order
    normal: list[str]
    vulnerable_bits_reliable: float  # expected vulnerable bits now flip-free
    vulnerable_bits_normal: float  # expected vulnerable bits left in normal memory
    weight_bytes: int = 0  # all weights, both pools
    golden_bytes: int = 0  # golden copies of normal-memory weights (host memory)
    kinds: dict[str, str] = field(default_factory=dict)  # name -> weight | activation

    def is_reliable(self, name: str) -> bool:
        """True when `name` lives in the reliable pool."""
        return name in self._reliable_set

    def __post_init__(self) -> None:
        self._reliable_set = set(self.reliable)

    def reliable_of(self, kind: str) -> list[str]:
        """Reliable tensor names of one kind (`weight` or `activation`)."""
        return [n for n in self.reliable if self.kinds.get(n) == kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        d = asdict(self)
        d.pop("kinds")
        d["reliable_kinds"] = {n: self.kinds.get(n, "") for n in self.reliable}
        return d

    def summary(self) -> str:
        """A few lines for logs and reports."""
        total = self.vulnerable_bits_reliable + self.vulnerable_bits_normal
        share = self.vulnerable_bits_reliable / total if total else 1.0
        return (
            f"reliable pool: {self.used_bytes} / {self.reliable_budget_bytes} B, "
            f"{len(self.reliable)} tensors ({len(self.reliable_of('weight'))} weights, "
            f"{len(self.reliable_of('activation'))} activations); "
            f"{share:.1%} of the expected vulnerable bits protected, "
            f"{self.vulnerable_bits_normal:.1f} left in normal memory; "
            f"golden copies {self.golden_bytes} B in host memory"
        )


def default_budget(weight_bytes: int, fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """The default reliable-pool size: `fraction` of the model's weight bytes."""
    if fraction < 0:
        raise BudgetError(f"budget fraction must be >= 0, got {fraction}")
    return int(weight_bytes * fraction)


def plan(candidates: Iterable[Candidate], reliable_budget_bytes: int,
         weight_bytes: int = 0) -> Placement:
    """Greedy placement by score (vulnerable bits per byte), largest first, within the budget."""
    if reliable_budget_bytes < 0:
        raise BudgetError(f"reliable budget must be >= 0 bytes, got {reliable_budget_bytes}")
    cands = list(candidates)
    kinds = {c.name: c.kind for c in cands}
    # ties broken by name so a plan is reproducible
    order = sorted(cands, key=lambda c: (-c.score, c.name))
    reliable: list[str] = []
    used = 0
    v_rel = 0.0
    for c in order:
        if c.vulnerable_bits <= 0 or c.score <= 0:
            continue  # nothing to protect: leave the room to others
        if used + c.nbytes <= reliable_budget_bytes:
            reliable.append(c.name)
            used += c.nbytes
            v_rel += c.vulnerable_bits
    rel_set = set(reliable)
    normal = [c.name for c in cands if c.name not in rel_set]
    v_norm = sum(c.vulnerable_bits for c in cands if c.name not in rel_set)
    golden = sum(c.nbytes for c in cands if c.kind == "weight" and c.name not in rel_set)
    return Placement(reliable_budget_bytes, used, reliable, normal, v_rel, v_norm, weight_bytes,
                     golden, kinds)


def candidates(analysis: Analysis | None, weights: dict[str, torch.Tensor],
               weights_covered: bool = False) -> list[Candidate]:
    """Every analysed weight and activation as a candidate (every weight, unscored, without one).

    `weights_covered`: every weight is checksummed before every verdict, so a weight flip in
    normal memory is always caught and repaired before a result is released; its vulnerable
    bits then buy nothing in the reliable pool, which goes to activations (whose only other
    protection is re-computation).
    """
    if analysis is None:
        return [Candidate(n, "weight", t.numel() * t.element_size(), 0.0, 0.0)
                for n, t in weights.items()]
    out = []
    for t in analysis.tensors.values():
        weight = t.kind is TensorKind.WEIGHT
        if weight and weights_covered:
            out.append(Candidate(t.name, "weight", int(t.nbytes), 0.0, 0.0))
        else:
            out.append(Candidate(t.name, "weight" if weight else "activation", int(t.nbytes),
                                 float(t.vulnerable_bits), float(t.score)))
    return out
