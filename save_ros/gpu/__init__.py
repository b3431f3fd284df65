"""CUDA execution path of SAVE: device-side range statistics, weight checksums, CUDA graphs.

`CudaProtectedModel` (in `save_ros.gpu.runtime`) runs a model as a CUDA graph with its checks
captured into the same graph on a side stream: per-chunk min/max of the checked activations and
a position-weighted integer checksum of every weight, written into small preallocated buffers and
copied once to pinned host memory, where a CPU verifier compares them with the analysed ranges
and the golden checksums. Importing this package needs only torch; CUDA, and Triton for the
fused kernels, are needed only when a model is protected on a GPU (`require_cuda()` says why not).
"""

from __future__ import annotations

import torch


class CudaUnavailableError(RuntimeError):
    """The CUDA path was asked for on a machine (or torch build) without a usable CUDA device."""


def cuda_available() -> bool:
    """True when torch sees at least one CUDA device."""
    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def require_cuda() -> torch.device:
    """Return the current CUDA device, or raise CudaUnavailableError with what to do instead."""
    if not cuda_available():
        raise CudaUnavailableError(
            f"no CUDA device is visible to torch {torch.__version__} "
            f"(torch.version.cuda={torch.version.cuda}); use the CPU path "
            "(save_ros.core.protect.protect) or run on a machine with an NVIDIA GPU"
        )
    return torch.device("cuda", torch.cuda.current_device())


def triton_available() -> bool:
    """True when Triton imports and CUDA is usable (the fused multi-tensor kernels need both)."""
    if not cuda_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
