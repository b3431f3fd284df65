"""Failover runtime: crashes, hangs and poison inputs of a real worker process lose no request.

Every test runs real worker processes (forkserver, torch preloaded) on the bundled digits CNN
and compares every answer bit for bit with the fault-free output computed in this process.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from torch import nn

from save_ros import models
from save_ros.core import bits
from save_ros.failover import (
    ClosedError,
    ConfigError,
    CrashKind,
    CrashUnavailableError,
    EventKind,
    FailoverConfig,
    FailoverModel,
    ModelSource,
    QueueFullError,
    RequestDroppedError,
    WorkerStartError,
    remote,
)
from save_ros.failover import crash as crash_module

MODEL = "digits_cnn"
POISON = -1000.0  # an input value that makes the poisoned model segfault


@functools.cache
def _reference_model() -> nn.Module:
    return models.load(MODEL)


def reference(x: torch.Tensor) -> torch.Tensor:
    """The fault-free output, computed here with the worker's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return _reference_model()(x)
    finally:
        torch.set_num_threads(threads)


class _Samples:
    """Test digits, loaded on first use (workers import this module for `poisoned_cnn`)."""

    @functools.cached_property
    def x(self) -> torch.Tensor:
        return models.dataset(MODEL, "test")[0][:48]

    def __getitem__(self, index: slice) -> torch.Tensor:
        return self.x[index]


_SAMPLES = _Samples()


class _Poisoned(nn.Module):
    """The digits CNN, except that an input holding POISON crashes the process (a kernel bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = models.load(MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == POISON).any()):
            crash_module.perform(CrashKind.SEGFAULT)
        return self.inner(x)


def poisoned_cnn() -> nn.Module:
    """Factory the worker imports by name (this module is on the worker's sys.path)."""
    return _Poisoned()


class Recorder:
    """Collects events from the callback thread."""

    def __init__(self) -> None:
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: EventKind) -> list:
        with self.lock:
            return [e for e in self.events if e.kind is kind]

    def wait_for(self, kind: EventKind, count: int, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.of(kind)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def served(recorder):
    config = FailoverConfig(hang_timeout_s=1.5, queue_size=4)
    model = FailoverModel.for_model(MODEL, config, on_event=recorder)
    yield model
    pids = model.worker_pids()
    model.close()
    assert pids and not [p for p in pids if alive(p)], "close() left worker processes"


@pytest.mark.parametrize("kind", [CrashKind.SEGFAULT, CrashKind.ABORT, CrashKind.EXIT,
                                  CrashKind.KILL])
def test_crash_is_answered_by_the_warm_standby(served, recorder, kind):
    assert served.wait_ready(60)
    x = _SAMPLES[:4]
    before = len(recorder.of(EventKind.FAILOVER))
    standby = served.standby_pids[0]
    crashed = served.inject_crash(kind)
    result = served.infer(x, timeout=60)
    assert torch.equal(result.output, reference(x))
    assert result.attempts == 2 and result.worker_pid == standby
    failover = recorder.wait_for(EventKind.FAILOVER, before + 1)[-1]
    assert (failover.pid, failover.new_pid, failover.warm) == (crashed, standby, True)
    crash_event = [e for e in recorder.of(EventKind.CRASH) if e.pid == crashed][-1]
    assert crash_event.is_error
    expected = {CrashKind.SEGFAULT: "SIGSEGV", CrashKind.ABORT: "SIGABRT",
                CrashKind.EXIT: "exit code 1", CrashKind.KILL: "SIGKILL"}[kind]
    assert expected in crash_event.detail
    # a fatal signal is seen from the worker's fault handler, before the kernel's teardown
    assert ("fault handler" in crash_event.detail) == (kind in (CrashKind.SEGFAULT,
                                                                 CrashKind.ABORT))
    assert crash_event.detected_at is not None
    times = result.timeline  # one monotonic clock across processes
    assert (times["submitted"] <= times["sent"] <= times["worker_received"]
            <= times["worker_done"] <= times["answered"])
    assert times["detected"] == crash_event.detected_at <= times["sent"]  # re-sent after it
    assert times["crashed"] <= times["detected"]
    deadline = time.monotonic() + 10
    while alive(crashed) and time.monotonic() < deadline:  # reaped in the background
        time.sleep(0.01)
    assert not alive(crashed) and os.getpid() > 0  # the worker is gone, we are not


def test_stream_through_repeated_crashes_loses_nothing(served, recorder):
    assert served.wait_ready(60)
    crashes = served.stats()["crash"]
    completed: list[int] = []  # request ids in the order their answers arrived

    def submit(i: int):
        future = served.submit(_SAMPLES[i : i + 1])
        future.add_done_callback(lambda f: completed.append(f.result().request_id))
        return future

    futures = [submit(i) for i in range(4)]
    served.inject_crash(CrashKind.SEGFAULT)  # hits whichever request the worker reads next
    for i in range(4, 48):
        futures.append(submit(i))
        if i in (16, 30):  # back to back: the standby may not be ready yet (cold path)
            deadline = time.monotonic() + 30
            while served.active_pid is None and time.monotonic() < deadline:
                time.sleep(0.01)
            served.inject_crash(CrashKind.EXIT, when="now")
    results = [f.result(timeout=120) for f in futures]
    for i, result in enumerate(results):
        assert torch.equal(result.output, reference(_SAMPLES[i : i + 1])), f"request {i}"
    # Re-submitted requests go first, in their order: answers arrive in submission order.
    assert completed == [r.request_id for r in results]
    assert served.stats()["crash"] >= crashes + 3


def test_hang_is_cut_by_the_watchdog_and_queue_is_bounded(served, recorder):
    assert served.wait_ready(60)
    hangs = len(recorder.of(EventKind.HANG))
    hung = served.inject_crash(CrashKind.HANG)
    accepted = []
    with pytest.raises(QueueFullError, match="queue_size"):
        for i in range(10):  # 1 in the hung worker + queue_size waiting, then full
            accepted.append((i, served.submit(_SAMPLES[i : i + 1], block=False)))
    assert len(accepted) <= 1 + served.config.queue_size + 1
    for i, future in accepted:
        assert torch.equal(future.result(timeout=60).output, reference(_SAMPLES[i : i + 1]))
    hang = recorder.wait_for(EventKind.HANG, hangs + 1)[-1]
    assert hang.pid == hung and "watchdog" in hang.detail and not alive(hung)


def test_protect_only_operations_are_refused_by_a_plain_worker(served):
    with pytest.raises(remote.RemoteOperationError, match="backend='protect'"):
        served.recover()
    assert "fc2.weight" in served.call(remote.normal_tensor_names)


def test_bad_input_is_an_error_not_a_failover(served, recorder):
    assert served.wait_ready(60)
    pid, crashes = served.active_pid, served.stats()["crash"]
    with pytest.raises(RuntimeError, match="channels"):
        served.infer(torch.zeros(1, 3, 8, 8), timeout=60)
    assert served.active_pid == pid and served.stats()["crash"] == crashes
    assert torch.equal(served.infer(_SAMPLES[:2], timeout=60).output, reference(_SAMPLES[:2]))


def test_workers_map_the_parents_weights_without_a_copy(served):
    assert served.wait_ready(60)
    weights = served.model.fc2.weight
    nbytes = sum(t.numel() * t.element_size() for t in served.model.state_dict().values())
    assert served.worker_info()["shared_bytes"] == nbytes
    x = _SAMPLES[:4]
    clean = served.infer(x, timeout=60).output
    bits.flip_(weights.data, 3, 30)  # a high exponent bit: the output must change
    try:
        corrupted = served.infer(x, timeout=60).output
        assert not torch.equal(corrupted, clean)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        with torch.inference_mode():
            assert torch.equal(corrupted, served.model(x))  # the same bytes, seen by both
        torch.set_num_threads(threads)
    finally:
        bits.flip_(weights.data, 3, 30)
    assert torch.equal(served.infer(x, timeout=60).output, clean)


def test_poison_input_is_dropped_after_max_attempts():
    recorder = Recorder()
    config = FailoverConfig(max_attempts=2, hang_timeout_s=5.0)
    source = ModelSource(f"{__name__}:poisoned_cnn")
    with FailoverModel(source, _SAMPLES[:1], config=config, on_event=recorder) as served:
        poison = torch.full((1, 1, 8, 8), POISON)
        bad = served.submit(poison)
        good = served.submit(_SAMPLES[:1])
        with pytest.raises(RequestDroppedError, match="max_attempts=2"):
            bad.result(timeout=60)
        assert torch.equal(good.result(timeout=60).output, reference(_SAMPLES[:1]))
        assert len(recorder.wait_for(EventKind.REQUEST_DROPPED, 1)) == 1
        assert len(recorder.of(EventKind.CRASH)) == 2
        pids = served.worker_pids()
    assert not [p for p in pids if alive(p)]
    with pytest.raises(ClosedError):
        served.infer(_SAMPLES[:1])


def test_protected_worker_fails_over_with_verified_results():
    config = FailoverConfig(backend="protect", hang_timeout_s=5.0)
    with FailoverModel.for_model(MODEL, config) as served:
        assert served.wait_ready(60)
        x = _SAMPLES[:4]
        first = served.infer(x, timeout=60)
        assert first.status.verified and torch.equal(first.output, reference(x))
        flips = served.call(remote.inject_weight_flips, 8, "*", 3, (30,))
        assert len(flips) == 8
        restored = served.recover()  # no inference in between: every flip is still there
        assert sum(restored.values()) == len({(f["tensor"], f["index"]) for f in flips})
        assert served.recover() == {}
        served.inject_crash(CrashKind.SEGFAULT)
        after = served.infer(x, wait=False, timeout=60)
        assert after.attempts == 2 and torch.equal(after.output, reference(x))
        assert after.verdict.result(timeout=60).verified


def test_a_model_instance_is_shared_with_the_workers():
    with FailoverModel(models.load(MODEL), _SAMPLES[:1], config=FailoverConfig()) as served:
        assert torch.equal(served.infer(_SAMPLES[:4], timeout=60).output, reference(_SAMPLES[:4]))
    with pytest.raises(ConfigError, match="shared memory"):
        FailoverModel(models.load(MODEL), _SAMPLES[:1], config=FailoverConfig(
            weight_sharing="none"))


def test_worker_that_cannot_load_is_a_clear_error():
    config = FailoverConfig(weight_sharing="none", startup_timeout_s=60)
    source = ModelSource("save_ros.models:load", ("no_such_model",))
    with pytest.raises(WorkerStartError, match="UnknownModelError"):
        FailoverModel(source, _SAMPLES[:1], config=config)


@pytest.mark.slow  # two more torch imports (a parent and its fork server): ~15 s here
def test_parent_killed_leaves_no_orphan_workers(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from save_ros.failover import FailoverModel
        if __name__ == "__main__":
            import torch
            served = FailoverModel({MODEL!r}, torch.zeros(1, 1, 8, 8))
            served.wait_ready(120)
            print(" ".join(map(str, served.worker_pids())), flush=True)
            time.sleep(600)
    """)
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "workers outlived their killed parent"


def test_config_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown failover setting"):
        FailoverConfig.from_dict({"hang_timeout": 1.0})
    with pytest.raises(ConfigError, match="choose one of"):
        FailoverConfig(backend="fast")
    with pytest.raises(ConfigError, match="cuda_ipc"):
        FailoverConfig(weight_sharing="cuda_ipc")
    with pytest.raises(ConfigError, match="hang_timeout_s"):
        FailoverConfig(hang_timeout_s=0)
    assert FailoverConfig.from_dict({"hang_timeout_s": 0.5}).hang_timeout_s == 0.5


def test_cuda_assert_needs_cuda_workers(served):
    with pytest.raises(CrashUnavailableError, match="cuda"):
        served.inject_crash(CrashKind.CUDA_ASSERT)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC weight sharing needs CUDA")
def test_cuda_ipc_weights_and_a_dead_cuda_context_fail_over():
    recorder = Recorder()
    config = FailoverConfig(device="cuda", weight_sharing="cuda_ipc", hang_timeout_s=10.0)
    with FailoverModel.for_model(MODEL, config, on_event=recorder) as served:
        assert served.wait_ready(120)
        assert served.model.fc2.weight.is_cuda
        x = _SAMPLES[:4]
        with torch.inference_mode():
            expected = served.model(x.cuda()).cpu()
        assert torch.equal(served.infer(x, timeout=60).output, expected)
        assert served.worker_info()["shared_bytes"] > 0
        for kind in (CrashKind.CUDA_ASSERT, CrashKind.SEGFAULT):
            assert served.wait_ready(120)
            pid = served.inject_crash(kind)
            result = served.infer(x, timeout=120)
            assert result.attempts == 2 and torch.equal(result.output, expected)
            assert not alive(pid)
        assert "device context lost" in recorder.of(EventKind.CRASH)[0].detail
