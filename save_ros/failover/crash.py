"""Crash injection: make the calling (worker) process fail the way a GPU fault makes it fail.

Each kind is real, not simulated: SEGFAULT reads address 0 (the kernel sends SIGSEGV), ABORT
raises SIGABRT as a failed C++ assertion does, CUDA_ASSERT triggers a device-side assert that
poisons the CUDA context, HANG blocks forever like a stuck kernel or driver call.
"""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import time

from save_ros.errors import UserError


class CrashKind(enum.Enum):
    """How an injected fault ends (or stalls) a worker."""

    SEGFAULT = "segfault"  # invalid memory read -> SIGSEGV
    ABORT = "abort"  # SIGABRT
    EXIT = "exit"  # os._exit(1): the process quits without cleanup
    KILL = "kill"  # SIGKILL, as the OOM killer does
    HANG = "hang"  # never answers again; only the watchdog gets it back
    CUDA_ASSERT = "cuda_assert"  # device-side assert: the CUDA context is dead (CUDA only)


class CrashUnavailableError(UserError, RuntimeError):
    """The crash kind needs something this process lacks (CUDA_ASSERT without CUDA)."""


def perform(kind: CrashKind, device: str = "cpu") -> None:
    """Fail now, in this process; returns only for CUDA_ASSERT, which raises a CUDA error."""
    if kind is CrashKind.SEGFAULT:
        ctypes.string_at(0)  # reading address 0 is a real segmentation fault
    elif kind is CrashKind.ABORT:
        os.abort()
    elif kind is CrashKind.EXIT:
        os._exit(1)
    elif kind is CrashKind.KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind is CrashKind.HANG:
        while True:  # sleep releases the GIL: the worker's other threads still run
            time.sleep(3600)
    elif kind is CrashKind.CUDA_ASSERT:
        import torch

        if not (device.startswith("cuda") and torch.cuda.is_available()):
            raise CrashUnavailableError("cuda_assert needs a worker on a CUDA device")
        table = torch.zeros(4, device=device)
        index = torch.tensor([1 << 20], device=device)
        table[index].sum().item()  # out-of-bounds gather: device-side assert, sticky error
    # SIGSEGV/SIGABRT delivery is synchronous, so reaching here means the kind is unknown.
    raise CrashUnavailableError(f"crash kind {kind!r} did not end the process")
