"""The `checksum` kind: an activation's bit sum when written against its sum after the last read.

- plan entry (`offer`): eligible where the layer's output is a float tensor with a bit layout and
  memory of its own (a view's flips are its producer's); it takes over DMR, ABFT and range checks
  (it covers every bit of the output's memory, vulnerable and ranging alike), chosen by its
  measured cost (two bit sums) on the device that runs it; `c.cost_s` records both costs;
- eager check (`eager_batch`): the write-time and last-read bit sums that the checksummed
  forward returns (`core.verify.memsum`, `Instrumented.checksummed`), compared in one vector op;
  a re-run by Edit takes no sums, and its checksummed layers are re-computed and compared (DMR);
- device check (`DeviceSums`): the write sum right after the producer on the main stream
  (before the layer's fault site, so an injected flip lands after the write); once the last
  node that reads its memory has run, the same sum on the side stream (nothing writes that
  memory again inside the captured program, whose values all stay alive until its end); at the
  end one flag for all of them. The two sum vectors stay behind in the graph's memory, so the
  slow path names the layers whose sums differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds.base import (
    EagerRun,
    Failures,
    Kind,
    PlanContext,
    Slot,
    best_time,
    kind_of,
)
from save_ros.core.verify.kinds.dmr import DMR
from save_ros.core.verify.memsum import bitsum, summable
from save_ros.core.verify.status import Detection


class ChecksumKind(Kind):
    """Memory flips of an activation between its write and its last read, exactly."""

    kind = CheckKind.CHECKSUM
    verifies = "bit sum of the output after its last read equals the sum taken when it was " \
        "written"
    failure = "the output's bits changed in memory between its write and its last read"
    covers = "every single flip in the output's memory between its write and its last read " \
        "(all bits, no tolerance)"
    on_device = "write sum after the producer (main stream), read sum after the last reader " \
        "(side stream), one flag for all; the sum vectors name the layer (`DeviceSums`)"
    replaces = (CheckKind.DMR, CheckKind.ABFT, CheckKind.RANGE)
    device_detail = "device bit sums"

    def offer(self, c: LayerCheck, ctx: PlanContext, ta: Any) -> None:
        """Make `c` a memory checksum where that covers at least as much for less."""
        if not ctx.memory_checksums or c.kind not in self.replaces:
            return
        v = ctx.values[c.index]
        if not (summable(v) and v.is_floating_point() and ctx.owns_memory(c.index)):
            return
        cost = 2 * best_time(lambda: bitsum(v), reps=9, cuda=v.is_cuda)
        c.cost_s[self.name] = cost
        before = kind_of(c).cost(c, ctx)
        # "auto" takes it wherever eligible: besides its own cost (two reads, against a
        # re-computation and a compare), a plan of checksums only keeps no activation alive for
        # the verifier, so the forward reuses its memory as the plain model does (see
        # `core.runtime`); the measured costs stay in the report
        if ctx.force in (self.name, "auto"):
            was = c.kind.value
            c.kind, c.abft = self.kind, None
            c.reason += f"; memory checksum {cost * 1e6:.0f} us" + (
                f" < {was} {before * 1e6:.0f} us" if before is not None else "")

    def eager_batch(self, run: EagerRun) -> Failures:
        """Layers whose read sum differs from the write sum; re-computed on a re-run."""
        checks = run.plan.checksummed
        if not checks:
            return []
        run.st.checks_run += len(checks)
        if run.sums is not None:
            return self.failures(checks, run.sums, run.start)
        fails = (DMR.eager_check(c, run) for c in checks if c.index >= run.start)
        return [f for f in fails if f is not None]

    def eager_check(self, c: LayerCheck, run: EagerRun) -> tuple[int, Detection] | None:
        """One checksummed layer: its sums from the run, else its re-computation (DMR)."""
        if run.sums is None:
            return DMR.eager_check(c, run)
        k = next(k for k, x in enumerate(run.plan.checksummed) if x is c)
        fails = self.failures([c], (run.sums[0][k : k + 1], run.sums[1][k : k + 1]))
        return fails[0] if fails else None

    def failures(self, checks: Sequence[LayerCheck], sums: tuple[torch.Tensor, torch.Tensor],
                 start: int = 0) -> Failures:
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
            out.append((c.index, Detection(c.name, c.name, self.name, self.describe_failure(
                f"sum {int(written[k])} when written, {int(read[k])} after the last read"))))
        return out

    def device_sums(self, checks: Sequence[LayerCheck], last_read: dict[int, int]
                    ) -> DeviceSums:
        """This kind's part of a CUDA program (program-wide: one flag at the end)."""
        return DeviceSums(checks, last_read)


CHECKSUM = ChecksumKind()


class DeviceSums:
    """The write and read sums of a plan's checksummed layers, for one program."""

    def __init__(self, checks: Sequence[LayerCheck], last_read: dict[int, int]) -> None:
        self.checks = list(checks)
        self.pos = {c.index: k for k, c in enumerate(self.checks)}
        self.reads_after: dict[int, list[int]] = {}
        for c in self.checks:
            self.reads_after.setdefault(last_read.get(c.index, -1), []).append(c.index)
        self.written: torch.Tensor | None = None  # the last run's sums (static in a graph)
        self.read: torch.Tensor | None = None
        self._w: dict[int, torch.Tensor] = {}
        self._r: dict[int, torch.Tensor] = {}

    def start(self) -> None:
        """A new run."""
        self._w, self._r = {}, {}

    def after(self, i: int, vals: Sequence[Any], side, main, keep: list) -> None:
        """Node i has run: its write sum (main stream), then the read sums it ends."""
        if i in self.pos:
            self._w[i] = bitsum(vals[i])
        if i in self.reads_after:
            self.reads(self.reads_after[i], vals, side, main, keep)

    def reads(self, nodes: list[int], vals: Sequence[Any], side, main, keep: list) -> None:
        """Read sums of `nodes`, whose memory has had its last reader (side stream when set)."""
        ctx = nullcontext()
        if side is not None:
            side.wait_stream(main)
            ctx = torch.cuda.stream(side)
        with ctx:
            for j in nodes:
                self._r[j] = bitsum(vals[j])
        keep += [self._r[j] for j in nodes]

    def flag(self, vals: Sequence[Any], side, main, keep: list, false: torch.Tensor
             ) -> torch.Tensor:
        """The end of a run (after the side stream joined): True where any sum differs."""
        if not self.checks:
            return false
        if -1 in self.reads_after:  # the model output: read at the end
            self.reads(self.reads_after[-1], vals, None, main, keep)
        self.written = torch.stack([self._w[c.index] for c in self.checks])
        self.read = torch.stack([self._r[c.index] for c in self.checks])
        return (self.written != self.read).any()

    def failures(self) -> list[str]:
        """Layers whose read sum differed from their write sum in the last run."""
        if self.written is None:
            return []
        bad = (self.written != self.read).nonzero().flatten().tolist()
        return [self.checks[k].name for k in bad]

    def raised(self) -> list[Slot]:
        """The slots of a raised checksum flag: one per failing layer ("?" if none is found)."""
        names = self.failures()
        return [Slot(CHECKSUM, n, (n,), CHECKSUM.device_detail) for n in names] or \
            [Slot(CHECKSUM, "?", tuple(c.name for c in self.checks), CHECKSUM.device_detail)]
