"""Seeded fault-injection campaigns: per method and flip count, N trials of fresh faults.

Each trial draws `flips` distinct single-bit flips uniformly per bit over the memory the method
exposes (its `injectable()` weights, the activations of one forward pass of the evaluation batch,
or both together), applies them, runs the method on the fixed evaluation batch, and undoes them.
Trial t at flip count n uses seed `trial_seed(seed, n, t)`, the same for every method, so methods
meet the same draws wherever they expose the same tensors.

Figures per point: accuracy (or task success over gymnasium episodes for a policy) as mean, std,
min, max over trials; changed / SDC / detected / NaN-Inf rates per sample, pooled over trials with
a Wilson 95% interval (samples of one trial share its faults, so the interval is optimistic; the
per-trial spread of the SDC rate is reported next to it); latency of one batched inference.

For a policy, SDC is measured on held-out states and success over gymnasium episodes run with
the trial's faults: weight flips stay in place for all episodes; activation flips hit one
inference drawn at random among the episodes' steps (a transient upset, see `_EpisodeFaults`).

Activation sites (`activation_sites`): `fx` = the output of every computing torch.fx node,
functional ops (residual adds, attention, SiLU, ...) included, named by node; `modules` =
leaf-module outputs by module path (the campaigns before fx sites); `auto` (default) = fx when
the model traces and every method runs `method.model(x)` (a method that executes its own graph,
like SAVE's runtime, says `fx_activation_sites = False`), else modules for every method, so
methods of one run always meet the same kind of sites. The result records which and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from save_ros.errors import UserError
from save_ros.eval.methods import Method, fault_probe_input, get_method
from save_ros.eval.metrics import Proportion, Spread, accurate_latency, compare
from save_ros.eval.record import run_record
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
    resolve_sites,
    weight_sites,
)
from save_ros.faults.records import UndoLog

TARGETS = ("weights", "activations", "both")
ACTIVATION_SITES = ("auto", "fx", "modules")


class CampaignError(UserError, ValueError):
    """A campaign that cannot run as configured (the message says what to change)."""


@dataclass(frozen=True)
class CampaignConfig:
    """What to run: model, fault target, flip counts, trials, seed, methods, evaluation size."""

    model: str = "digits_cnn"
    target: str = "weights"
    flips: tuple[int, ...] = (1, 16, 256, 4096)
    trials: int = 100
    seed: int = 0
    methods: tuple[str, ...] = ("unprotected",)
    batch: int = 256  # evaluation samples, a fixed strided subset of the test split
    episodes: int = 3  # per trial, for control policies
    bits: tuple[int, ...] | None = None  # restrict flipped bit positions; None = all
    ber: tuple[float, ...] = ()  # bit error rates: when given, points are rates, not flips
    activation_sites: str = "auto"  # fx | modules | auto (module docstring)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise CampaignError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.activation_sites not in ACTIVATION_SITES:
            raise CampaignError(f"activation_sites must be one of {', '.join(ACTIVATION_SITES)}, "
                                f"not {self.activation_sites!r}")
        if self.trials < 1 or self.batch < 1 or self.episodes < 0:
            raise CampaignError("trials and batch must be >= 1 and episodes >= 0")
        if any(n < 0 for n in self.flips):
            raise CampaignError(f"flip counts must be >= 0, got {self.flips}")
        if any(not 0.0 <= r <= 1.0 for r in self.ber):
            raise CampaignError(f"bit error rates lie in [0, 1], got {self.ber}")


@dataclass
class EvalSetup:
    """The model under test and its fixed evaluation data, independent of the registry."""

    name: str
    build: Callable[[], nn.Module]  # a fresh fault-free model for each method
    x: Any  # a tensor, or an InputBatch (core.inputs) for a model of several inputs
    y: torch.Tensor | None  # labels (classification); None for a policy or a regression
    task: str = "classification"  # classification | control | regression
    tolerance: tuple[float, float] | None = None  # (rtol, atol): regression outputs compared
    spec: Any = None
    calib: tuple[torch.Tensor, torch.Tensor] | None = None
    episodes: Callable[[Callable[[torch.Tensor], torch.Tensor], int], float] | None = None
    episode_steps: int = 500  # the most inferences one episode makes
    data: dict = field(default_factory=dict)  # how x was chosen, for the record


def strided(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of n samples spread evenly over the split (every k-th)."""
    step = max(1, len(x) // n)
    idx = torch.arange(0, len(x), step)[:n]
    return x[idx], y[idx]


def registry_setup(name: str, batch: int, episodes: int) -> EvalSetup:
    """An EvalSetup for a bundled model of `save_ros.models`."""
    from save_ros import models
    from save_ros.models import cartpole

    spec = models.get_spec(name)
    x_all, y_all = models.dataset(name, "test")
    x, y = strided(x_all, y_all, batch)
    control = spec.task.value == "control"
    run_eps = None
    if control and episodes > 0:
        def run_eps(predict, n_episodes):
            return models.evaluate(name, predict, episodes=n_episodes)
    return EvalSetup(
        name=name, build=lambda: models.load(name), x=x, y=None if control else y,
        task=spec.task.value, spec=spec, calib=models.dataset(name, "calib"), episodes=run_eps,
        episode_steps=cartpole.MAX_STEPS,
        data={"split": "test", "n": len(x), "of": len(x_all), "stride": max(1, len(x_all) // batch),
              "episodes_per_trial": episodes if control else 0},
    )


def trial_seed(seed: int, flips: int, trial: int) -> int:
    """The seed of trial `trial` at `flips` flips (same for every method)."""
    return (seed * 1_000_003 + flips) * 10_007 + trial


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
                 naming: str = "modules"):
        self.method, self.calls, self.naming = method, 0, naming
        self.at, self.faults = -1, []
        if n and sites and gen is not None:
            self.at = int(torch.randint(0, max(1, steps), (1,), generator=gen))
            self.faults = RandomFlips(n, bit_set).sample(sites, gen)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.calls == self.at
        self.calls += 1
        if not hit:
            return self.method.predict(x)[0]
        with ActivationFaults(self.method.model, self.faults, sites=self.naming):
            return self.method.predict(x)[0]


def _point(method: Method, setup: EvalSetup, cfg: CampaignConfig, n: int, clean: torch.Tensor,
           w_sites: list[Site], a_sites: list[Site], a_sites_1: list[Site],
           progress: Callable[[str], None] | None, clean_success: float | None = None,
           ber: tuple[int, float] | None = None, naming: str = "modules") -> dict:
    """Run the trials of one (method, flip count) point, or of one bit error rate.

    With `ber = (index, rate)` each trial draws its flip count Binomial(pool bits, rate) and
    its seeds from the negative key -(index + 1), so rate points never share a count's seeds.

    A policy trial that draws no fault reuses the fault-free success rate: its episodes are
    the fault-free episodes (same env seeds), so re-running them would only cost time.
    """
    tensors = method.injectable()
    wnames = {s.name for s in w_sites}
    pool = {"weights": w_sites, "activations": a_sites, "both": w_sites + a_sites}[cfg.target]
    total_bits = sum(s.numel * s.width for s in pool)
    if ber is None and n > total_bits and pool:
        raise CampaignError(f"{n} flips exceed the {total_bits} bits {method.name} exposes")
    acc, sdc_t, lat, seeds, drawn = [], [], [], [], []
    counts = {"changed": 0, "sdc": 0, "detected": 0, "nonfinite": 0, "samples": 0}
    for t in range(cfg.trials):
        seed = trial_seed(cfg.seed, n if ber is None else -(ber[0] + 1), t)
        gen = torch.Generator().manual_seed(seed)
        if ber is not None:
            n = BitErrorRate(ber[1], cfg.bits).count(pool, gen) if pool else 0
        faults = RandomFlips(n, cfg.bits).sample(pool, gen) if (n and pool) else []
        wf, af = _split(faults, wnames)
        log = UndoLog(apply_bit_faults(tensors, wf))
        try:
            with ActivationFaults(method.model, af, sites=naming):
                t0 = time.perf_counter()
                out, det = method.predict(setup.x)
                lat.append(time.perf_counter() - t0)
            if setup.episodes is not None and cfg.episodes > 0:
                if faults or clean_success is None:
                    policy = _EpisodeFaults(method, a_sites_1, len(af),
                                            cfg.episodes * setup.episode_steps, gen,
                                            cfg.bits, naming)
                    acc.append(setup.episodes(policy, cfg.episodes))
                else:
                    acc.append(clean_success)
        finally:
            log.undo(tensors)
            method.reset()
        o = compare(clean, out, det, setup.y, setup.tolerance)
        if setup.y is not None:
            acc.append(float(o.correct.float().mean()))
        elif setup.task == "regression":  # share of outputs within tolerance of the clean ones
            acc.append(1.0 - float(o.changed.float().mean()))
        k = len(o.changed)
        counts["samples"] += k
        counts["changed"] += int(o.changed.sum())
        counts["sdc"] += int(o.sdc.sum())
        counts["detected"] += int(o.detected.sum())
        counts["nonfinite"] += int(o.nonfinite.sum())
        sdc_t.append(int(o.sdc.sum()) / k)
        seeds.append(seed)
        drawn.append(len(faults))
        if progress:
            what = f"flips={n}" if ber is None else f"ber={ber[1]:g}"
            progress(f"{setup.name} {method.name} {cfg.target} {what}: trial {t + 1}/"
                     f"{cfg.trials}")
    m = counts["samples"]
    sdc = Proportion(counts["sdc"], m)
    lat_s = Spread.of([v * 1e3 for v in lat])
    return {
        "method": method.name, "target": cfg.target, "flips": n if ber is None else None,
        "ber": None if ber is None else ber[1], "trials": cfg.trials,
        "accuracy": Spread.of(acc).to_dict(), "accuracy_per_trial": acc,
        "changed": Proportion(counts["changed"], m).to_dict(), "sdc": sdc.to_dict(),
        "sdc_per_trial": Spread.of(sdc_t).to_dict(),
        "detected": Proportion(counts["detected"], m).to_dict(),
        "nonfinite": Proportion(counts["nonfinite"], m).to_dict(),
        "latency_ms": lat_s.to_dict(), "latency_ms_per_sample": lat_s.mean / len(setup.x),
        "accurate_latency_ms": accurate_latency(lat_s.mean, sdc.rate),
        "flips_drawn": drawn, "seeds": seeds,
    }


def activation_naming(cfg: CampaignConfig, setup: EvalSetup,
                      methods: Sequence[Method]) -> tuple[str, str]:
    """(`fx` or `modules`, why) for the run's activation sites (see the module docstring)."""
    if cfg.target == "weights":
        return "modules", "weight faults only (no activation sites)"
    if cfg.activation_sites == "modules":
        return "modules", "asked for"
    traceable = resolve_sites(setup.build(), "auto") == "fx"
    own_graph = [m.name for m in methods if not getattr(m, "fx_activation_sites", True)]
    if cfg.activation_sites == "fx":
        if not traceable:
            raise CampaignError(f"{setup.name} does not trace with torch.fx, so it has no fx "
                                "activation sites; use --activation-sites modules")
        if own_graph:
            raise CampaignError(f"method(s) {', '.join(own_graph)} run their own graph, which "
                                "fx-site taps cannot reach; use --activation-sites modules")
        return "fx", "asked for"
    if not traceable:
        return "modules", "the model does not trace with torch.fx"
    if own_graph:
        return "modules", (f"method(s) {', '.join(own_graph)} run their own graph, which "
                           "fx-site taps cannot reach")
    return "fx", "the model traces and every method runs model(x)"


def run_campaign(cfg: CampaignConfig, setup: EvalSetup | None = None,
                 progress: Callable[[str], None] | None = None,
                 command: Sequence[str] | None = None) -> dict:
    """Run every (method, flip count) point; return the JSON-ready result."""
    setup = setup or registry_setup(cfg.model, cfg.batch, cfg.episodes)
    started = time.time()
    points, methods = [], {}
    naming, why = activation_naming(cfg, setup, [get_method(n) for n in cfg.methods])
    for name in cfg.methods:
        method = get_method(name)
        method.prepare(setup.build(), setup.spec, setup.calib)
        clean, clean_det = method.predict(setup.x)
        if not torch.isfinite(clean).all():
            raise CampaignError(f"{name} gives non-finite outputs without faults; check the model")
        tensors = method.injectable()
        w_sites = weight_sites(tensors) if cfg.target != "activations" else []
        a_sites, a_sites_1 = [], []
        if cfg.target != "weights" and method.activations_injectable:
            # a method may keep some layer outputs in reliable memory (SAVE's pool)
            act = Target(TargetKind.ACTIVATIONS,
                         exclude=frozenset(getattr(method, "activation_exclude", ())),
                         sites=naming)
            try:
                a_sites = activation_sites(method.model, fault_probe_input(setup.x), act)
                if setup.episodes is not None:
                    a_sites_1 = activation_sites(method.model, fault_probe_input(setup.x[:1]),
                                                 act)
            except EmptyTargetError:  # every layer output is in the method's reliable memory
                a_sites, a_sites_1 = [], []
        info = {"clean_detected": int(torch.as_tensor(clean_det).sum()),
                "weight_tensors": len(w_sites),
                "weight_bits": sum(s.numel * s.width for s in w_sites),
                "activation_sites": len(a_sites), "activation_naming": naming,
                "activation_bits": sum(s.numel * s.width for s in a_sites)}
        if setup.y is not None:
            info["clean_accuracy"] = float((clean.argmax(1) == setup.y).float().mean())
        if setup.episodes is not None and cfg.episodes > 0:
            info["clean_success"] = setup.episodes(_EpisodeFaults(method, [], 0, 0, None,
                                                                  naming=naming),
                                                   cfg.episodes)
        methods[name] = info
        if cfg.ber:
            for i, rate in enumerate(cfg.ber):
                points.append(_point(method, setup, cfg, 0, clean, w_sites, a_sites, a_sites_1,
                                     progress, info.get("clean_success"), (i, rate), naming))
        else:
            for n in cfg.flips:
                points.append(_point(method, setup, cfg, n, clean, w_sites, a_sites,
                                     a_sites_1, progress, info.get("clean_success"),
                                     naming=naming))
    cfg_d = asdict(cfg)
    return {
        **run_record("save_ros.campaign", started,
                     list(command) if command is not None else None),
        "version": 1, "wall_s": time.time() - started, "config": cfg_d,
        "model": {"name": setup.name, "task": setup.task, "eval_data": setup.data},
        "activation_sites": {"naming": "none" if cfg.target == "weights" else naming,
                             "why": why},
        "seed_rule": "trial seed = (seed * 1000003 + key) * 10007 + trial; key = flips, or "
                     "-(index + 1) of the bit error rate",
        "fault_model": "distinct single-bit flips, uniform per bit over the target pool; with "
                       "ber, the count per trial is Binomial(pool bits, rate)",
        "methods": methods, "points": points,
    }
