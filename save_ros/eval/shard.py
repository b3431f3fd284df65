"""Run a campaign's trials anywhere: in this process, one process per GPU (or N on a CPU), or Ray.

Every executor does the same thing: the trials not yet in the store are cut into chunks; a
worker rebuilds the model from its `ModelSource` (the `--model` options, so a bundled name, a
zoo name or an import path), prepares a `CampaignContext` once per process, runs the chunk's
trials by key and sends their records back; this process alone writes them to the
`TrialStore` and shows progress (trials/s, ETA). Because a trial is a pure function of its key
(`save_ros.eval.trial`), the figures do not depend on how the trials were spread, and a chunk
that is delivered twice (a task retried after its node died) is stored once.

- in-process: the campaign as it always ran (`--workers 1` on a CPU);
- processes: `--workers N` spawned processes on a CPU, or one per visible GPU with `--device
  cuda` (the default where CUDA is available); a process that dies stops the run, and
  `--resume` continues it;
- Ray: `--ray auto|ADDRESS` (`save_ros.eval.shard_ray`): tasks with `num_cpus` = --threads
  and `num_gpus` = 1 on CUDA, retried by Ray when a worker or node dies.

The command-line options that pick an executor are `save_ros.eval.shard_cli`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from save_ros.eval.campaign import (
    CampaignConfig,
    CampaignError,
    activation_naming,
    campaign_result,
)
from save_ros.eval.methods import get_method
from save_ros.eval.store import TrialStore
from save_ros.eval.trial import CampaignContext, TrialKey, trial_keys


@dataclass(frozen=True)
class ModelSource:
    """How any process rebuilds the campaign's model and data: the `--model` options."""

    model: str
    input_shape: tuple[int, ...] | None = None
    input_range: tuple[float, float] | None = None
    task: str | None = None
    tolerance: tuple[float, float] | None = None
    inputs: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelSource:
        """The options `save_ros.eval.model_cli.add_arguments` parsed."""
        inputs = getattr(args, "inputs", None)
        return cls(args.model, *(getattr(args, k, None) for k in
                                 ("input_shape", "input_range", "task", "tolerance")),
                   None if inputs is None else str(inputs))

    def setup(self, batch: int, episodes: int):
        """The `EvalSetup` (model, evaluation data) these options give."""
        from pathlib import Path

        from save_ros.eval import model_cli

        ns = argparse.Namespace(**asdict(self))
        ns.inputs = None if self.inputs is None else Path(self.inputs)
        return model_cli.setup_from_args(ns, batch, episodes)


class Context(Protocol):
    """A prepared job in one worker process: runs trials by key."""

    def meta(self) -> dict:
        """What the result says about the prepared job (the same in every worker)."""

    def run(self, key: TrialKey) -> dict:
        """One trial's record (with `method`, `point`, `trial` and `seed`)."""


class Job(Protocol):
    """What a worker gets (picklable, sent once per worker): it prepares a `Context`."""

    device: str  # "cpu" or "cuda" (a worker's own GPU is cuda:0 of what it sees, or cuda:i)
    threads: int
    key: str  # the store's campaign key: a worker's cached context is reused for this key only

    def prepare(self, device: str) -> Context:
        """Build the context on `device` (once per worker process)."""


@dataclass(frozen=True)
class CampaignJob:
    """A `save-ros robustness campaign` for workers: config and model source."""

    cfg: CampaignConfig
    source: ModelSource
    device: str
    threads: int
    key: str

    def prepare(self, device: str) -> CampaignContext:
        """Rebuild the model from its source and prepare every method."""
        setup = self.source.setup(self.cfg.batch, self.cfg.episodes)
        naming = activation_naming(self.cfg, setup, [get_method(n) for n in self.cfg.methods])
        return CampaignContext(self.cfg, setup, naming, device)


_CONTEXTS: dict[tuple[str, str], Context] = {}  # per worker process: (key, device)


def worker_context(job: Job, device: str | None = None) -> Context:
    """This process's prepared job (built on first use, then reused for the same key)."""
    device = device or job.device
    ctx = _CONTEXTS.get((job.key, device))
    if ctx is None:
        torch.set_num_threads(max(1, job.threads))
        ctx = _CONTEXTS[(job.key, device)] = job.prepare(device)
    return ctx


def run_chunk(job: Job, keys: Sequence[TrialKey], device: str | None = None) -> dict:
    """Run trials by key in this process: {"meta", "records", "worker": host:pid}."""
    ctx = worker_context(job, device)
    return {"meta": ctx.meta(), "records": [ctx.run(k) for k in keys],
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


def chunks(keys: Sequence[TrialKey], workers: int, most: int = 32) -> list[list[TrialKey]]:
    """Cut keys into chunks: about 8 per worker (a lost chunk costs little), at most `most`."""
    size = max(1, min(most, math.ceil(len(keys) / max(1, 8 * workers))))
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


class Meter:
    """Progress on stderr: trials done of all, trials/s over this run, and the ETA."""

    def __init__(self, total: int, done: int, stream=None, every: float = 0.5) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.monotonic()
        self.every, self.tty = every, self.stream.isatty()

    def rate(self) -> float:
        """Trials per second over this run (0 before the first chunk)."""
        dt = time.monotonic() - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else 0.0

    def line(self) -> str:
        """`done/total trials, rate trials/s, ETA`."""
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        eta_s = "?" if math.isinf(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        return f"campaign: {self.done}/{self.total} trials, {rate:.2f} trials/s, ETA {eta_s}"

    def update(self, new: int) -> None:
        """Count `new` trials and redraw (a terminal: one line, a few times a second)."""
        self.done += new
        now, final = time.monotonic(), self.done >= self.total
        if final or now - self.last >= (self.every if self.tty else 10 * self.every):
            self.stream.write(("\r" if self.tty else "") + self.line()
                              + ("\n" if final or not self.tty else ""))
            self.stream.flush()
            self.last = now


Executor = Callable[[Job, list[list[TrialKey]]], Iterator[dict]]


def in_process(setup=None) -> Executor:
    """Run chunks here, in order (`setup`: a campaign's `EvalSetup` to use instead of its
    source, e.g. the one the CLI already built)."""
    def execute(job: Job, parts: list[list[TrialKey]]) -> Iterator[dict]:
        if setup is not None and (job.key, job.device) not in _CONTEXTS:
            cfg = job.cfg
            naming = activation_naming(cfg, setup, [get_method(n) for n in cfg.methods])
            _CONTEXTS[(job.key, job.device)] = CampaignContext(cfg, setup, naming, job.device)
        try:
            for part in parts:
                yield run_chunk(job, part)
        finally:
            _CONTEXTS.pop((job.key, job.device), None)
    execute.workers = 1
    return execute


_DEVICE: list[str] = []  # the device of a pool worker process
_JOB: list[Job] = []  # its job: sent once per process, not with every chunk (it can be large)


def _pool_init(devices, threads: int, job: Job) -> None:
    _DEVICE.append(devices.get())
    _JOB.append(job)
    torch.set_num_threads(max(1, threads))


def _pool_chunk(keys: list[TrialKey]) -> dict:
    if _DEVICE[0].startswith("cuda"):
        torch.cuda.set_device(torch.device(_DEVICE[0]))
    return run_chunk(_JOB[0], keys, _DEVICE[0])


def processes(devices: Sequence[str]) -> Executor:
    """One spawned process per entry of `devices` (e.g. cuda:0, cuda:1, or cpu, cpu)."""
    def execute(job: Job, parts: list[list[TrialKey]]) -> Iterator[dict]:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        for d in devices:
            queue.put(d)
        with ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_pool_init,
                                 initargs=(queue, job.threads, job)) as pool:
            pending = {pool.submit(_pool_chunk, part) for part in parts}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        try:
                            yield fut.result()
                        except BrokenProcessPool:
                            raise CampaignError(
                                "a worker process died (killed, or out of memory); the trials "
                                "finished before are in --store: rerun with --resume") from None
            finally:
                for fut in pending:
                    fut.cancel()
    execute.workers = len(devices)
    return execute


def local_devices(device: str, workers: int) -> list[str]:
    """The processes of a one-host run: every visible GPU for cuda, else `workers` CPUs."""
    if device.startswith("cuda"):
        if ":" in device:
            return [device]
        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n if workers <= 0 else min(n, workers))]
    return ["cpu"] * max(1, workers)


def campaign_spec(cfg: CampaignConfig, source: ModelSource, device: str) -> dict:
    """Everything that decides a campaign's trials: the identity its store is bound to."""
    return {"format": 1, "config": asdict(cfg), "model": asdict(source),
            "device": device.split(":")[0]}


def drive(job: Job, keys: Sequence[TrialKey], execute: Executor, store: TrialStore,
          progress: bool = True, stream=None, most: int = 32,
          size: Callable[[TrialKey], int] | None = None) -> tuple[dict, list[dict], dict]:
    """Run the keys the store lacks with `execute`, storing chunks as they come back.

    `most`: keys per chunk at most; `size`: how many trials a key stands for (default 1), for
    the progress line. Returns (meta of the prepared job, every stored record in key order, the
    execution record: executor, workers, trials run and resumed, duplicates, trials/s,
    per-worker counts)."""
    started = time.time()
    have = store.done()
    todo = [k for k in keys if k not in have]
    weigh = size or (lambda _k: 1)
    meter = (Meter(sum(map(weigh, keys)), sum(weigh(k) for k in keys if k in have), stream)
             if progress else None)
    counted = set(have)
    meta = store.meta()
    first = None  # (time, trials) of the first chunk back: workers warm from then on
    for out in execute(job, chunks(todo, execute.workers, most)):
        if first is None:
            first = (time.time(), len(out["records"]))
        if meta is None:
            meta = out["meta"]
            store.set_meta(meta)
        store.add(out["records"], out.get("worker"))
        if meter:
            back = {TrialKey(r["method"], r["point"], r["trial"]) for r in out["records"]}
            meter.update(sum(weigh(k) for k in back - counted))
            counted |= back
    if meta is None:  # nothing left to run and no worker ever reported: prepare here
        meta = worker_context(job).meta()
        store.set_meta(meta)
    records = store.records()
    end = time.time()
    steady = None
    if first is not None and len(todo) > first[1] and end > first[0]:
        steady = (len(todo) - first[1]) / (end - first[0])
    execution = {"executor": getattr(execute, "name", execute.__qualname__.split(".")[0]),
                 "workers": execute.workers, "device": job.device, "threads": job.threads,
                 "store": store.path, "campaign_key": store.key,
                 "trials_resumed": len(keys) - len(todo), "trials_run": len(todo),
                 "duplicates_ignored": store.duplicates, "conflicts": store.conflicts,
                 "trials_per_s": (len(todo) / (end - started)) if todo else None,
                 # after the first chunk came back (workers started and models prepared)
                 "first_chunk_s": None if first is None else first[0] - started,
                 "steady_trials_per_s": steady,
                 "trials_per_worker": store.workers()}
    return meta, records, execution


def run_sharded(cfg: CampaignConfig, source: ModelSource, execute: Executor,
                store: TrialStore, device: str = "cpu", threads: int = 1,
                progress: bool = True, command: Sequence[str] | None = None,
                stream=None) -> dict:
    """Run the campaign's trials the store lacks with `execute`; the campaign result."""
    started = time.time()
    job = CampaignJob(cfg, source, device.split(":")[0], threads, store.key)
    meta, records, execution = drive(job, trial_keys(cfg), execute, store, progress, stream)
    execution["device"] = device
    return campaign_result(cfg, meta, records, started, command, execution=execution)
