"""One reduction over a fixed group of tensors into a preallocated buffer: Triton or torch.

`ChunkReducer` owns its output rows and, for the Triton backend, the two device tables
(chunk address, chunk length) the fused kernel reads. Inside a CUDA graph the tensors' addresses
are fixed, so `bind(tensors)` fills the tables once after capture; in eager mode `bind` runs
before every launch.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch

from save_ros.core.bits import layout_of
from save_ros.core.cuda.chunks import (
    ChunkPlan,
    checksum_chunks_torch,
    chunk_pointers,
    minmax_chunks_torch,
)


class Reduction(str, enum.Enum):
    """What a reducer computes per chunk."""

    MINMAX = "minmax"  # float32 (min, max): range checks of activations
    CHECKSUM = "checksum"  # int64 (s1, s2): exact weight checksums


class Kernels(str, enum.Enum):
    """Who computes the rows."""

    TRITON = "triton"  # one fused launch per group (CUDA only)
    TORCH = "torch"  # a few torch ops per tensor (any device; the reference)


class ReducerError(ValueError):
    """A group that one reducer cannot handle (mixed dtypes, unsupported dtype)."""


class ChunkReducer:
    """Reduce the chunks of one group of same-dtype tensors into `out` ([n_chunks, 2])."""

    def __init__(
        self,
        plan: ChunkPlan,
        dtype: torch.dtype,
        kind: Reduction,
        device: torch.device,
        backend: Kernels,
        out: torch.Tensor | None = None,
    ) -> None:
        layout_of(dtype)  # raises UnsupportedDtypeError with the supported list
        if kind is Reduction.CHECKSUM and not layout_of(dtype).is_float:
            raise ReducerError(f"checksums are defined for float weights, not {dtype}")
        if backend is Kernels.TRITON and device.type != "cuda":
            raise ReducerError("the Triton backend needs CUDA tensors; use Kernels.TORCH")
        self.plan, self.dtype, self.kind, self.device, self.backend = (
            plan, dtype, kind, device, backend,
        )
        out_dtype = torch.float32 if kind is Reduction.MINMAX else torch.int64
        if out is None:
            out = torch.empty(plan.n_chunks, 2, dtype=out_dtype, device=device)
        if out.shape != (plan.n_chunks, 2) or out.dtype != out_dtype:
            raise ReducerError(f"out must be {out_dtype} [{plan.n_chunks}, 2]")
        self.out = out
        if backend is Kernels.TRITON:
            from save_ros.core.cuda import kernels

            self._kernels = kernels
            kernels._ref(device, dtype if kind is Reduction.MINMAX else kernels._INT_VIEW[dtype])
            self._ptrs = torch.zeros(plan.n_chunks, dtype=torch.int64, device=device)
            self._lens = torch.as_tensor(plan.chunk_lengths(), dtype=torch.int32).to(device)
        self._bound: list[int] | None = None

    def bind(self, tensors: Sequence[torch.Tensor]) -> None:
        """Point the kernel's tables at `tensors` (a synchronous copy of a few KB)."""
        for t in tensors:
            if t.dtype != self.dtype:
                raise ReducerError(f"reducer for {self.dtype} got a {t.dtype} tensor")
        if self.backend is Kernels.TRITON:
            ptrs = chunk_pointers(self.plan, tensors)
            self._ptrs.copy_(torch.from_numpy(ptrs))
        self._bound = [t.data_ptr() for t in tensors]

    def launch(self, tensors: Sequence[torch.Tensor]) -> None:
        """Enqueue the reduction on the current stream (graph-capturable once bound)."""
        if self.backend is Kernels.TORCH:
            fn = minmax_chunks_torch if self.kind is Reduction.MINMAX else checksum_chunks_torch
            fn(tensors, self.plan, self.out)
            return
        launch = (
            self._kernels.launch_minmax
            if self.kind is Reduction.MINMAX
            else self._kernels.launch_checksum
        )
        launch(self._ptrs, self._lens, self.out, self.dtype, self.plan.chunk)
