"""Verification inside the forward's CUDA graph: rotating checksum and on-device comparison.

Captured into the same graph as the forward: a checksum kernel on a side stream (forked at the
graph's start) that sums this replay's slice of weight rows (row % k == replay % k; a device
counter advanced by the graph itself picks the slice), and, after the forward and the range
reductions have joined, one kernel that compares every activation row with its bounds and the
slice's checksum rows with the golden ones, counting failures into two int32 flags. The host
copies back 8 bytes; only when a flag is set does it fetch the rows to say what failed.
"""

from __future__ import annotations

import numpy as np
import torch

from save_ros.core.cuda import kernels
from save_ros.core.cuda.chunks import ChunkPlan, chunk_pointers


def _outward_f32(values: np.ndarray, down: bool) -> np.ndarray:
    """float32 bounds that never lie inside the float64 ones (no false alarm from rounding)."""
    f = values.astype(np.float32)
    toward = np.float32(-np.inf) if down else np.float32(np.inf)
    tight = f > values if down else f < values
    return np.where(tight, np.nextafter(f, toward), f).astype(np.float32)


class FusedVerify:
    """Device state and launches of the in-graph checks (Triton backend, CUDA graphs)."""

    def __init__(self, weight_plan: ChunkPlan, weights: list[torch.Tensor], dtype: torch.dtype,
                 low_rows: np.ndarray, high_rows: np.ndarray, golden_rows: np.ndarray,
                 k: int, device: torch.device) -> None:
        self.plan, self.dtype, self.k = weight_plan, dtype, int(k)
        self.weights = weights
        self.counter = torch.zeros(1, dtype=torch.int64, device=device)
        self.flags = torch.zeros(2, dtype=torch.int32, device=device)
        self.flags_host = torch.zeros(2, dtype=torch.int32, pin_memory=True)
        self.low = torch.from_numpy(_outward_f32(low_rows, True)).to(device)
        self.high = torch.from_numpy(_outward_f32(high_rows, False)).to(device)
        self.golden = torch.from_numpy(np.ascontiguousarray(golden_rows)).to(device)
        self.sums = self.golden.clone()
        self._ptrs = torch.from_numpy(chunk_pointers(weight_plan, weights)).to(device)
        self._lens = torch.as_tensor(weight_plan.chunk_lengths(), dtype=torch.int32).to(device)
        kernels._ref(device, kernels._INT_VIEW[dtype])

    def launch_checksum(self) -> None:
        """Enqueue this replay's checksum slice on the current stream."""
        kernels.launch_checksum_rot(self._ptrs, self._lens, self.sums, self.dtype,
                                    self.plan.chunk, self.counter, self.k)

    def launch_verify(self, stats: torch.Tensor) -> None:
        """Enqueue the comparison and advance the slice counter (current stream, in order)."""
        kernels.launch_verify(stats, self.low, self.high, self.sums, self.golden, self.counter,
                              self.k, self.flags)
        self.counter.add_(1)

    def slice_rows(self, s: int) -> np.ndarray:
        """Checksum rows of slice s."""
        return np.arange(s % self.k, self.plan.n_chunks, self.k)
