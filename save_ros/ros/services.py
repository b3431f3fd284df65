"""`SaveNode`'s std_srvs/Trigger services: `~/recover`, `~/reanalyze`, `~/inject_faults`,
`~/inject_crash`.

Every request is answered (success, or a refusal whose message says why and what to do):
- requests wait in DDS up to `services.qos_depth` (default 1000; rclpy's default, 10, lost
  all but 10 of a burst of 300 requests from separate clients, issue 19);
- `~/reanalyze` runs on the calling executor thread of a reentrant group: while one
  re-analysis runs, a second request is refused at once ("busy: ..."), never queued behind it;
  inferences meanwhile run, and are verified, under the plan in force until the new one is
  swapped in whole (see `pipeline` for how many may wait for a verdict);
- `~/recover`, `~/inject_*` share one mutually exclusive group (one at a time, in order).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

import torch
from rclpy.qos import QoSProfile
from std_srvs.srv import Trigger

from save_ros.ros import params
from save_ros.ros.backend import BackendError


def release_freed_memory() -> None:
    """Give the memory a re-analysis freed back to the OS (glibc `malloc_trim`; elsewhere a
    no-op). Selection allocates and frees some 100 MB per run on whichever executor thread
    serves the request; glibc kept the freed pages in per-thread arenas, and the node's RSS rose
    by 143 MB over 20 re-analyses under a 100 Hz stream, although no Python object outlived
    them (issue 19)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        pass


class NodeServices:
    """The Trigger services of one SaveNode (created on it at construction)."""

    def __init__(self, node) -> None:
        self.node = node
        self.inject_seed = node.cfg.fault_injection.seed
        self._reanalysis = threading.Lock()  # one re-analysis at a time (service or live)
        self._since = 0.0
        qos = QoSProfile(depth=node.cfg.services_qos_depth)
        services = [("~/recover", self.recover, node.services_group),
                    ("~/reanalyze", self.reanalyze, node.reanalysis_group)]
        if node.cfg.fault_injection.enabled:
            services += [("~/inject_faults", self.inject, node.services_group),
                         ("~/inject_crash", self.inject_crash, node.services_group)]
        for name, cb, group in services:
            node.create_service(Trigger, name, cb, qos_profile=qos, callback_group=group)

    def _call(self, resp: Trigger.Response, fn) -> Trigger.Response:
        backend = self.node.backend
        if backend is None:
            resp.success, resp.message = False, "not configured: configure the node first"
            return resp
        try:
            resp.message = fn(backend)
            resp.success = True
        except BackendError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def recover(self, _req, resp: Trigger.Response) -> Trigger.Response:
        """Restore every normal-memory tensor from its golden copy."""
        self._call(resp, lambda b: b.recover())
        if resp.success:
            self.node.health.on_recovered()
        self.node.publish_diagnostics()
        return resp

    def reanalyze(self, _req, resp: Trigger.Response) -> Trigger.Response:
        """Redo Selection and Allocation (and update the analysis cache); refused at once
        while another re-analysis runs."""
        if not self._reanalysis.acquire(blocking=False):
            resp.success = False
            resp.message = (f"busy: a re-analysis started {time.monotonic() - self._since:.1f} "
                            "s ago is still running (inferences use the current plan until it "
                            "ends); call again once it has answered for another one")
            return resp
        try:
            self._since = time.monotonic()
            return self._call(resp, lambda b: b.reanalyze())
        finally:
            release_freed_memory()
            self._reanalysis.release()

    def live_calibration(self, samples: torch.Tensor) -> None:
        """Redo Selection with the first N live inputs (a thread of its own)."""
        node = self.node
        backend = node.backend
        if backend is None:
            return
        try:
            with self._reanalysis:
                self._since = time.monotonic()
                msg = backend.reanalyze(samples)
                release_freed_memory()
            node.health.calibration = f"Selection redone with {len(samples)} live inputs"
            node.get_logger().info(f"live calibration ({len(samples)} inputs): {msg}")
        except BackendError as exc:
            node.health.calibration = f"live calibration failed: {exc}"
            node.get_logger().error(f"live calibration failed: {exc}")

    def inject(self, _req, resp: Trigger.Response) -> Trigger.Response:
        """Flip bits in normal-memory tensors per the fault_injection.* parameters."""
        fi = params.read(self.node).fault_injection
        seed = self.inject_seed
        self._call(resp, lambda b: b.inject(fi.count, fi.target, seed, fi.bits))
        if resp.success:
            self.node.health.on_injected(fi.count)
            self.inject_seed += 1
        return resp

    def inject_crash(self, _req, resp: Trigger.Response) -> Trigger.Response:
        """Make the active inference worker fail (fault_injection.crash_kind) on its next input."""
        kind = params.read(self.node).fault_injection.crash_kind
        return self._call(resp, lambda b: b.inject_crash(kind))
