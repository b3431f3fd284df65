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
inference drawn at random among the episodes' steps (a transient upset, see `save_ros.eval.trial`).

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

from save_ros.eval.methods import Method, get_method
from save_ros.eval.metrics import Proportion, Spread, accurate_latency
from save_ros.eval.record import run_record
from save_ros.eval.trial import CampaignContext, CampaignError, points_of, trial_keys, trial_seed
from save_ros.faults import resolve_sites

__all__ = ["CampaignConfig", "CampaignError", "EvalSetup", "aggregate", "campaign_result",
           "registry_setup", "run_campaign", "strided", "trial_seed"]

TARGETS = ("weights", "activations", "both")
ACTIVATION_SITES = ("auto", "fx", "modules")


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


def aggregate(cfg: CampaignConfig, batch: int, records: Sequence[dict]) -> list[dict]:
    """The figures of every (method, point) from its trial records (any order, each once).

    Counts are pooled over trials with Wilson 95 % intervals (`Proportion`); accuracy and the
    per-trial SDC rate as spreads; the latency of one batched inference as a spread. A point
    with missing trials is reported with the trials it has (`trials` says how many).
    """
    by_point: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        by_point.setdefault((r["method"], r["point"]), []).append(r)
    out = []
    for name in cfg.methods:
        for p in points_of(cfg):
            rs = sorted(by_point.get((name, p.index), []), key=lambda r: r["trial"])
            counts = {k: sum(r[k] for r in rs) for k in
                      ("samples", "changed", "sdc", "detected", "nonfinite")}
            m = counts["samples"]
            sdc = Proportion(counts["sdc"], m)
            lat_s = Spread.of([r["latency_s"] * 1e3 for r in rs])
            acc = [r["accuracy"] for r in rs if r["accuracy"] is not None]
            out.append({
                "method": name, "target": cfg.target, "flips": p.flips, "ber": p.ber,
                "trials": len(rs), "accuracy": Spread.of(acc).to_dict(),
                "accuracy_per_trial": acc,
                "changed": Proportion(counts["changed"], m).to_dict(), "sdc": sdc.to_dict(),
                "sdc_per_trial": Spread.of([r["sdc"] / r["samples"] for r in rs]).to_dict(),
                "detected": Proportion(counts["detected"], m).to_dict(),
                "nonfinite": Proportion(counts["nonfinite"], m).to_dict(),
                "latency_ms": lat_s.to_dict(), "latency_ms_per_sample": lat_s.mean / batch,
                "accurate_latency_ms": accurate_latency(lat_s.mean, sdc.rate),
                "flips_drawn": [r["flips"] for r in rs], "seeds": [r["seed"] for r in rs],
            })
    return out


def campaign_result(cfg: CampaignConfig, meta: dict, records: Sequence[dict], started: float,
                    command: Sequence[str] | None = None, **extra) -> dict:
    """The JSON-ready result of a campaign from its trial records.

    `meta` is `CampaignContext.meta()` (model, activation sites, clean figures per method);
    `extra` adds top-level keys (how the trials were executed)."""
    return {
        **run_record("save_ros.campaign", started,
                     list(command) if command is not None else None),
        "version": 1, "wall_s": time.time() - started, "config": asdict(cfg),
        "model": meta["model"], "activation_sites": meta["activation_sites"],
        "seed_rule": "trial seed = (seed * 1000003 + key) * 10007 + trial; key = flips, or "
                     "-(index + 1) of the bit error rate",
        "fault_model": "distinct single-bit flips, uniform per bit over the target pool; with "
                       "ber, the count per trial is Binomial(pool bits, rate)",
        "methods": meta["methods"], "points": aggregate(cfg, meta["batch"], records), **extra,
    }


def run_campaign(cfg: CampaignConfig, setup: EvalSetup | None = None,
                 progress: Callable[[str], None] | None = None,
                 command: Sequence[str] | None = None) -> dict:
    """Run every trial in this process, in order; return the JSON-ready result.

    `save_ros.eval.shard` runs the same trials over processes, GPUs or a Ray cluster."""
    setup = setup or registry_setup(cfg.model, cfg.batch, cfg.episodes)
    started = time.time()
    naming = activation_naming(cfg, setup, [get_method(n) for n in cfg.methods])
    ctx = CampaignContext(cfg, setup, naming)
    records = []
    for key in trial_keys(cfg):
        records.append(ctx.run(key))
        if progress:
            p = ctx.points[key.point]
            what = f"flips={p.flips}" if p.ber is None else f"ber={p.ber:g}"
            progress(f"{setup.name} {key.method} {cfg.target} {what}: trial {key.trial + 1}/"
                     f"{cfg.trials}")
    return campaign_result(cfg, ctx.meta(), records, started, command)
