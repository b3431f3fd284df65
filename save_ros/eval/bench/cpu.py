"""`save-ros bench cpu`: SAVE vs unprotected vs baselines at batch 1, side by side in one run.

Latency: every method gets its own copy of the model; in each of `--rounds` rounds every method
runs the same `--n` test inputs one at a time, in turn, so load drifts hit all methods alike.
Per method we keep the calling thread's CPU time per inference of its best round (the headline:
what an inference costs on a core of its own; on a shared 2-core machine wall time mostly
measures the neighbours) and the wall time (best round and median). SAVE is timed twice:
`save_immediate` (infer(wait=False): the output at once, the verifier thread checks in parallel,
on the other core; the block's wall time runs until its last verdict is in) and `save_verified`
(infer(wait=True): the output after its checks, on the calling thread, repaired if needed).
`where_time_goes` times each part of a verified inference alone; `cpu_faults` measures
under faults (every inference faulty, detection latency, budget sweep); `report` turns the
JSONs into the tables of `docs/results/runtime.md`.
AccurateLatency = latency x (1 + error rate), with the error rate (share of published results
whose top-1 differs from the fault-free one, flagged or not) taken from the campaign JSONs
(`docs/results/runtime_campaign_<model>_<target>.json`) when they exist.

`--sweep` re-protects the model at several reliable-pool budgets (one shared analysis) and
measures, per budget, the latency ratio and the accuracy under activation and weight flips
(`--trials` seeded trials on a fixed test batch), and plots both against the budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from save_ros.argtypes import fraction, fraction_list, nonnegative_int, positive_int
from save_ros.errors import UserError
from save_ros.eval.bench.cpu_faults import (
    detection_latency,
    faulty_latency,
    plot,
    protected_model,
    sweep,
)
from save_ros.eval.bench.report import accurate_latency
from save_ros.eval.record import run_record, write_json
from save_ros.eval.table import counts_text, render
from save_ros.eval.timing import interleaved, thread_cpu_us

RESULTS = Path("docs/results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench cpu`."""
    parser.add_argument("--model", default="digits_cnn", help="bundled model (save_ros.models)")
    parser.add_argument("--budget", type=fraction, default=None,
                        help="reliable pool as a fraction of weight bytes (default: the "
                             "runtime's default)")
    parser.add_argument("--n", type=positive_int, default=50, help="inputs per round (batch 1)")
    parser.add_argument("--rounds", type=positive_int, default=25, help="interleaved rounds")
    parser.add_argument("--sweep", type=fraction_list, default=(),
                        help="budgets to sweep, comma-separated fractions (e.g. 0,0.05,0.1,0.3)")
    parser.add_argument("--trials", type=positive_int, default=20,
                        help="fault trials per sweep point")
    parser.add_argument("--flips", type=nonnegative_int, default=256,
                        help="activation flips per sweep trial (weights get 4096)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    parser.add_argument("--plot", type=Path, default=None, help="sweep plot (PNG)")
    parser.add_argument("--detection", action="store_true",
                        help="also measure detection latency under one flip per inference")


def timed_rounds(fns: dict[str, Callable[[], None]], rounds: int, n: int,
                 spread: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Best round's mean seconds per inference per method, methods interleaved round by round
    (`timing.interleaved`); the spread of every method goes into `spread` when given."""
    per = interleaved(fns, rounds, n)
    if spread is not None:
        spread.update({k: r.spread_us() for k, r in per.items()})
    return {k: min(r.wall) for k, r in per.items()}


def latency(name: str, fraction: float | None, n: int, rounds: int) -> dict[str, Any]:
    """Batch-1 latency of every method, side by side, and where SAVE's time goes."""
    from save_ros import models
    from save_ros.eval.baselines import FullDmr, RangeRestriction

    xt, _ = models.dataset(name, "test")
    calib = models.dataset(name, "calib")
    xs = [xt[i : i + 1] for i in range(min(n, len(xt)))]
    plain = models.load(name)
    pm = protected_model(name, fraction)
    # the opt-in chained DMR (ProtectConfig.chain_dmr), timed beside the default
    pmc = protected_model(name, fraction, pm.analysis, chain_dmr=True)
    rr, dmr = RangeRestriction(), FullDmr()
    rr.prepare(models.load(name), None, calib)
    dmr.prepare(models.load(name), None, calib)
    statuses: list = []

    def unprotected() -> None:
        with torch.inference_mode():
            for x in xs:
                plain(x)

    def save_immediate() -> None:
        rs = [pm.infer(x, wait=False) for x in xs]
        statuses.extend(r.verdict.result() for r in rs)

    def save_verified() -> None:
        statuses.extend(pm.infer(x, wait=True).status for x in xs)

    def save_verified_chained() -> None:
        statuses.extend(pmc.infer(x, wait=True).status for x in xs)

    def range_restriction() -> None:
        for x in xs:
            rr.predict(x)

    def full_dmr() -> None:
        for x in xs:
            dmr.predict(x)

    fns = {"unprotected": unprotected, "save_immediate": save_immediate,
           "save_verified": save_verified, "save_verified_chained": save_verified_chained,
           "range_restriction": range_restriction,
           "full_dmr": full_dmr}
    load_before = os.getloadavg()
    spread: dict[str, dict[str, float]] = {}
    lat = timed_rounds(fns, rounds, len(xs), spread)
    load_after = os.getloadavg()
    lat["ecc_oracle"] = lat["unprotected"]  # ECC is the memory's job: no software time
    base = lat["unprotected"]
    false_alarms = sum(s.faulty for s in statuses)
    unverified = sum(not s.verified for s in statuses)
    breakdown = where_time_goes(pm, plain, xs[0])
    faulty = faulty_latency(pm, plain, xs, max(5, rounds // 3))
    out = {
        "faulty_every_inference": faulty,
        "model": name, "batch": 1, "n": len(xs), "rounds": rounds,
        "latency_us": {k: v * 1e6 for k, v in lat.items()},
        "ratio": {k: v / base for k, v in lat.items()},
        "median_ratio": {k: v["median_us"] / spread["unprotected"]["median_us"]
                         for k, v in spread.items()},
        # CPU time of the calling thread: what the inference costs on a core of its own
        "cpu_ratio": {k: v["thread_cpu_us"] / spread["unprotected"]["thread_cpu_us"]
                      for k, v in spread.items()},
        "spread_us": spread, "loadavg_before": load_before, "loadavg_after": load_after,
        "fault_free_inferences": len(statuses), "false_alarms": false_alarms,
        "unverified": unverified,
        "breakdown_us": breakdown,
        "checks": {c["layer"]: c for c in pm.checks() if c["check"] != "none"},
        "placement": pm.placement.to_dict(), "summary": pm.summary(),
    }
    pm.close()
    pmc.close()
    return out


def where_time_goes(pm, plain, x: torch.Tensor) -> dict[str, float]:
    """Each part of a verified inference timed alone on this thread (thread CPU time)."""
    from save_ros.core.verify import FaultStatus, Job

    plan = pm._plan
    with torch.inference_mode():
        out, values = pm._inst.forward(x)

        def job() -> Job:
            return Job(0, (x,), out, values, 0.0, 0.0, pm._editor.epoch, True, (0, None), plan)

        parts = {
            "plain_forward": thread_cpu_us(lambda: plain(x)),
            "instrumented_forward": thread_cpu_us(lambda: pm._inst.forward(x)),
            # inputs are checked before the forward now (core.inputs), not in _verify
            "input_range_check": thread_cpu_us(lambda: pm._admit(x)),
            "weight_checksum": thread_cpu_us(lambda: pm._store.check()),
            "layer_checks": thread_cpu_us(lambda: pm._checker.run(plan, values, 0, True,
                                                             FaultStatus(0))),
            "verify_total": thread_cpu_us(lambda: pm._verify(job())),
            "infer_wait_true": thread_cpu_us(lambda: pm.infer(x, wait=True)),
            "infer_wait_false_inference_thread": thread_cpu_us(lambda: pm.infer(x, wait=False)),
        }
    parts["verify_bookkeeping"] = parts["verify_total"] - parts["weight_checksum"] - \
        parts["layer_checks"]
    return parts


def _detected_text(detected: dict[str, int]) -> str:
    """`activation flips 450/450, weight flips 450/450` from the faulty-inference counters."""
    parts = [f"{kind} flips {detected[kind]}/{detected[n]}"
             for kind, n in (("activation", "n_act"), ("weight", "n_w")) if detected.get(n)]
    return ", ".join(parts) or "no faulty inference run"


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the ratios, optionally write JSON and the plot."""


    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the sweep
        raise UserError("--plot needs matplotlib: pip install matplotlib (the 'plot' extra)")
    torch.set_num_threads(args.threads)
    started = time.time()
    lat = latency(args.model, args.budget, args.n, args.rounds)
    print(f"{args.model}, batch 1, {lat['n']} inputs x {args.rounds} rounds, side by side")
    print(lat["summary"])
    print(f"load average {lat['loadavg_before'][0]:.1f} -> {lat['loadavg_after'][0]:.1f}; wall = "
          "best round's mean (and median); thread CPU = best round (the headline figure)")
    sp = lat["spread_us"]
    rows = []
    for k, v in lat["latency_us"].items():
        kk = k if k in sp else "unprotected"
        rows.append([k, f"{v:.1f}", f"{lat['ratio'][k]:.2f}", f"{lat['median_ratio'][kk]:.2f}",
                     f"{sp[kk]['thread_cpu_us']:.1f}", f"{lat['cpu_ratio'][kk]:.2f}"])
    print(render(["method", "wall us", "ratio", "median ratio", "thread CPU us", "CPU ratio"],
                 rows, notes=["ratios: to unprotected in the same rounds (wall mean, wall "
                              "median, thread CPU)"]))
    print("where SAVE's time goes (thread CPU us per batch-1 inference, each part alone): "
          + ", ".join(f"{k} {v:.1f}" for k, v in lat["breakdown_us"].items()))
    print(f"fault-free: {lat['fault_free_inferences']} inferences, {lat['false_alarms']} false "
          f"alarms, {lat['unverified']} unverified")
    f = lat["faulty_every_inference"]
    if f:
        print(f"every inference faulty (verified, thread CPU): activation flip x"
              f"{f.get('ratio_act', float('nan')):.2f}, weight flip x"
              f"{f.get('ratio_weight', float('nan')):.2f} of unprotected; detected: "
              + _detected_text(f["detected"]))
    al = accurate_latency(lat, args.model)
    for r in al:
        if r["ratio_to_unprotected"] is not None:
            print(f"AccurateLatency {r['target']:11s} flips={r['flips']:5d} {r['method']:18s} "
                  f"error {r['error_rate']:.4f}  {r['accurate_latency_us']:9.1f} us  "
                  f"x{r['ratio_to_unprotected']:.2f} of unprotected")
    result = run_record("save_ros.bench", started,
                        ["save-ros", "bench", "cpu", *vars_to_argv(args)])
    result |= {"latency": lat, "accurate_latency": al}
    if args.detection:
        result["detection_latency"] = detection_latency(args.model)
        for mode, d in result["detection_latency"].items():
            print(f"detection latency ({mode} verifier): " + ", ".join(
                f"{k} median {v['median_ms']:.2f} ms (max {v['max_ms']:.1f}, {v['detected']}/"
                f"{v['n']} detected)" for k, v in d.items()))
    if args.sweep:
        fr = list(args.sweep)
        rows = sweep(args.model, fr, args.trials, args.flips, args.n, max(3, args.rounds // 2))
        result["sweep"] = rows
        for r in rows:
            print(f"budget {r['budget_fraction']:5.2f}: immediate x{r['ratio_immediate']:.2f}, "
                  f"verified x{r['ratio_verified']:.2f}, accuracy {r['activation_flips']} act "
                  f"flips {r['accuracy_activation_flips']:.4f}, 4096 weight flips "
                  f"{r['accuracy_weight_flips_4096']:.4f}, checks: " + counts_text(r["checks"]))
        if args.plot:
            plot(rows, args.model, args.plot)
    if args.json:
        write_json(args.json, result)
    return 0


def vars_to_argv(args: argparse.Namespace) -> list[str]:
    """The options as they would be typed (for the record)."""
    out = []
    for k, v in vars(args).items():
        if v is None or v == "":
            continue
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out
