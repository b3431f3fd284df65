"""A real Ray cluster of several node processes on this machine, for tests.

Each node is `ray start ... --block` in a session of its own, so killing its process group
kills that node (raylet, agents and its worker processes) and nothing else on the machine;
`stop()` does that for every node the cluster started. Ports are picked free per node (several
nodes share one host), and the temp dir is our own, short (Ray's socket paths must fit 107
characters).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
READY = "block forever"  # what `ray start --block` logs once the node is up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session(sid: int) -> list[int]:
    """The live processes of session `sid` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _node_ports() -> list[str]:
    opts = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port")
    return [x for o in opts for x in (o, str(free_port()))]


class LocalRayCluster:
    """A head (no CPUs of its own: tasks run on workers) and worker nodes, as processes."""

    def __init__(self, workers: int = 2, cpus_per_worker: int = 1) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sr-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
                        # notice a dead node within seconds, not the default half minute
                        RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                        RAY_health_check_failure_threshold="3")
        self.nodes: list[subprocess.Popen] = []
        self.workers, self.cpus = workers, cpus_per_worker

    def _start(self, args: list[str], name: str, timeout: float) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        for _ in range(2):  # a loaded machine can miss Ray's fixed 30 s node start window
            with open(log, "w") as out:
                proc = subprocess.Popen([RAY, "start", *args, "--block",
                                         "--disable-usage-stats", *_node_ports()],
                                        stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
            end = time.monotonic() + timeout
            while time.monotonic() < end and proc.poll() is None:
                if READY in log.read_text(errors="replace"):
                    self.nodes.append(proc)
                    return proc
                time.sleep(0.2)
            self._kill(proc)
        raise RuntimeError(f"ray node {name} did not start: {log.read_text()[-2000:]}")

    def start(self, timeout: float = 90.0) -> LocalRayCluster:
        """Start the head, then each worker node; returns self once every node is up."""
        try:
            self._start(["--head", "--port", str(self.port), "--num-cpus", "0",
                         "--include-dashboard", "false", "--temp-dir", str(self.tmp),
                         "--object-store-memory", str(80 * 2**20)], "head", timeout)
            for i in range(self.workers):
                self._start(["--address", self.address, "--num-cpus", str(self.cpus),
                             "--object-store-memory", str(80 * 2**20)], f"worker{i}", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGKILL every process of the node's session (Ray's workers have process groups of
        their own, but stay in the session of the `ray start` we made its leader)."""
        for _ in range(50):
            pids = _session(proc.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        proc.wait(30)

    def node_of(self, pid: int) -> int | None:
        """The index of the node (0 = head) whose session holds `pid`, or None."""
        try:
            session = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((i for i, p in enumerate(self.nodes) if p.pid == session), None)

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of node `index` (1.. = workers), as if its host died."""
        self._kill(self.nodes[index])

    def stop(self) -> None:
        """Kill every node this cluster started and remove its temp dir."""
        for proc in reversed(self.nodes):
            self._kill(proc)
        self.nodes.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
