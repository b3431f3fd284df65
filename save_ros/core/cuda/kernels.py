"""The fused Triton kernel of the CUDA backend: exact per-channel range checks, one launch each.

Each program reads one chunk's device address and length from two small tables (filled once after
a CUDA graph is captured, since addresses inside a graph's pool never move), finds the channel of
every element from the chunk's position in its tensor, compares the element with that channel's
analysed bounds and writes one row of the output: how many elements are out of range (NaN always
is). The torch reference this kernel must match: `core.cuda.range_check.violations_torch`.
Importing this module needs Triton; `save_ros.core.cuda.range_check` imports it only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048  # elements per loop step of one program


@triton.jit
def _range_kernel(ptrs, lens, starts, inner, nch, boff, low, high, out, ref,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """out[pid] = elements of chunk pid outside [low, high] of their channel (NaN: outside).

    The channel of element e of a tensor is (e // inner) % nch, its bounds low[boff + ch]; all
    indices are int32 (a 64-bit division per element would make the kernel compute-bound).
    """
    pid = tl.program_id(0)
    base = tl.load(ptrs + pid).to(tl.pointer_type(ref.dtype.element_ty))
    n = tl.load(lens + pid)
    s = tl.load(starts + pid)
    inn = tl.load(inner + pid)
    nc = tl.load(nch + pid)
    bo = tl.load(boff + pid)
    bad = tl.zeros([BLOCK], tl.int32)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(base + offs, mask=m, other=0.0).to(tl.float32)
        e = s + offs
        ch = e // inn
        ch = ch - (ch // nc) * nc
        lo = tl.load(low + bo + ch, mask=m, other=0.0)
        hi = tl.load(high + bo + ch, mask=m, other=0.0)
        out_of = (x < lo) | (x > hi) | (x != x)
        bad += (m & out_of).to(tl.int32)
    tl.store(out + pid, tl.sum(bad, 0))


_REFS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def ref_tensor(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor whose pointer type tells the kernel the element type it reads."""
    key = (device, dtype)
    if key not in _REFS:
        _REFS[key] = torch.zeros(1, dtype=dtype, device=device)
    return _REFS[key]


def launch_range(tables: dict[str, torch.Tensor], low: torch.Tensor, high: torch.Tensor,
                 out: torch.Tensor, dtype: torch.dtype, chunk: int) -> None:
    """Enqueue the range kernel on the current stream (one program per row of `out`)."""
    ref = ref_tensor(out.device, dtype)
    grid = (out.numel(),)
    _range_kernel[grid](tables["ptrs"], tables["lens"], tables["starts"], tables["inner"],
                        tables["nch"], tables["boff"], low, high, out, ref, CHUNK=chunk,
                        BLOCK=min(BLOCK, chunk), num_warps=8)
