"""The CUDA backend of `protect()`: the same contract, with the checks captured in a CUDA graph.

`save_ros.core.protect.protect()` returns a `CudaProtectedModel` (`core.cuda.runtime`) when the
example input is on a CUDA device. It is a `ProtectedModel` whose inference is one replay of a
CUDA graph holding the forward pass and, on side streams, every planned check (per-channel range
checks, DMR re-computation or ABFT checksums, weight checksums, the input box) reduced to flags
copied to pinned host memory. Clean flags are a verdict at once; a raised flag goes to the same
verifier queue as on the CPU (`core.verify.verifier`), where Edit restores the weights
(`core.edit`) and the graph is replayed to tell a transient fault from the input's doing.
"""

from __future__ import annotations

import torch


def cuda_available() -> bool:
    """True when torch sees at least one CUDA device."""
    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def triton_available() -> bool:
    """True when Triton imports and CUDA is usable (the multi-tensor kernels need both)."""
    if not cuda_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
