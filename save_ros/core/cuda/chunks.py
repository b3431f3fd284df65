"""Multi-tensor chunk plans: a group of tensors cut into chunks, one kernel row per chunk.

A list of tensors is cut into chunks of at most `CHUNK` elements (a chunk never spans two
tensors). A fused kernel (`save_ros.core.cuda.kernels`) runs one program per chunk and writes one
row into a preallocated buffer, reading each chunk's device address and length from two small
tables (`chunk_pointers`, `ChunkPlan.chunk_lengths`), so a whole group of layer outputs is
checked in one launch, and a row that fails names the tensor (and the span) that is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 16384  # elements per chunk, at most


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
        raise ChunkPlanError(f"chunk must be in 1..{CHUNK}, not {chunk}")
    if len(names) != len(numels):
        raise ChunkPlanError("names and numels differ in length")
    offsets = [0]
    for n in numels:
        if n <= 0:
            raise ChunkPlanError("empty tensors cannot be planned")
        offsets.append(offsets[-1] + -(-int(n) // chunk))
    return ChunkPlan(tuple(names), tuple(int(n) for n in numels), tuple(offsets), chunk)


def chunk_pointers(plan: ChunkPlan, tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Device address of the first element of every chunk (int64), for the fused kernels."""
    plan.check(tensors)
    base = np.asarray([t.data_ptr() for t in tensors], dtype=np.int64)[plan.owner()]
    item = np.asarray([t.element_size() for t in tensors], dtype=np.int64)[plan.owner()]
    return base + plan.chunk_start() * item
