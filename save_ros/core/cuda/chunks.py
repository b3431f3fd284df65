"""Multi-tensor chunk reductions: per-chunk min/max of activations and weight checksums.

A list of tensors is cut into chunks of at most `CHUNK` elements (a chunk never spans two
tensors). One reduction writes one row per chunk into a preallocated buffer, so a whole model's
checks are one small array that the CPU verifier compares in a few vectorised operations, and a
mismatch names the tensor (and the 16 K-element span) that is wrong.

The checksum of a chunk is two exact int64 sums over the integer view of its elements (`v`,
the bits of each fp32/fp16/bf16 element read as a signed integer, via `save_ros.core.bits`):
`s1 = sum v` and `s2 = sum (i + 1) * v`, with `i` the element's index inside the chunk. A single
bit flip changes `s1` by +-2^bit, never 0. Two flips that cancel in `s1` (same bit, opposite
directions) change `s2` by 2^bit * (i - j) != 0. Neither sum can overflow: |v| < 2^31 and
i < 2^14, so |s2| < 2^31 * 2^28 = 2^59.

This module holds the plan and the reference implementation in plain torch ops (any device; the
CPU tests use it); `save_ros.core.cuda.kernels` holds the fused Triton kernels that compute the same
rows in one launch per tensor group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from save_ros.core.bits import int_view

CHUNK = 16384  # elements per chunk: 2^14 keeps the weighted checksum far from int64 overflow


class ChunkPlanError(ValueError):
    """Tensors that do not match the plan they are reduced with."""


@dataclass(frozen=True)
class ChunkPlan:
    """How a list of named tensors is cut into chunks, in order."""

    names: tuple[str, ...]
    numels: tuple[int, ...]
    offsets: tuple[int, ...]  # first chunk of each tensor; one extra entry: the total count
    chunk: int = CHUNK

    @property
    def n_chunks(self) -> int:
        """Number of chunks (rows of a reduction's output)."""
        return self.offsets[-1]

    def owner(self) -> np.ndarray:
        """Index of the owning tensor for every chunk."""
        counts = np.diff(np.asarray(self.offsets, dtype=np.int64))
        return np.repeat(np.arange(len(self.names)), counts)

    def chunk_start(self) -> np.ndarray:
        """Element offset of every chunk inside its tensor."""
        own = self.owner()
        first = np.asarray(self.offsets[:-1], dtype=np.int64)[own]
        return (np.arange(self.n_chunks, dtype=np.int64) - first) * self.chunk

    def chunk_lengths(self) -> np.ndarray:
        """Number of elements in every chunk (the last chunk of a tensor may be short)."""
        numel = np.asarray(self.numels, dtype=np.int64)[self.owner()]
        return np.minimum(numel - self.chunk_start(), self.chunk)

    def names_of(self, chunks: np.ndarray) -> list[str]:
        """Names of the tensors that own the given chunk indices, in plan order, no repeats."""
        own = np.unique(self.owner()[np.asarray(chunks, dtype=np.int64)])
        return [self.names[i] for i in own]

    def sub(self, start: int, stop: int) -> ChunkPlan:
        """The plan of tensors `start:stop` alone (chunk rows renumbered from 0)."""
        base = self.offsets[start]
        return ChunkPlan(
            self.names[start:stop],
            self.numels[start:stop],
            tuple(o - base for o in self.offsets[start : stop + 1]),
            self.chunk,
        )

    def check(self, tensors: Sequence[torch.Tensor]) -> None:
        """Raise ChunkPlanError unless `tensors` match the plan's sizes and are contiguous."""
        if len(tensors) != len(self.names):
            raise ChunkPlanError(f"plan has {len(self.names)} tensors, got {len(tensors)}")
        for name, n, t in zip(self.names, self.numels, tensors, strict=True):
            if t.numel() != n:
                raise ChunkPlanError(f"{name}: plan says {n} elements, tensor has {t.numel()}")
            if not t.is_contiguous():
                raise ChunkPlanError(f"{name} is not contiguous; chunks address flat storage")


def plan_chunks(names: Sequence[str], numels: Sequence[int], chunk: int = CHUNK) -> ChunkPlan:
    """Cut tensors of the given sizes into chunks of at most `chunk` elements."""
    if chunk <= 0 or chunk > 1 << 14:
        raise ChunkPlanError(f"chunk must be in 1..{1 << 14} (overflow bound), not {chunk}")
    if len(names) != len(numels):
        raise ChunkPlanError("names and numels differ in length")
    offsets = [0]
    for n in numels:
        if n <= 0:
            raise ChunkPlanError("empty tensors cannot be planned")
        offsets.append(offsets[-1] + -(-int(n) // chunk))
    return ChunkPlan(tuple(names), tuple(int(n) for n in numels), tuple(offsets), chunk)


def even_ends(sizes: Sequence[int], parts: int) -> list[int]:
    """Ends of contiguous groups of `sizes` of about equal sums (at most `parts` groups)."""
    total = max(1, sum(sizes))
    ends: list[int] = []
    acc = 0
    for i, n in enumerate(sizes):
        acc += n
        if acc >= total * (len(ends) + 1) / max(1, parts):
            ends.append(i + 1)
    return ends


def chunk_pointers(plan: ChunkPlan, tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Device address of the first element of every chunk (int64), for the fused kernels."""
    plan.check(tensors)
    base = np.asarray([t.data_ptr() for t in tensors], dtype=np.int64)[plan.owner()]
    item = np.asarray([t.element_size() for t in tensors], dtype=np.int64)[plan.owner()]
    return base + plan.chunk_start() * item


def _split(flat: torch.Tensor, chunk: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Full chunks as a 2-D view and the short tail (either may be None)."""
    nfull = flat.numel() // chunk
    full = flat[: nfull * chunk].view(nfull, chunk) if nfull else None
    tail = flat[nfull * chunk :] if flat.numel() % chunk else None
    return full, tail


def minmax_chunks_torch(
    tensors: Sequence[torch.Tensor], plan: ChunkPlan, out: torch.Tensor
) -> torch.Tensor:
    """Write (min, max) of every chunk into `out` (float32, [n_chunks, 2]); NaN propagates."""
    plan.check(tensors)
    for t, c0 in zip(tensors, plan.offsets, strict=False):
        full, tail = _split(t.detach().reshape(-1), plan.chunk)
        row = c0
        if full is not None:
            lo, hi = torch.aminmax(full, dim=1)
            out[row : row + full.shape[0], 0].copy_(lo)
            out[row : row + full.shape[0], 1].copy_(hi)
            row += full.shape[0]
        if tail is not None:
            lo, hi = torch.aminmax(tail)
            out[row, 0].copy_(lo)
            out[row, 1].copy_(hi)
    return out


_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _position_weights(device: torch.device, chunk: int) -> torch.Tensor:
    """1..chunk as int64 on `device` (cached: the same for every call)."""
    w = _WEIGHTS.get(device)
    if w is None or w.numel() < chunk:
        w = torch.arange(1, CHUNK + 1, dtype=torch.int64, device=device)
        _WEIGHTS[device] = w
    return w[:chunk]


def checksum_chunks_torch(
    tensors: Sequence[torch.Tensor], plan: ChunkPlan, out: torch.Tensor
) -> torch.Tensor:
    """Write (s1, s2) of every chunk into `out` (int64, [n_chunks, 2]); exact integer sums."""
    plan.check(tensors)
    for t, c0 in zip(tensors, plan.offsets, strict=False):
        v = int_view(t.detach()).reshape(-1).to(torch.int64)
        full, tail = _split(v, plan.chunk)
        row = c0
        if full is not None:
            w = _position_weights(v.device, plan.chunk)
            out[row : row + full.shape[0], 0].copy_(full.sum(dim=1))
            out[row : row + full.shape[0], 1].copy_((full * w).sum(dim=1))
            row += full.shape[0]
        if tail is not None:
            w = _position_weights(v.device, plan.chunk)[: tail.numel()]
            out[row, 0].copy_(tail.sum())
            out[row, 1].copy_((tail * w).sum())
    return out
