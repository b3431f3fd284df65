"""Exact per-channel range checks of a group of layer outputs in one launch (Triton or torch).

`RangeChecker` holds, for a fixed group of same-dtype contiguous tensors, the analysed bounds of
every channel (or one pair per tensor) and a chunk plan (`core.cuda.chunks`). `launch(tensors)`
writes one row per chunk into `out`: how many of the chunk's elements lie outside the bounds of
their own channel (NaN always does). Every element is held against its own channel's bounds,
exactly as Selection classed its flips *ranging* (`core.select.attribution`): a check against
the hull of several channels would pass flips that Selection counted on the range check to
catch. The channel of element e is (e // inner) % channels, with `inner` the number of elements
after the channel dim, so (N, C, H, W) maps to channel dim 1 and (N, T, D) tokens to dim 2 alike.

On CUDA the Triton kernel (`core.cuda.kernels`) does it in one launch per group, reading the
chunk addresses from a device table that `bind` fills (once, after a CUDA graph is captured,
since addresses inside a graph's pool never move); the torch backend (any device) is the
reference the kernel is tested against and what CPU tests run.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from save_ros.core.cuda.chunks import chunk_pointers, plan_chunks

ACT_CHUNK = 4096  # elements per kernel program


class Kernels(str, enum.Enum):
    """Who computes the rows."""

    TRITON = "triton"  # one fused launch per group (CUDA only)
    TORCH = "torch"  # a few torch ops per tensor (any device; the reference)


class RangeCheckError(ValueError):
    """Tensors or bounds one checker cannot take (mixed dtypes, bounds that fit no dim)."""


def channel_layout(shape: Sequence[int], channel_dim: int | None, n_bounds: int
                   ) -> tuple[int, int]:
    """(inner, channels) of a tensor: one bound pair per tensor, or one per channel."""
    if n_bounds == 1 or channel_dim is None:
        return 1, 1
    if not 0 <= channel_dim < len(shape) or shape[channel_dim] != n_bounds:
        raise RangeCheckError(f"{n_bounds} channel bounds do not fit dim {channel_dim} of a "
                              f"{tuple(shape)} tensor")
    return math.prod(shape[channel_dim + 1 :]), int(shape[channel_dim])


class RangeChecker:
    """Per-chunk counts of out-of-range elements of one group of tensors, into `out`."""

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]],
                 channel_dims: Sequence[int | None], lows: Sequence[torch.Tensor],
                 highs: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device,
                 backend: Kernels, chunk: int = ACT_CHUNK) -> None:
        if backend is Kernels.TRITON and device.type != "cuda":
            raise RangeCheckError("the Triton backend needs CUDA tensors; use Kernels.TORCH")
        self.dtype, self.device, self.backend = dtype, device, backend
        self.plan = plan_chunks(list(names), [math.prod(s) for s in shapes], chunk)
        if max(self.plan.numels) >= 2**31 or sum(lo.numel() for lo in lows) >= 2**31:
            raise RangeCheckError("a tensor of 2^31 elements or more: the kernel indexes in int32")
        self.layout: list[tuple[int, int, int]] = []  # (inner, channels, bound offset)
        lo_all, hi_all, off = [], [], 0
        for shape, cdim, lo, hi in zip(shapes, channel_dims, lows, highs, strict=True):
            lo, hi = lo.reshape(-1).float(), hi.reshape(-1).float()
            inner, nch = channel_layout(shape, cdim, lo.numel())
            if nch == 1 and lo.numel() > 1:  # several bounds, no channel dim: their hull
                lo, hi = lo.min().reshape(1), hi.max().reshape(1)
            self.layout.append((inner, nch, off))
            lo_all.append(lo)
            hi_all.append(hi)
            off += lo.numel()
        self.low = torch.cat(lo_all).to(device)
        self.high = torch.cat(hi_all).to(device)
        self.out = torch.zeros(self.plan.n_chunks, dtype=torch.int32, device=device)
        self.tables: dict[str, torch.Tensor] = {}
        if backend is Kernels.TRITON:
            from save_ros.core.cuda import kernels

            self._kernels = kernels
            kernels.ref_tensor(device, dtype)
            own = self.plan.owner()
            # int32 throughout: 64-bit integer division per element made the kernel
            # compute-bound (every tensor here has < 2^31 elements, checked above)
            col = [torch.as_tensor([lay[k] for lay in self.layout], dtype=torch.int32)[own]
                   for k in range(3)]
            self.tables = {
                "ptrs": torch.zeros(self.plan.n_chunks, dtype=torch.int64, device=device),
                "lens": torch.as_tensor(self.plan.chunk_lengths(), dtype=torch.int32
                                        ).to(device),
                "starts": torch.as_tensor(self.plan.chunk_start(), dtype=torch.int32
                                          ).to(device),
                "inner": col[0].to(device), "nch": col[1].to(device), "boff": col[2].to(device),
            }

    def pointers(self, tensors: Sequence[torch.Tensor]):
        """The chunk address table for `tensors` (host int64 array)."""
        for t in tensors:
            if t.dtype != self.dtype:
                raise RangeCheckError(f"checker for {self.dtype} got a {t.dtype} tensor")
        return chunk_pointers(self.plan, tensors)

    def bind(self, tensors: Sequence[torch.Tensor], ptrs=None) -> None:
        """Point the kernel's address table at `tensors` (a synchronous copy of a few KB)."""
        ptrs = self.pointers(tensors) if ptrs is None else ptrs
        if self.backend is Kernels.TRITON:
            self.tables["ptrs"].copy_(torch.from_numpy(ptrs))

    def launch(self, tensors: Sequence[torch.Tensor]) -> None:
        """Enqueue the check on the current stream (graph-capturable once bound)."""
        if self.backend is Kernels.TORCH:
            violations_torch(tensors, self, self.out)
            return
        self._kernels.launch_range(self.tables, self.low, self.high, self.out, self.dtype,
                                   self.plan.chunk)

    def failed(self) -> torch.Tensor:
        """A device bool: some element of the last launch was out of its channel's range."""
        return (self.out != 0).any()


def violations_torch(tensors: Sequence[torch.Tensor], rc: RangeChecker, out: torch.Tensor
                     ) -> torch.Tensor:
    """The reference: write the per-chunk out-of-range counts of `tensors` into `out`."""
    rc.plan.check(tensors)
    chunk = rc.plan.chunk
    for t, (inner, nch, off), c0, c1 in zip(tensors, rc.layout, rc.plan.offsets,
                                            rc.plan.offsets[1:], strict=False):
        x = t.detach().reshape(-1, nch, inner).float()
        lo = rc.low[off : off + nch].reshape(1, nch, 1)
        hi = rc.high[off : off + nch].reshape(1, nch, 1)
        bad = (~((x >= lo) & (x <= hi))).reshape(-1).to(torch.int32)  # NaN: not inside
        bad = F.pad(bad, (0, (c1 - c0) * chunk - bad.numel()))
        out[c0:c1].copy_(bad.reshape(c1 - c0, chunk).sum(1))
    return out
