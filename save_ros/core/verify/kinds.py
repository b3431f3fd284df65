"""Check kinds as objects: what each verifies, how the plan offers it, how it fails.

Every `CheckKind` has one `KindSpec` here: the one line a report prints for it, what a failure
means, and which faults of the fault model it covers. `describe_failure(kind, detail)` is what
every backend prints for a failed check (not "checksum exceeds its tolerance" for all of them).

The memory checksum (`CHECKSUM`) lives here whole: its plan entry (`offer_checksum`: eligible
where the layer's output owns memory of its own, chosen where it costs less than the check the
plan had picked, measured on the device that runs it), its eager check (`checksum_failures`:
the write-time and last-read bit sums, `core.verify.memsum`, compared in one vector op) and its
description. The CUDA program does not run it yet: the CUDA backend plans without it
(`memory_checksums=False`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.memsum import bitsum, summable
from save_ros.core.verify.status import Detection


@dataclass(frozen=True)
class KindSpec:
    """What one check kind verifies and what its failure means."""

    kind: CheckKind
    verifies: str  # one line for reports
    failure: str  # what a failed check of this kind saw
    covers: str  # which faults of the fault model it catches


KINDS: dict[CheckKind, KindSpec] = {k.kind: k for k in (
    KindSpec(CheckKind.NONE, "nothing (robust bits only, reliable memory, or no tensor)",
             "", "nothing: no bit of it can change the result, or it cannot flip"),
    KindSpec(CheckKind.RANGE, "every element within its channel's analysed range",
             "a layer output left its analysed range",
             "flips of ranging bits (they push a value out of its range)"),
    KindSpec(CheckKind.DMR, "the layer re-computed from its saved inputs equals its output",
             "the re-computed layer differs from its output",
             "flips in the output's memory and faults in the layer's computation"),
    KindSpec(CheckKind.ABFT, "sum of the outputs equals the input times the golden column sums",
             "the output checksum differs from the input times the golden column sums beyond "
             "its rounding tolerance",
             "flips in the output or the weights that exceed the rounding tolerance"),
    KindSpec(CheckKind.CHECKSUM, "bit sum of the output after its last read equals the sum "
             "taken when it was written", "the output's bits changed in memory between its "
             "write and its last read", "every single flip in the output's memory between its "
             "write and its last read (all bits, no tolerance)"),
    KindSpec(CheckKind.WEIGHTS, "chunk sums of the weights in normal memory equal the golden "
             "sums", "a weight chunk's checksum differs from the golden sum",
             "every weight flip before the verdict"),
    KindSpec(CheckKind.INPUT, "the input within its declared box", "the input left its box",
             "input errors (not a fault)"),
)}


def describe_failure(kind: CheckKind | str, detail: str = "") -> str:
    """The text of a failed check of `kind`, with the backend's detail appended."""
    spec = KINDS[CheckKind(kind)]
    return f"{spec.failure}: {detail}" if detail else spec.failure


def best_time(fn, reps: int = 15, cuda: bool = False) -> float:
    """Best-of wall time of one call (seconds); on CUDA, of the call and its kernels."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def offer_checksum(c: LayerCheck, values: Sequence[Any], force: str, owns_memory: bool,
                   range_cost: float | None = None) -> None:
    """Make `c` a memory checksum where that covers at least as much for less.

    Eligible: the layer's output is a tensor with a bit layout and memory of its own (a view's
    flips are its producer's). It replaces DMR, ABFT and range checks (it covers every bit of
    the output's memory, vulnerable and ranging alike); `c.cost_s` records both costs.
    """
    v = values[c.index]
    if not (owns_memory and summable(v) and v.is_floating_point()):
        return
    if c.kind not in (CheckKind.DMR, CheckKind.ABFT, CheckKind.RANGE):
        return
    cost = 2 * best_time(lambda: bitsum(v), reps=9, cuda=v.is_cuda)
    c.cost_s["checksum"] = cost
    before = c.cost_s.get(c.kind.value) if c.kind is not CheckKind.RANGE else range_cost
    # "auto" takes it wherever eligible: besides its own cost (two reads, against a
    # re-computation and a compare), a plan of checksums only keeps no activation alive for
    # the verifier, so the forward reuses its memory as the plain model does (see
    # `core.runtime`); the measured costs stay in the report
    if force in ("checksum", "auto"):
        was = c.kind.value
        c.kind, c.abft = CheckKind.CHECKSUM, None
        c.reason += f"; memory checksum {cost * 1e6:.0f} us" + (
            f" < {was} {before * 1e6:.0f} us" if before is not None else "")


def range_cost(c: LayerCheck, value: torch.Tensor) -> float:
    """Measured cost of one range check's reduction on `value` (its channel min and max)."""
    if c.channel_dim is None:
        return best_time(lambda: torch.aminmax(value), reps=9, cuda=value.is_cuda)
    dims = [d for d in range(value.dim()) if d != c.channel_dim]
    return best_time(lambda: (value.amin(dim=dims), value.amax(dim=dims)), reps=9,
                     cuda=value.is_cuda)


def checksum_failures(checks: Sequence[LayerCheck], sums: tuple[torch.Tensor, torch.Tensor],
                      start: int = 0) -> list[tuple[int, Detection]]:
    """The checksum checks (at layers >= start) whose read sum differs from the write sum."""
    written, read = sums
    bad = written != read
    if not bool(bad.any()):
        return []
    out = []
    for k in bad.nonzero().flatten().tolist():
        c = checks[k]
        if c.index < start:
            continue
        out.append((c.index, Detection(c.name, c.name, CheckKind.CHECKSUM.value, describe_failure(
            CheckKind.CHECKSUM, f"sum {int(written[k])} when written, {int(read[k])} after "
            "the last read"))))
    return out
