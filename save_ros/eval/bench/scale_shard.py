"""The coverage section of `save-ros bench scale` as keyed chunks, run by `save_ros.eval.shard`.

A row's coverage (one model, init and redundancy setting) has five sections: weights_uniform,
activations_uniform, weights_high, activations_high (`--trials` / 2 each) and clean (`--clean`).
Each section is cut into chunks of `--chunk` trials (default `CHUNK`); chunk c of section s is
the key `TrialKey("ROW/REDUNDANCY/SECTION", s, c)`, draws its flips from a generator seeded with
`trial_seed(seed, s, c)` alone and runs section trials c*chunk.. on inputs (trial mod 64), so a
chunk's counts are a function of its key on any process that protected the same model the same
way. Every process builds that model itself: the row's model and calibration images from their
source, `save_ros.protect()` with the analysis the driver made (sent as data, not redone), its own
fault-free reference outputs; every chunk record names the protection plan it ran under (a hash
of the checks, the reliable pool and the coverage), and a row whose chunks disagree is an error.
A model whose every activation sits in the reliable pool has no activation trials to run: those
sections say so (`exposed` false) instead of counting trials.

Where the chunks run (`executor`): here (one process, the default on a CPU or one GPU: the
model the driver analysed, chunks in order); `--workers N` processes (one per visible GPU on
CUDA); `--ray auto|ADDRESS` (tasks on a Ray cluster). Chunks go to a `TrialStore` as they come
back (`--store FILE`, SQLite), so `--resume` continues a killed run with no chunk lost or counted
twice; progress shows trials/s and the ETA. `--seconds` is a time budget per section of a
one-process run (the old meaning: fault sections get half of it each, clean all of it), checked
between chunks so a stored chunk is always whole; a sharded run ignores it and says so.
The driver analyses the model on `--device` (so a Ray driver needs that device too), and a
`--trained` folder must be at the same path on every Ray node.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from save_ros.errors import UserError
from save_ros.eval import shard
from save_ros.eval.bench import scale_coverage as cov
from save_ros.eval.bench import scale_inits
from save_ros.eval.store import TrialStore
from save_ros.eval.trial import CampaignError, TrialKey, trial_seed

CHUNK = 50  # trials per chunk (default): the unit of storing, resuming and spreading
SECTIONS = ("weights_uniform", "activations_uniform", "weights_high", "activations_high", "clean")
INPUTS = 64  # trials cycle over the first 64 calibration images (their outputs recorded first)


class CoverageShardError(UserError, RuntimeError):
    """Chunks of one row that were run under different protection plans (or another misuse)."""


def section_sizes(trials: int, clean: int) -> dict[str, int]:
    """Trials per section: `trials` // 2 per fault section, `clean` fault-free inferences."""
    return {s: clean if s == "clean" else trials // 2 for s in SECTIONS}


def row_keys(prefix: str, sizes: dict[str, int], chunk: int = CHUNK) -> list[TrialKey]:
    """Every chunk of a row, section by section in run order."""
    return [TrialKey(f"{prefix}/{s}", i, c) for i, s in enumerate(SECTIONS)
            for c in range(math.ceil(sizes[s] / chunk))]


def chunk_trials(key: TrialKey, sizes: dict[str, int], chunk: int) -> int:
    """How many trials chunk `key` runs (the last one of a section may be short)."""
    return min(chunk, sizes[key.method.rsplit("/", 1)[1]] - key.trial * chunk)


def spec(args, rows: list[tuple[str, str, Path | None]], device: str) -> dict:
    """Everything that decides the chunks of a bench run: the identity its store is bound to."""
    return {"format": 1, "kind": "bench-scale-coverage", "chunk": args.chunk,
            "rows": [[r, m, None if w is None else str(w)] for r, m, w in rows],
            "size": args.size, "calibration": args.calibration, "seed": args.seed,
            "trials": args.trials, "clean": args.clean, "redundancy": args.redundancy,
            "device": device.split(":")[0]}


def plan_record(pm) -> dict:
    """The protection plan of a protected model: a fingerprint, its coverage and checks."""
    plan = pm._plan
    ident = {"checks": [[c.name, c.kind.value] for c in plan.checks],
             "reliable": list(pm.placement.reliable), "coverage": plan.coverage}
    text = json.dumps(ident, sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16],
            "coverage": plan.coverage, "checks": plan.by_kind()}


@dataclass(frozen=True)
class CoverageJob:
    """One row's coverage for `save_ros.eval.shard` workers (picklable; sent once per worker)."""

    row: str
    model: str
    weights: str | None
    size: int
    calibration: int
    seed: int
    budget: float | None
    analysis: bytes  # the driver's Analysis.to_dict() as zlib-compressed JSON
    sizes: tuple[tuple[str, int], ...]
    chunk: int
    device: str
    threads: int
    key: str

    def prepare(self, device: str) -> CoverageContext:
        """Build the row's model and calibration images from their source, then protect it."""
        dev = torch.device(device)
        weights = None if self.weights is None else Path(self.weights)
        base = scale_inits.build(self.model, self.size, weights).to(dev)
        calib = scale_inits.calibration(weights, self.model, self.calibration, self.size,
                                        self.seed, dev)
        return CoverageContext(self, base, calib)


class CoverageContext:
    """A row's protected model, reference outputs and fault sites: runs chunks by key."""

    def __init__(self, job: CoverageJob, base: torch.nn.Module, calib: torch.Tensor) -> None:
        from save_ros.core.analysis import Analysis
        from save_ros.core.protect import ProtectConfig, protect

        analysis = Analysis.from_dict(json.loads(zlib.decompress(job.analysis)))
        self.job, self.calib, self.sizes = job, calib, dict(job.sizes)
        self.pm = protect(copy.deepcopy(base), calib[:1], (0.0, 1.0),
                          ProtectConfig(calibration=calib, analysis=analysis,
                                        redundancy_budget=job.budget), fault_sites=True)
        self.inputs = calib[:INPUTS]
        self.refs = cov.reference_outputs(self.pm, self.inputs)
        self.answer = cov.Answer(analysis.task, analysis.settings.get("tolerance"),
                                 analysis.settings.get("min_gap"))
        self.plan = plan_record(self.pm)

    def meta(self) -> dict:
        """The protection plan (the same in every worker, or the row is refused)."""
        return self.plan

    def run(self, key: TrialKey) -> dict:
        """One chunk: its counts, examples, plan fingerprint, seconds and detection latencies."""
        section = key.method.rsplit("/", 1)[1]
        start = key.trial * self.job.chunk
        n = chunk_trials(key, self.sizes, self.job.chunk)
        seed = trial_seed(self.job.seed, key.point, key.trial)
        pm, x, refs, answer = self.pm, self.inputs, self.refs, self.answer
        kind, _, mode = section.partition("_")
        exposed = kind != "activations" or bool(pm.activation_sites())
        if not exposed:  # every activation is in the reliable pool: no flip can hit one
            o = cov.Outcome()
        elif kind == "weights":
            o = cov.weight_trials(pm, x, refs, answer, n, seed, mode, start)
        elif kind == "activations":
            o = cov.activation_trials(pm, x, refs, answer, n, seed, mode, start)
        else:
            o = cov.clean_trials(pm, self.calib, n, seed, start)
        rec = o.to_dict()
        rec.pop("sdc_upper95")
        return {"method": key.method, "point": key.point, "trial": key.trial, "seed": seed,
                **rec, "exposed": exposed, "plan": self.plan, "draws": _digest(o.draws),
                "detection_latencies_ms": o.latencies_ms}


def _digest(draws: list) -> str:
    """A short hash of what a chunk's trials drew: equal draws, equal hash, on any process."""
    return hashlib.sha256(json.dumps(draws).encode()).hexdigest()[:16]


def in_process(base: torch.nn.Module, calib: torch.Tensor,
               seconds: float | None) -> shard.Executor:
    """Run chunks here, in key order, on the driver's model; with `seconds`, a section stops at
    the first chunk boundary past its budget (fault sections: half of it each)."""
    spent: dict[str, float] = {}

    def execute(job: CoverageJob, parts: list[list[TrialKey]]) -> Iterator[dict]:
        ctx = None
        worker = f"{socket.gethostname()}:{os.getpid()}"
        try:
            for part in parts:
                out = []
                for key in part:
                    section = key.method.rsplit("/", 1)[1]
                    budget = None if seconds is None else seconds / (
                        1 if section == "clean" else 2)
                    if budget is not None and spent.get(section, 0.0) >= budget:
                        continue
                    if ctx is None:
                        ctx = CoverageContext(job, base, calib)
                    t = time.perf_counter()
                    out.append(ctx.run(key))
                    spent[section] = spent.get(section, 0.0) + time.perf_counter() - t
                if out:
                    yield {"meta": ctx.meta(), "records": out, "worker": worker}
        finally:
            if ctx is not None:
                ctx.pm.close()
    execute.workers = 1
    execute.name = "in_process"
    return execute


def check_options(args) -> None:
    """Refuse `--resume` without `--store` and a negative `--workers` (before any work)."""
    if args.resume and args.store is None:
        raise CampaignError("--resume needs --store FILE (the store of the killed run)")
    if args.workers < 0:
        raise CampaignError(f"--workers must be >= 0, got {args.workers}")


def executor(args, device: str, here: shard.Executor) -> tuple[shard.Executor, int]:
    """The executor the options ask for, and the torch threads of each of its workers: `here`
    for one CPU process or one GPU, else one process per device, or Ray."""
    check_options(args)
    if args.ray:
        from save_ros.eval.shard_ray import ray_executor

        threads = args.threads or 1
        return ray_executor(args.ray, device, threads), threads
    devices = shard.local_devices(device, args.workers)
    if not devices:
        raise CampaignError(f"--device {device}: no GPU is visible")
    if len(devices) == 1:
        return here, torch.get_num_threads()
    return shard.processes(devices), args.threads or max(1, (os.cpu_count() or 1) // len(devices))


def run_row(name: str, model: str, weights: Path | None, base, calib, analysis, args,
            device: str, budget: float | None, red: str, store: TrialStore,
            out: dict, progress: bool = True) -> dict:
    """Run (or resume) one row's coverage chunks where the options say; fill and return `out`."""
    sizes = section_sizes(args.trials, args.clean)
    prefix = f"{name}/{red}"
    keys = row_keys(prefix, sizes, args.chunk)

    def _trials(k: TrialKey) -> int:
        return chunk_trials(k, sizes, args.chunk)

    here = in_process(base, calib, here_budget(args))
    execute, threads = executor(args, device, here)
    sharded = execute is not here
    if sharded and args.seconds is not None:
        print(f"bench scale: --seconds {args.seconds:g} is a one-process budget; the "
              f"{execute.workers} workers run every trial (size the run with --trials and "
              "--clean; --store and --resume continue it across calls)", file=sys.stderr)
    data = zlib.compress(json.dumps(analysis.to_dict()).encode())
    job = CoverageJob(name, model, None if weights is None else str(weights), args.size,
                      args.calibration, args.seed, budget, data, tuple(sizes.items()), args.chunk,
                      device.split(":")[0] if sharded else device, threads,
                      f"{store.key}/{prefix}")
    before = store.done() & set(keys)
    started = time.time()
    _, records, ex = shard.drive(job, keys, execute, store, progress, most=1,
                                 size=_trials)
    wall = time.time() - started
    mine = [r for r in records if r["method"].startswith(prefix + "/")]
    plans = {r["plan"]["fingerprint"] for r in mine}
    if len(plans) > 1:
        raise CoverageShardError(
            f"{name} {red}: the stored chunks ran under {len(plans)} different protection "
            f"plans ({', '.join(sorted(plans))}): another analysis or code; start a new --store")
    ran = {TrialKey(r["method"], r["point"], r["trial"]) for r in mine} - before
    trials_run = sum(map(_trials, ran))
    out.update({"redundancy_budget": budget, "seed": args.seed, "chunk": args.chunk,
                "execution": {k: ex[k] for k in (
                    "executor", "workers", "device", "threads", "store", "campaign_key",
                    "duplicates_ignored", "conflicts", "first_chunk_s")} | {
                    "chunks_run": len(ran), "chunks_resumed": len(before),
                    "trials_run": trials_run, "trials_resumed": sum(map(_trials, before)),
                    "trials_per_s": trials_run / wall if ran and wall > 0 else None,
                    # after the first chunk came back (workers started, model protected)
                    "steady_trials_per_s": _steady(trials_run, args.chunk, wall,
                                                   ex["first_chunk_s"]),
                    "seconds_budget": None if sharded else here_budget(args),
                    "store_chunks_per_worker": ex["trials_per_worker"]}})
    if mine:
        out.update({k: mine[0]["plan"][k] for k in ("coverage", "checks", "fingerprint")})
    lat: list[float] = []
    for section in SECTIONS:
        parts = [r for r in mine if r["method"] == f"{prefix}/{section}"]
        o = cov.Outcome.total(_outcome(r) for r in parts)
        lat.extend(o.latencies_ms)
        exposed = all(r["exposed"] for r in parts)
        v = out[section] = o.to_dict() | {"planned": sizes[section], "chunks": len(parts),
                                          "exposed": exposed,
                                          "complete": len(parts) == sum(
                                              k.method.endswith("/" + section) for k in keys)}
        _print_section(budget, section, v)
    lat.sort()
    out["detection_latency_ms"] = None if not lat else {
        "mean": sum(lat) / len(lat), "p50": lat[len(lat) // 2], "max": lat[-1], "n": len(lat)}
    return out


def _steady(trials: int, chunk: int, wall: float, first: float | None) -> float | None:
    if first is None or trials <= chunk or wall <= first:
        return None
    return (trials - chunk) / (wall - first)


def here_budget(args) -> float:
    """The per-section budget of a one-process run: --seconds, 120 s when not given."""
    return 120.0 if args.seconds is None else args.seconds


def _outcome(rec: dict) -> cov.Outcome:
    o = cov.Outcome(**{k: rec[k] for k in cov.Outcome.COUNTS}, seconds=rec["seconds"],
                    examples=list(rec["examples"]))
    o.latencies_ms = list(rec.get("detection_latencies_ms", []))
    return o


def _print_section(budget, key: str, v: dict) -> None:
    if not v["exposed"]:
        print(f"  {budget if budget is not None else 'full'} {key}: no trials: every activation "
              "is in the reliable pool", flush=True)
        return
    stop = "" if v["complete"] else f" of {v['planned']} (stopped by --seconds; --resume goes on)"
    print(f"  {budget if budget is not None else 'full'} {key}: {v['trials']} trials{stop}, raw "
          f"changed {v['raw_changed']}, detected {v['detected']}, sdc {v['sdc']} (<= "
          f"{v['sdc_upper95'] or 0:.2g}; uncovered {v['sdc_uncovered']}), unverified "
          f"{v['unverified']}, {v['seconds']:.0f} s", flush=True)
    for e in v["examples"]:
        print(f"    sdc: {e['site']}", flush=True)
