"""Memory checksums of activations: the tensor's bits summed when written and after its last read.

The fault model is a bit flip in *memory*. An activation can only go wrong between its
producer's write and its last consumer's read, so the wrap-around integer sum of its bit pattern
taken right after the write and again after the last read catches every single flip in between,
with no re-computation: a flip of bit b changes one word by +-2^b, and 2^b is not a multiple of
2^w for the w-bit accumulator (b < w). Two flips cancel only if they hit the same bit position of
two words of the same tensor in opposite directions within one inference.

`bitsum(t)` is that sum: one read of the tensor, exact and order-independent (integer addition
modulo 2^w is associative, so threads and vector lanes may add in any order). fp32 words are
summed as int32 (modulo 2^32); fp16 / bf16 as int16 pairs packed into int32 words where the
layout allows (a flip of bit b of a half word is bit b or b + 16 of the int32 word), else as
int16 modulo 2^16; int8 as int8 modulo 2^8. float64 as int64.

`produce_and_sum(module, *args)` runs a module the way `nn.Module.__call__` does (pre-hooks,
forward, forward hooks) but takes the write-time sum between the forward and the hooks: a hook
that changes the output (a fault injector, a user's hook) acts on memory after the write, as a
flip in memory does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_WORD = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
         torch.float64: torch.int64, torch.int8: torch.int8, torch.uint8: torch.int8,
         torch.int32: torch.int32, torch.int64: torch.int64, torch.int16: torch.int16}


def summable(t: Any) -> bool:
    """True when `t` is a tensor whose bits `bitsum` can sum."""
    return isinstance(t, torch.Tensor) and t.dtype in _WORD and t.numel() > 0


def bitsum(t: torch.Tensor) -> torch.Tensor:
    """Integer sum of the tensor's bit pattern: a 0-dim int64 tensor, no host sync.

    On the CPU the words are added modulo 2^w in their own width (torch's int64 accumulation of
    int32 words is a slow path there) and widened after; on CUDA one int64 reduction kernel.
    Either way a single flip changes the result; write and read sums use the same path.
    """
    word = _WORD[t.dtype]
    if word is torch.int16 and t.is_contiguous() and t.numel() % 2 == 0:
        v = t.view(-1).view(torch.int32)  # two halves a word: half the adds
        word = torch.int32
    else:
        v = t.view(word) if t.dtype != word else t
    if v.is_cuda:
        return v.sum(dtype=torch.int64)
    return v.sum(dtype=word).to(torch.int64)


def produce_and_sum(module: nn.Module, *args: Any) -> tuple[Any, torch.Tensor]:
    """(module(*args), bitsum of the output as the forward wrote it, before forward hooks)."""
    for hook in tuple(module._forward_pre_hooks.values()):
        r = hook(module, args)
        if r is not None:
            args = r if isinstance(r, tuple) else (r,)
    out = module.forward(*args)
    s = bitsum(out)
    for hook in tuple(module._forward_hooks.values()):
        r = hook(module, args, out)
        if r is not None:
            out = r
    return out, s
