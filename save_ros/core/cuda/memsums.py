"""Memory checksums inside the device program: write sums, read sums, one flag.

The `checksum` kind (`core.verify.memsum`, `kinds`) on CUDA: right after a checked layer's
producer, its bit sum on the main stream (before the layer's fault site, so an injected flip
lands after the write); once the last node that reads its memory has run, the same sum on the
side stream (nothing writes that memory again inside the captured program, whose values all
stay alive until its end); at the end one flag for all of them. The two sum vectors stay
behind in the graph's memory, so the slow path names the layers whose sums differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from save_ros.core.verify.checks import LayerCheck
from save_ros.core.verify.memsum import bitsum


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
