"""Fused multi-tensor Triton kernels: one launch reduces every chunk of a group of tensors.

Each program reads a chunk's device address and length from two small tables (filled once
after a CUDA graph is captured, since addresses inside a graph's pool never move) and writes
one row of the output: (min, max) for activations, (s1, s2) for weight checksums (the sums are
defined in `save_ros.core.cuda.chunks`, whose torch code is the reference these kernels must match).
Importing this module needs Triton; `save_ros.core.cuda.reducer` imports it only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048  # elements per loop step of one program: 16 B loads, 8 warps


@triton.jit
def _minmax_kernel(ptrs, lens, out, ref, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Row pid of out = (min, max) over chunk pid; NaN counts as both -inf and +inf."""
    pid = tl.program_id(0)
    base = tl.load(ptrs + pid).to(tl.pointer_type(ref.dtype.element_ty))
    n = tl.load(lens + pid)
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    hi = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(base + offs, mask=m, other=0.0).to(tl.float32)
        nan = x != x
        # a NaN must fail any range check: widen both ends to infinity
        lo = tl.where(m, tl.minimum(lo, tl.where(nan, float("-inf"), x)), lo)
        hi = tl.where(m, tl.maximum(hi, tl.where(nan, float("inf"), x)), hi)
    tl.store(out + 2 * pid, tl.min(lo, 0))
    tl.store(out + 2 * pid + 1, tl.max(hi, 0))


@triton.jit
def _checksum_kernel(ptrs, lens, out, ref, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Row pid of out = (sum v, sum (i+1) v) over the integer view v of chunk pid."""
    pid = tl.program_id(0)
    base = tl.load(ptrs + pid).to(tl.pointer_type(ref.dtype.element_ty))
    n = tl.load(lens + pid)
    s1 = tl.zeros([BLOCK], tl.int64)
    s2 = tl.zeros([BLOCK], tl.int64)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        v = tl.load(base + offs, mask=m, other=0).to(tl.int64)
        s1 += v
        s2 += v * (offs + 1).to(tl.int64)
    tl.store(out + 2 * pid, tl.sum(s1, 0))
    tl.store(out + 2 * pid + 1, tl.sum(s2, 0))


_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_REFS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _ref(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor whose pointer type tells the kernel the element type it reads."""
    key = (device, dtype)
    if key not in _REFS:
        _REFS[key] = torch.zeros(1, dtype=dtype, device=device)
    return _REFS[key]


def launch_minmax(
    ptrs: torch.Tensor, lens: torch.Tensor, out: torch.Tensor, dtype: torch.dtype, chunk: int
) -> None:
    """Enqueue the min/max kernel on the current stream (rows = ptrs.numel())."""
    ref = _ref(out.device, dtype)
    grid = (ptrs.numel(),)
    _minmax_kernel[grid](ptrs, lens, out, ref, CHUNK=chunk, BLOCK=min(BLOCK, chunk), num_warps=8)


def launch_checksum(
    ptrs: torch.Tensor, lens: torch.Tensor, out: torch.Tensor, dtype: torch.dtype, chunk: int
) -> None:
    """Enqueue the checksum kernel on the current stream; `dtype` is the float dtype viewed."""
    ref = _ref(out.device, _INT_VIEW[dtype])
    grid = (ptrs.numel(),)
    _checksum_kernel[grid](
        ptrs, lens, out, ref, CHUNK=chunk, BLOCK=min(BLOCK, chunk), num_warps=8
    )


@triton.jit
def _checksum_rot_kernel(ptrs, lens, out, ref, counter, K, CHUNK: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Checksum rows pid with pid % K == counter % K (this replay's slice); others untouched."""
    pid = tl.program_id(0)
    active = (pid % K) == (tl.load(counter) % K)
    base = tl.load(ptrs + pid).to(tl.pointer_type(ref.dtype.element_ty))
    n = tl.where(active, tl.load(lens + pid), 0)
    s1 = tl.zeros([BLOCK], tl.int64)
    s2 = tl.zeros([BLOCK], tl.int64)
    for start in range(0, n, BLOCK):  # no trip for rows of other slices
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        v = tl.load(base + offs, mask=m, other=0).to(tl.int64)
        s1 += v
        s2 += v * (offs + 1).to(tl.int64)
    tl.store(out + 2 * pid, tl.sum(s1, 0), mask=active)
    tl.store(out + 2 * pid + 1, tl.sum(s2, 0), mask=active)


@triton.jit
def _verify_kernel(stats, low, high, n_act, sums, golden, n_w, counter, K, flags,
                   BLOCK: tl.constexpr):
    """Count range violations (flags[0]) and checksum mismatches of this slice (flags[1])."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ma = offs < n_act
    mn = tl.load(stats + 2 * offs, mask=ma, other=0.0)
    mx = tl.load(stats + 2 * offs + 1, mask=ma, other=0.0)
    lo = tl.load(low + offs, mask=ma, other=0.0)
    hi = tl.load(high + offs, mask=ma, other=0.0)
    bad = ma & ((mn < lo) | (mx > hi) | (mn != mn) | (mx != mx))
    tl.atomic_add(flags, tl.sum(bad.to(tl.int32), 0))
    mw = (offs < n_w) & ((offs % K) == (tl.load(counter) % K))
    a1 = tl.load(sums + 2 * offs, mask=mw, other=0)
    a2 = tl.load(sums + 2 * offs + 1, mask=mw, other=0)
    g1 = tl.load(golden + 2 * offs, mask=mw, other=0)
    g2 = tl.load(golden + 2 * offs + 1, mask=mw, other=0)
    badw = mw & ((a1 != g1) | (a2 != g2))
    tl.atomic_add(flags + 1, tl.sum(badw.to(tl.int32), 0))


def launch_checksum_rot(ptrs: torch.Tensor, lens: torch.Tensor, out: torch.Tensor,
                        dtype: torch.dtype, chunk: int, counter: torch.Tensor, k: int) -> None:
    """Enqueue the rotating-slice checksum (one program per row, 1/k of them work)."""
    ref = _ref(out.device, _INT_VIEW[dtype])
    _checksum_rot_kernel[(ptrs.numel(),)](ptrs, lens, out, ref, counter, k, CHUNK=chunk,
                                          BLOCK=min(BLOCK, chunk), num_warps=8)


def launch_verify(stats: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                  sums: torch.Tensor, golden: torch.Tensor, counter: torch.Tensor, k: int,
                  flags: torch.Tensor) -> None:
    """Enqueue the on-device comparison of every row; flags must be zero before."""
    n_act, n_w = stats.shape[0], sums.shape[0]
    grid = (triton.cdiv(max(n_act, n_w), 1024),)
    _verify_kernel[grid](stats, low, high, n_act, sums, golden, n_w, counter, k, flags,
                         BLOCK=1024, num_warps=4)
