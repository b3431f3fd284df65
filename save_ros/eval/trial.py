"""One campaign trial as a pure function of (prepared model, config point, trial index).

A campaign is a list of trials, each named by a `TrialKey` (method, point index, trial index)
and seeded by `trial_seed(seed, point key, trial)` alone, so any process that prepared the same
model from the same spec computes the same trial bit for bit, in any order, on any host: that is
what lets `save_ros.eval.shard` spread trials over processes, GPUs or a Ray cluster and still
give the figures of a one-process run. `CampaignContext` prepares every method of the config
once (analysis, clean outputs, fault sites); `CampaignContext.run(key)` runs one trial and
returns its record: a plain dict of counts (and its latency, the one field that is not
reproducible). The weight faults of a trial are undone bit-exactly before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from save_ros.errors import UserError
from save_ros.eval.methods import Method, fault_probe_input, get_method
from save_ros.eval.metrics import compare
from save_ros.faults import (
    ActivationFaults,
    BitErrorRate,
    BitFault,
    EmptyTargetError,
    RandomFlips,
    Site,
    Target,
    TargetKind,
    activation_sites,
    apply_bit_faults,
    weight_sites,
)
from save_ros.faults.records import UndoLog


class CampaignError(UserError, ValueError):
    """A campaign that cannot run as configured (the message says what to change)."""


# the fields of a trial record that are not reproducible (wall-clock measurements)
TIMING_FIELDS = ("latency_s", "seconds", "detection_latencies_ms")


def trial_seed(seed: int, key: int, trial: int) -> int:
    """The seed of trial `trial` of the point whose key is `key` (same for every method).

    `key` is the flip count, or -(index + 1) of a bit error rate, so rate points never share a
    count's seeds."""
    return (seed * 1_000_003 + key) * 10_007 + trial


@dataclass(frozen=True)
class Point:
    """One config point: a flip count, or a bit error rate (then `flips` is None)."""

    index: int
    flips: int | None
    ber: float | None

    @property
    def key(self) -> int:
        """The point's part of the trial seed."""
        return self.flips if self.ber is None else -(self.index + 1)


@dataclass(frozen=True, order=True)
class TrialKey:
    """A trial's identity within its campaign: (method, point index, trial index)."""

    method: str
    point: int
    trial: int


def points_of(cfg) -> list[Point]:
    """The config's points in report order (bit error rates replace flip counts)."""
    if cfg.ber:
        return [Point(i, None, r) for i, r in enumerate(cfg.ber)]
    return [Point(i, n, None) for i, n in enumerate(cfg.flips)]


def trial_keys(cfg) -> list[TrialKey]:
    """Every trial of a campaign, in report order (method, point, trial)."""
    return [TrialKey(m, p.index, t) for m in cfg.methods for p in points_of(cfg)
            for t in range(cfg.trials)]


def _split(faults: Sequence[BitFault], weight_names: set[str]):
    w = [f for f in faults if f.site in weight_names]
    a = [f for f in faults if f.site not in weight_names]
    return w, a


class _EpisodeFaults:
    """A policy wrapper for one trial's episodes: the trial's activation flips hit ONE inference.

    The faulty inference is drawn uniformly among the first `steps` inferences of the trial's
    episodes (episodes x steps per episode), like one transient upset during the run; every
    other inference is fault-free. Weight faults, being persistent, are simply left in place.
    """

    def __init__(self, method: Method, sites: list[Site], n: int, steps: int,
                 gen: torch.Generator | None, bit_set: tuple[int, ...] | None = None,
                 naming: str = "modules", device: torch.device | None = None):
        self.method, self.calls, self.naming, self.device = method, 0, naming, device
        self.at, self.faults = -1, []
        if n and sites and gen is not None:
            self.at = int(torch.randint(0, max(1, steps), (1,), generator=gen))
            self.faults = RandomFlips(n, bit_set).sample(sites, gen)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.calls == self.at
        self.calls += 1
        if self.device is not None and self.device.type != "cpu":  # env states live on the CPU
            return self._predict(x.to(self.device), hit).cpu()
        return self._predict(x, hit)

    def _predict(self, x: torch.Tensor, hit: bool) -> torch.Tensor:
        if not hit:
            return self.method.predict(x)[0]
        with ActivationFaults(self.method.model, self.faults, sites=self.naming):
            return self.method.predict(x)[0]


@dataclass
class Prepared:
    """One method ready for trials: its clean outputs, fault pools and record info."""

    method: Method
    clean: torch.Tensor
    w_sites: list[Site]
    a_sites: list[Site]
    a_sites_1: list[Site]  # sites of a batch of one (a policy's episode steps)
    info: dict


class CampaignContext:
    """Every method of a campaign prepared on one model, ready to run trials by key.

    `setup` is the `EvalSetup` (model and evaluation data); `device` where the model and the
    evaluation batch live (outputs are compared on the CPU, so counts do not depend on it).
    Raises `CampaignError` for a config the model cannot run.
    """

    def __init__(self, cfg, setup, naming: tuple[str, str], device: str = "cpu") -> None:
        self.cfg, self.setup, (self.naming, self.why) = cfg, setup, naming
        self.device = torch.device(device)
        self.x = setup.x.to(self.device)
        self.y = None if setup.y is None else setup.y.cpu()
        self.points = points_of(cfg)
        self.methods: dict[str, Prepared] = {}
        for name in cfg.methods:
            prep = self._prepare(name)
            pool_bits = sum(s.numel * s.width for s in self._pool(prep))
            for p in self.points:
                if p.ber is None and p.flips > pool_bits and self._pool(prep):
                    raise CampaignError(f"{p.flips} flips exceed the {pool_bits} bits {name} "
                                        "exposes")
            self.methods[name] = prep

    def _prepare(self, name: str) -> Prepared:
        cfg, setup, naming = self.cfg, self.setup, self.naming
        method = get_method(name)
        calib = setup.calib
        if calib is not None and self.device.type != "cpu":  # the model's device, as protect()
            calib = (calib[0].to(self.device), *calib[1:])  # wants (a tensor or InputBatch)
        method.prepare(setup.build().to(self.device), setup.spec, calib)
        clean, clean_det = method.predict(self.x)
        if not torch.isfinite(clean).all():
            raise CampaignError(f"{name} gives non-finite outputs without faults; check the model")
        w_sites = weight_sites(method.injectable()) if cfg.target != "activations" else []
        a_sites, a_sites_1 = [], []
        if cfg.target != "weights" and method.activations_injectable:
            # a method may keep some layer outputs in reliable memory (SAVE's pool)
            act = Target(TargetKind.ACTIVATIONS,
                         exclude=frozenset(getattr(method, "activation_exclude", ())),
                         sites=naming)
            try:
                a_sites = activation_sites(method.model, fault_probe_input(self.x), act)
                if setup.episodes is not None:
                    a_sites_1 = activation_sites(method.model,
                                                 fault_probe_input(self.x[:1]), act)
            except EmptyTargetError:  # every layer output is in the method's reliable memory
                a_sites, a_sites_1 = [], []
        clean = clean.detach().cpu()
        info = {"clean_detected": int(torch.as_tensor(clean_det).sum()),
                "weight_tensors": len(w_sites),
                "weight_bits": sum(s.numel * s.width for s in w_sites),
                "activation_sites": len(a_sites), "activation_naming": naming,
                "activation_bits": sum(s.numel * s.width for s in a_sites)}
        if self.y is not None:
            info["clean_accuracy"] = float((clean.argmax(1) == self.y).float().mean())
        if setup.episodes is not None and cfg.episodes > 0:
            info["clean_success"] = setup.episodes(
                _EpisodeFaults(method, [], 0, 0, None, naming=naming, device=self.device),
                cfg.episodes)
        return Prepared(method, clean, w_sites, a_sites, a_sites_1, info)

    def _pool(self, prep: Prepared) -> list[Site]:
        return {"weights": prep.w_sites, "activations": prep.a_sites,
                "both": prep.w_sites + prep.a_sites}[self.cfg.target]

    def meta(self) -> dict:
        """What the result says about the prepared model: data, sites, clean figures per method."""
        s = self.setup
        return {"model": {"name": s.name, "task": s.task, "eval_data": s.data},
                "activation_sites": {"naming": "none" if self.cfg.target == "weights"
                                     else self.naming, "why": self.why},
                "methods": {name: dict(p.info) for name, p in self.methods.items()},
                "batch": len(s.x)}

    def run(self, key: TrialKey) -> dict:
        """Run one trial; its record (counts per sample, accuracy, seed, flips, latency).

        A policy trial that draws no fault reuses the fault-free success rate: its episodes are
        the fault-free episodes (same env seeds), so re-running them would only cost time.
        """
        cfg, setup, prep = self.cfg, self.setup, self.methods[key.method]
        point, method = self.points[key.point], prep.method
        pool = self._pool(prep)
        seed = trial_seed(cfg.seed, point.key, key.trial)
        gen = torch.Generator().manual_seed(seed)
        n = point.flips
        if point.ber is not None:
            n = BitErrorRate(point.ber, cfg.bits).count(pool, gen) if pool else 0
        faults = RandomFlips(n, cfg.bits).sample(pool, gen) if (n and pool) else []
        wf, af = _split(faults, {s.name for s in prep.w_sites})
        tensors = method.injectable()
        log = UndoLog(apply_bit_faults(tensors, wf))
        acc = None
        try:
            with ActivationFaults(method.model, af, sites=self.naming):
                t0 = time.perf_counter()
                out, det = method.predict(self.x)
                latency = time.perf_counter() - t0
            if setup.episodes is not None and cfg.episodes > 0:
                clean_success = prep.info.get("clean_success")
                if faults or clean_success is None:
                    policy = _EpisodeFaults(method, prep.a_sites_1, len(af),
                                            cfg.episodes * setup.episode_steps, gen,
                                            cfg.bits, self.naming, self.device)
                    acc = setup.episodes(policy, cfg.episodes)
                else:
                    acc = clean_success
        finally:
            log.undo(tensors)
            method.reset()
        o = compare(prep.clean, out.detach().cpu(), torch.as_tensor(det).cpu(), self.y,
                    setup.tolerance)
        if self.y is not None:
            acc = float(o.correct.float().mean())
        elif setup.task == "regression":  # share of outputs within tolerance of the clean ones
            acc = 1.0 - float(o.changed.float().mean())
        return {"method": key.method, "point": key.point, "trial": key.trial, "seed": seed,
                "flips": len(faults), "accuracy": acc, "samples": len(o.changed),
                "changed": int(o.changed.sum()), "sdc": int(o.sdc.sum()),
                "detected": int(o.detected.sum()), "nonfinite": int(o.nonfinite.sum()),
                "latency_s": latency}


def reproducible(record: dict) -> dict:
    """A trial record without its timings: what must be equal wherever the trial ran."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}
