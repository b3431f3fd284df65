"""`CudaProtectedModel`: a model run as a CUDA graph with SAVE's checks captured beside it.

One inference = replay of the forward graph, in which the tapped activations are reduced to
(min, max) rows on a side stream that forks from the forward every few layers (so the checks
overlap the layers that follow), plus, per the checksum schedule, replay of a second graph on a
third stream that computes the exact weight checksums while the forward runs. Two small
asynchronous copies bring the rows to pinned host memory; the CPU compares them with the ranges
and golden sums. On a detection the corrupted weights are restored from golden copies (device
memory treated as reliable, or pinned host memory) and the graph is re-run and re-verified.

The model and its checks are built by `save_ros.gpu.instrument.InstrumentedModel`; this module
runs one inference after another on it: submit, collect the rows, verify, repair. The same class
runs eagerly (no graph) and on the CPU with the torch reference reductions, which is how its
logic is unit-tested on machines without a GPU.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from save_ros.gpu.instrument import (
    ALL,
    FUSED,
    GpuConfigError,
    GpuProtectConfig,
    InstrumentedModel,
)
from save_ros.gpu.verdict import GpuFaultStatus, RowVerdict

# GpuProtectConfig and GpuConfigError are defined with the instrumented model; callers import
# them from here, next to the class they configure
__all__ = ["CudaProtectedModel", "GpuConfigError", "GpuInferenceResult", "GpuProtectConfig"]


@dataclass
class GpuInferenceResult:
    """An output and its fault status (or, with wait=False, a Future of the status)."""

    output: torch.Tensor
    status: GpuFaultStatus | None = None
    verdict: concurrent.futures.Future | None = None

    @property
    def verified(self) -> bool:
        """True when the verdict is in and says verified."""
        return self.status is not None and self.status.verified


class CudaProtectedModel(InstrumentedModel):
    """SAVE-protected inference on a CUDA device (or eagerly on the CPU, for tests)."""

    # -- inference ----------------------------------------------------------------------------
    def _submit(self, cs: int | None) -> torch.Tensor:
        """Run forward (+ checksum slice `cs`) on the static input; row copies are enqueued."""
        if self._cuda:
            cur = torch.cuda.current_stream()
            self._main.wait_stream(cur)  # the new input and every restore enqueued before
            with torch.cuda.stream(self._main):
                if self._graph is not None:
                    if self._fused is not None:
                        self._last_slice = self._replays % self._fused.k
                    self._graph.replay()
                    self._replays += 1
                    out = self._static_out
                else:
                    out = self._forward(self._static_in, capture=False)
                if cs == FUSED:  # 8 bytes; the rows only when a flag is set
                    self._fused.flags_host.copy_(self._fused.flags, non_blocking=True)
                else:
                    self._stats_host.copy_(self._stats_dev, non_blocking=True)
                self._done.record()
            if cs is not None and cs != FUSED:  # after the forward: the forward is queued first
                r0, r1 = self._rows(cs)
                self._cs_stream.wait_stream(cur)
                with torch.cuda.stream(self._cs_stream):
                    if cs in self._cs_graphs:
                        self._cs_graphs[cs].replay()
                    else:
                        self._launch_checksum(cs)
                    self._cs_host[r0:r1].copy_(self._cs_dev[r0:r1], non_blocking=True)
                    self._cs_done.record()
            cur.wait_stream(self._main)  # the caller's stream sees the output
            self._last_out = out
            return out
        out = self._forward(self._static_in, capture=False)
        self._stats_host.copy_(self._stats_dev)
        if cs is not None:
            self._launch_checksum(cs)
            self._cs_host.copy_(self._cs_dev)
        self._last_out = out
        return out

    def _collect(self, cs: int | None) -> RowVerdict:
        """Wait for the rows of the last submit and compare them on the CPU."""
        if cs == FUSED:
            self._done.synchronize()
            rows = self._rows(FUSED)
            if not self._fused.flags_host.numpy().any():
                return RowVerdict(np.empty(0, np.int64), np.empty(0, np.int64),
                                  self.act_plan.n_chunks + len(rows))
            self._stats_host.copy_(self._stats_dev)
            sums = self._fused.sums.cpu().numpy()
            return self.verifier.compare(self._stats_host.numpy(), sums, rows)
        if self._cuda:
            self._done.synchronize()
            if cs is not None:
                self._cs_done.synchronize()
        sums = self._cs_host.numpy() if cs is not None else None
        return self.verifier.compare(self._stats_host.numpy(), sums, self._rows(cs))

    def _restore(self, names: Sequence[str]) -> None:
        """Copy golden values over the named live weights (stream-ordered before re-runs)."""
        for n in names:
            self._live[n].copy_(self._golden[n], non_blocking=True)

    def _finish(self, cs: int | None, t0: float, out: torch.Tensor) -> GpuFaultStatus:
        """Verify the submitted run; on a detection restore, re-run and re-verify."""
        verdict = self._collect(cs)
        t_detect = time.perf_counter()
        rows = self._rows(cs)
        n_rows = 0 if rows is None else (len(rows) if isinstance(rows, np.ndarray)
                                         else rows[1] - rows[0])
        status = GpuFaultStatus(verified=verdict.clean, checks_run=verdict.rows,
                                checksum_run=cs is not None,
                                checksum_share=n_rows / self.weight_plan.n_chunks)
        status.detect_s = t_detect - t0
        if not verdict.clean:
            status.detections = self.verifier.detections(verdict, self._stats_host.numpy())
            if self.config.keep_failed_output:
                status.failed_output = self._last_out.clone()
            self._repair(status, verdict, cs == ALL)
            status.repair_s = time.perf_counter() - t_detect
        status.latency_s = time.perf_counter() - t0
        return status

    def _repair(self, status: GpuFaultStatus, verdict: RowVerdict, had_full: bool) -> None:
        """Localise (full checksum now if it did not run), restore, re-run until clean."""
        if not had_full:  # an alarm with part or none of the weights checked: check them all
            self._submit(ALL)
            verdict = self._collect(ALL)
        for _ in range(self.config.max_reruns):
            bad = self.verifier.corrupted_weights(verdict)
            self._restore(bad)
            status.repaired.extend(n for n in bad if n not in status.repaired)
            self._submit(ALL)
            status.reruns += 1
            status.rerun_from = "input"
            verdict = self._collect(ALL)
            if verdict.clean:
                status.verified = True
                return
        status.verified = False
        status.detail = ("range alarm persists with golden weights: input outside the analysed "
                         "ranges, or the ranges are too tight") if not verdict.checksum_rows.size \
            else "weights still differ from golden copies after restore"

    def infer(self, x: torch.Tensor, wait: bool = True) -> GpuInferenceResult:
        """Run one protected inference; with wait=False the status comes as a Future.

        The output tensor is the graph's static output buffer: it stays valid until the next
        call (copy it to keep it), and a repair re-runs into the same buffer.
        """
        self._drain()
        with self._lock:
            if x.shape != self._static_in.shape:
                raise GpuConfigError(f"input shape {tuple(x.shape)} differs from the captured "
                                     f"{tuple(self._static_in.shape)}; protect one model per shape")
            t0 = time.perf_counter()
            self._static_in.copy_(x, non_blocking=True)
            cs = self._next_cs()
            out = self._submit(cs)
            if wait:
                status = self._finish(cs, t0, out)
                return GpuInferenceResult(self._last_out, status)
            fut = self._executor.submit(self._locked_finish, cs, t0, out)
            self._pending = fut
            return GpuInferenceResult(out, None, fut)

    def _next_cs(self) -> int | None:
        """What the next inference checksums: FUSED, a slice, or nothing."""
        if self.config.checksum_every <= 0:
            return None
        if self._fused is not None:
            return FUSED
        cs = self._count % len(self._cs_slices)
        self._count += 1
        return cs

    def _drain(self) -> None:
        """Wait for the previous async verdict (never while holding the lock: it needs it)."""
        pending = self._pending
        if pending is not None:
            pending.result()

    def _locked_finish(self, cs: bool, t0: float, out: torch.Tensor) -> GpuFaultStatus:
        """_finish under the lock (verifier thread)."""
        with self._lock:
            return self._finish(cs, t0, out)

    def detect(
        self, x: torch.Tensor, with_checksum: bool = True
    ) -> tuple[torch.Tensor, RowVerdict]:
        """One run with every check (the full checksum) and no repair: (output, raw verdict)."""
        self._drain()
        with self._lock:
            self._static_in.copy_(x, non_blocking=True)
            cs = ALL if with_checksum else None
            self._submit(cs)
            verdict = self._collect(cs)
            return self._last_out, verdict

    def check_weights(self) -> list[str]:
        """Run the weight checksum now; names of weights that differ from their golden copies."""
        self._drain()
        with self._lock:
            if self._cuda:
                torch.cuda.current_stream().synchronize()
                with torch.cuda.stream(self._cs_stream):
                    self._launch_checksum()
                    self._cs_host.copy_(self._cs_dev, non_blocking=True)
                self._cs_stream.synchronize()
            else:
                self._launch_checksum()
                self._cs_host.copy_(self._cs_dev)
            sums = self._cs_host.numpy()
            rows = np.flatnonzero((sums != self._golden_rows).any(axis=1))
            return self.weight_plan.names_of(rows) if rows.size else []

    def recover(self) -> list[str]:
        """Restore every weight that differs from its golden copy; return their names."""
        bad = self.check_weights()
        with self._lock:
            self._restore(bad)
            if self._cuda:
                torch.cuda.current_stream().synchronize()
        return bad

    def normal_tensors(self) -> list[str]:
        """Weights in normal (fault-prone) memory: what an injector may flip."""
        return list(self.weight_names)

    def live(self, name: str) -> torch.Tensor:
        """The live (injectable) weight tensor `name`."""
        return self._live[name]

    def close(self) -> None:
        """Stop the verifier thread."""
        self._executor.shutdown(wait=True)
