"""`save-ros bench`: SAVE vs unprotected vs baselines at batch 1, side by side in one run.

Latency: every method gets its own copy of the model; in each of `--rounds` rounds every method
runs the same `--n` test inputs one at a time, in turn, so load drifts hit all methods alike.
Per method we keep the calling thread's CPU time per inference of its best round (the headline:
what an inference costs on a core of its own; on a shared 2-core machine wall time mostly
measures the neighbours) and the wall time (best round and median). SAVE is timed twice:
`save_immediate` (infer(wait=False): the output at once, the verifier thread checks in parallel,
on the other core; the block's wall time runs until its last verdict is in) and `save_verified`
(infer(wait=True): the output after its checks, on the calling thread, repaired if needed).
`where_time_goes` times each part of a verified inference alone.
AccurateLatency = latency x (1 + error rate), with the error rate (share of published results
whose top-1 differs from the fault-free one, flagged or not) taken from the campaign JSONs
(`docs/results/runtime_campaign_<model>_<target>.json`) when they exist.

`--sweep` re-protects the model at several reliable-pool budgets (one shared analysis) and
measures, per budget, the latency ratio and the accuracy under activation and weight flips
(`--trials` seeded trials on a fixed test batch), and plots both against the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path("docs/results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench`."""
    parser.add_argument("--model", default="digits_cnn", help="bundled model (save_ros.models)")
    parser.add_argument("--budget", type=float, default=None,
                        help="reliable pool as a fraction of weight bytes (default: the "
                             "runtime's default)")
    parser.add_argument("--n", type=int, default=50, help="inputs per round (batch 1)")
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds")
    parser.add_argument("--sweep", type=str, default="",
                        help="budgets to sweep, comma-separated fractions (e.g. 0,0.05,0.1,0.3)")
    parser.add_argument("--trials", type=int, default=20, help="fault trials per sweep point")
    parser.add_argument("--flips", type=int, default=256,
                        help="activation flips per sweep trial (weights get 4096)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    parser.add_argument("--plot", type=Path, default=None, help="sweep plot (PNG)")
    parser.add_argument("--detection", action="store_true",
                        help="also measure detection latency under one flip per inference")


def _timed_rounds(fns: dict[str, Callable[[], None]], rounds: int, n: int,
                  spread: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Best round's mean seconds per inference per method, methods interleaved round by round.

    The best (least disturbed) round estimates what the method costs; on a shared machine the
    median mostly measures the neighbours. Both go into `spread` (min, median) when given.
    """
    per: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            c = time.thread_time()
            t = time.perf_counter()
            f()
            per[k].append((time.perf_counter() - t) / n)
            cpu[k].append((time.thread_time() - c) / n)
    if spread is not None:
        spread.update({k: {"min_us": min(v) * 1e6, "median_us": statistics.median(v) * 1e6,
                           "thread_cpu_us": min(cpu[k]) * 1e6,
                           "thread_cpu_median_us": statistics.median(cpu[k]) * 1e6}
                       for k, v in per.items()})
    return {k: min(v) for k, v in per.items()}


def _protected(name: str, fraction: float | None, analysis=None):
    """A freshly loaded model protected at a budget fraction (sharing `analysis` if given)."""
    from save_ros import models
    from save_ros.core.allocate import DEFAULT_BUDGET_FRACTION
    from save_ros.core.protect import ProtectConfig, protect

    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    cfg = ProtectConfig(calibration=xc, analysis=analysis,
                        reliable_budget_fraction=DEFAULT_BUDGET_FRACTION if fraction is None
                        else fraction)
    return protect(models.load(name), xc[:1], spec.input_range(), cfg)


def latency(name: str, fraction: float | None, n: int, rounds: int) -> dict[str, Any]:
    """Batch-1 latency of every method, side by side, and where SAVE's time goes."""
    from save_ros import models
    from save_ros.eval.baselines import FullDmr, RangeRestriction

    xt, _ = models.dataset(name, "test")
    calib = models.dataset(name, "calib")
    xs = [xt[i : i + 1] for i in range(min(n, len(xt)))]
    plain = models.load(name)
    pm = _protected(name, fraction)
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

    def range_restriction() -> None:
        for x in xs:
            rr.predict(x)

    def full_dmr() -> None:
        for x in xs:
            dmr.predict(x)

    fns = {"unprotected": unprotected, "save_immediate": save_immediate,
           "save_verified": save_verified, "range_restriction": range_restriction,
           "full_dmr": full_dmr}
    load_before = os.getloadavg()
    spread: dict[str, dict[str, float]] = {}
    lat = _timed_rounds(fns, rounds, len(xs), spread)
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
    return out


def _cpu_us(fn: Callable[[], Any], reps: int = 300) -> float:
    """Median thread-CPU microseconds of one call, in blocks of 20 calls."""
    fn()
    blocks = []
    for _ in range(max(1, reps // 20)):
        c = time.thread_time()
        for _ in range(20):
            fn()
        blocks.append((time.thread_time() - c) / 20 * 1e6)
    return statistics.median(blocks)


def where_time_goes(pm, plain, x: torch.Tensor) -> dict[str, float]:
    """Each part of a verified inference timed alone on this thread (thread CPU time)."""
    from save_ros.core.verify import FaultStatus, Job

    rt = pm._rt
    with torch.inference_mode():
        out, values = pm._inst.forward(x)

        def job() -> Job:
            return Job(0, (x,), out, values, 0.0, 0.0, pm._seq, True, (0, None), rt)

        parts = {
            "plain_forward": _cpu_us(lambda: plain(x)),
            "instrumented_forward": _cpu_us(lambda: pm._inst.forward(x)),
            "input_range_check": _cpu_us(lambda: pm._in_range(x)),
            "weight_checksum": _cpu_us(lambda: pm._store.check()),
            "layer_checks": _cpu_us(lambda: pm._run_checks(rt, values, 0, True, FaultStatus(0))),
            "verify_total": _cpu_us(lambda: pm._verify(job())),
            "infer_wait_true": _cpu_us(lambda: pm.infer(x, wait=True)),
            "infer_wait_false_inference_thread": _cpu_us(lambda: pm.infer(x, wait=False)),
        }
    parts["verify_bookkeeping"] = parts["verify_total"] - parts["input_range_check"] - \
        parts["weight_checksum"] - parts["layer_checks"]
    return parts


def faulty_latency(pm, plain, xs: list[torch.Tensor], rounds: int) -> dict[str, Any]:
    """Verified latency when *every* inference meets a fault (the upper bound under faults).

    `activation`: one exponent-bit flip (bit 30) in a normal-memory layer output per inference,
    through the fault injector's hooks (the unprotected model runs under the same hooks, so the
    injector's own cost cancels); `weight`: one exponent-bit flip in a normal-memory weight before
    each inference, which SAVE detects, restores and re-runs from (compared with unprotected plus
    the same `flip_` call on a scratch tensor).
    """
    from save_ros.core import bits
    from save_ros.faults import (
        ActivationFaults,
        BitFault,
        EmptyTargetError,
        Target,
        TargetKind,
        activation_sites,
    )

    excl = frozenset(pm.reliable_activation_sites())
    try:
        sites = activation_sites(pm.model, xs[0], Target(TargetKind.ACTIVATIONS, exclude=excl))
    except EmptyTargetError:
        sites = []
    normal = pm.normal_tensors()
    wname = max(normal, key=lambda n: normal[n].numel()) if normal else None
    fns: dict[str, Callable[[], None]] = {}
    detected = {"activation": 0, "weight": 0, "n_act": 0, "n_w": 0}
    if sites:
        site = sites[len(sites) // 2]

        def unprot_act() -> None:
            with torch.inference_mode():
                for x in xs:
                    with ActivationFaults(plain, [BitFault(site.name, 0, 30)]):
                        plain(x)

        def save_act() -> None:
            for x in xs:
                with ActivationFaults(pm.model, [BitFault(site.name, 0, 30)]):
                    st = pm.infer(x).status
                detected["activation"] += st.faulty
                detected["n_act"] += 1

        fns |= {"unprotected_act_hooks": unprot_act, "save_verified_act_fault": save_act}
    if wname is not None:
        w = normal[wname]

        def save_weight() -> None:
            for i, x in enumerate(xs):
                bits.flip_(w, i % w.numel(), 30)
                st = pm.infer(x).status
                detected["weight"] += st.faulty
                detected["n_w"] += 1

        scratch = torch.zeros_like(w)

        def unprot_flip() -> None:  # the injector's own cost, on a tensor nobody reads
            with torch.inference_mode():
                for i, x in enumerate(xs):
                    bits.flip_(scratch, i % scratch.numel(), 30)
                    plain(x)

        fns["unprotected_flip_call"] = unprot_flip
        fns["save_verified_weight_fault"] = save_weight
    if not fns:
        return {}
    sp: dict[str, dict[str, float]] = {}

    def unprot() -> None:
        with torch.inference_mode():
            for x in xs:
                plain(x)

    _timed_rounds({"unprotected": unprot, **fns}, rounds, len(xs), sp)
    out: dict[str, Any] = {k: v["thread_cpu_us"] for k, v in sp.items()}
    if "save_verified_act_fault" in sp:
        out["ratio_act"] = sp["save_verified_act_fault"]["thread_cpu_us"] / \
            sp["unprotected_act_hooks"]["thread_cpu_us"]
        out["act_site"] = site.name
    if "save_verified_weight_fault" in sp:
        out["ratio_weight"] = sp["save_verified_weight_fault"]["thread_cpu_us"] / \
            sp["unprotected_flip_call"]["thread_cpu_us"]
        out["weight_tensor"] = wname
    out["detected"] = detected
    pm.recover()
    return out


def detection_latency(name: str, n: int = 200) -> dict[str, Any]:
    """Inference start -> verdict (ms) under one exponent flip per inference, per verifier mode.

    Activation flips go through the injector's hooks into a normal-memory layer output; weight
    flips into a normal-memory weight before the inference. The verdict comes after repair.
    """
    from save_ros import models
    from save_ros.core import bits
    from save_ros.core.protect import ProtectConfig, protect
    from save_ros.faults import ActivationFaults, BitFault, Target, TargetKind, activation_sites

    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    xt, _ = models.dataset(name, "test")
    out: dict[str, Any] = {}
    for mode in ("thread", "external"):
        pm = protect(models.load(name), xc[:1], spec.input_range(),
                     ProtectConfig(calibration=xc, verifier=mode))
        excl = frozenset(pm.reliable_activation_sites())
        sites = activation_sites(pm.model, xt[:1], Target(TargetKind.ACTIVATIONS, exclude=excl))
        normal = pm.normal_tensors()
        w = normal[max(normal, key=lambda k: normal[k].numel())]
        lat: dict[str, list[float]] = {"activation_wait_true": [], "weight_wait_true": []}
        if mode == "thread":
            lat["activation_wait_false"] = []
        for i in range(n):
            x = xt[i % len(xt) : i % len(xt) + 1]
            fault = [BitFault(sites[i % len(sites)].name, 0, 30)]
            with ActivationFaults(pm.model, fault):
                lat["activation_wait_true"].append(pm.infer(x).status.detection_latency_s)
            if mode == "thread":
                with ActivationFaults(pm.model, fault):
                    r = pm.infer(x, wait=False)
                lat["activation_wait_false"].append(r.verdict.result().detection_latency_s)
            bits.flip_(w, i % w.numel(), 30)
            lat["weight_wait_true"].append(pm.infer(x).status.detection_latency_s)
        out[mode] = {k: {"n": len(v), "detected": sum(e is not None for e in v),
                         "median_ms": 1e3 * statistics.median(e for e in v if e is not None),
                         "max_ms": 1e3 * max(e for e in v if e is not None)}
                     for k, v in lat.items()}
        pm.close()
    return out


def accurate_latency(lat: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """AccurateLatency per method and flip count from the campaign JSONs (if present)."""
    rows = []
    for target in ("weights", "activations"):
        path = RESULTS / f"runtime_campaign_{model}_{target}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        rerun = RESULTS / f"runtime_campaign_{model}_{target}_save_rerun.json"
        if rerun.is_file():  # SAVE re-run after a fix: its points replace the first run's
            data["points"] = [p for p in data["points"] if p["method"] != "save"] + \
                json.loads(rerun.read_text())["points"]
        for p in data["points"]:
            key = {"save": "save_verified", "ecc_oracle": "unprotected"}.get(p["method"],
                                                                             p["method"])
            if key not in lat["spread_us"]:
                continue
            err = p["changed"]["rate"]
            # latency: thread CPU time of the best round (what one inference costs on a core
            # of its own; wall time on this shared machine mostly measures the neighbours)
            al = lat["spread_us"][key]["thread_cpu_us"] * (1 + err)
            base = lat["spread_us"]["unprotected"]["thread_cpu_us"]
            un = next((q for q in data["points"] if q["method"] == "unprotected"
                       and q["flips"] == p["flips"]), None)
            al_un = base * (1 + un["changed"]["rate"]) if un else None
            rows.append({"target": target, "flips": p["flips"], "method": p["method"],
                         "error_rate": err, "accurate_latency_us": al,
                         "ratio_to_unprotected": al / al_un if al_un else None})
    return rows


def sweep(name: str, fractions: list[float], trials: int, flips: int,
          n: int, rounds: int) -> list[dict[str, Any]]:
    """Per budget: latency ratio and accuracy under activation / weight flips."""
    from save_ros import models
    from save_ros.core.select import analyze
    from save_ros.faults import (
        ActivationFaults,
        EmptyTargetError,
        RandomFlips,
        Target,
        TargetKind,
        activation_sites,
        inject_weights,
    )

    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    xt, yt = models.dataset(name, "test")
    analysis = analyze(models.load(name), xc[:1], spec.input_range(), xc)
    plain = models.load(name)
    xb, yb = xt[::2][:256], yt[::2][:256]
    xs = [xt[i : i + 1] for i in range(min(n, len(xt)))]
    rows = []
    for frac in fractions:
        pm = _protected(name, frac, analysis)

        def unprotected() -> None:
            with torch.inference_mode():
                for x in xs:
                    plain(x)

        def immediate(pm=pm) -> None:
            rs = [pm.infer(x, wait=False) for x in xs]
            rs[-1].verdict.result()

        def verified(pm=pm) -> None:
            for x in xs:
                pm.infer(x, wait=True)

        sp: dict[str, dict[str, float]] = {}
        _timed_rounds({"u": unprotected, "i": immediate, "v": verified}, rounds, len(xs), sp)
        lat = {k: v["thread_cpu_us"] for k, v in sp.items()}  # see the module docstring
        excl = frozenset(pm.reliable_activation_sites())
        try:
            sites = activation_sites(pm.model, xb, Target(TargetKind.ACTIVATIONS, exclude=excl))
        except EmptyTargetError:  # every layer output is in the reliable pool
            sites = []
        acc_a, acc_w = [], []
        for t in range(trials):
            gen = torch.Generator().manual_seed(10_000 + t)
            faults = RandomFlips(flips).sample(sites, gen) if sites else []
            with ActivationFaults(pm.model, faults):
                out = pm.infer(xb).output
            acc_a.append(float((out.argmax(1) == yb).float().mean()))
            log = inject_weights(pm.model, RandomFlips(4096), Target(), seed=20_000 + t,
                                 tensors=pm.normal_tensors())
            out = pm.infer(xb).output
            log.undo(pm.normal_tensors())
            pm.recover()
            acc_w.append(float((out.argmax(1) == yb).float().mean()))
        rows.append({"budget_fraction": frac, "budget_bytes": pm.placement.budget_bytes,
                     "used_bytes": pm.placement.used_bytes,
                     "reliable": pm.placement.reliable,
                     "checks": pm._rt.by_kind(),
                     "ratio_immediate": lat["i"] / lat["u"], "ratio_verified": lat["v"] / lat["u"],
                     "accuracy_activation_flips": statistics.mean(acc_a),
                     "accuracy_weight_flips_4096": statistics.mean(acc_w),
                     "activation_flips": flips, "trials": trials})
        pm.close()
    return rows


def plot(rows: list[dict[str, Any]], name: str, path: Path) -> None:
    """Accuracy and overhead against the reliable-memory budget (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = [r["budget_fraction"] * 100 for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(f, [r["accuracy_activation_flips"] * 100 for r in rows], "o-",
            label=f"{rows[0]['activation_flips']} activation flips")
    a1.plot(f, [r["accuracy_weight_flips_4096"] * 100 for r in rows], "s-",
            label="4096 weight flips")
    a1.set_xlabel("reliable pool (% of weight bytes)")
    a1.set_ylabel("accuracy (%)")
    a1.legend()
    a2.plot(f, [r["ratio_immediate"] for r in rows], "o-", label="immediate (wait=False)")
    a2.plot(f, [r["ratio_verified"] for r in rows], "s-", label="verified (wait=True)")
    a2.axhline(1.25, color="grey", ls="--", lw=1)
    a2.set_xlabel("reliable pool (% of weight bytes)")
    a2.set_ylabel("latency / unprotected (batch 1)")
    a2.legend()
    fig.suptitle(f"SAVE on {name}: accuracy and overhead vs reliable-memory budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the ratios, optionally write JSON and the plot."""
    from save_ros.eval.campaign import machine_info

    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lat = latency(args.model, args.budget, args.n, args.rounds)
    print(f"{args.model}, batch 1, {lat['n']} inputs x {args.rounds} rounds, side by side")
    print(lat["summary"])
    print(f"load average {lat['loadavg_before'][0]:.1f} -> {lat['loadavg_after'][0]:.1f}; wall = "
          "best round's mean (and median); thread CPU = best round (the headline figure)")
    print(f"{'method':20s} {'latency us':>11s} {'ratio':>6s} {'median ratio':>13s} "
          f"{'thread CPU us':>14s} {'CPU ratio':>10s}")
    sp = lat["spread_us"]
    for k, v in lat["latency_us"].items():
        kk = k if k in sp else "unprotected"
        print(f"{k:20s} {v:11.1f} {lat['ratio'][k]:6.2f} {lat['median_ratio'][kk]:13.2f} "
              f"{sp[kk]['thread_cpu_us']:14.1f} {lat['cpu_ratio'][kk]:10.2f}")
    print("where SAVE's time goes (thread CPU us per batch-1 inference, each part alone): "
          + ", ".join(f"{k} {v:.1f}" for k, v in lat["breakdown_us"].items()))
    print(f"fault-free: {lat['fault_free_inferences']} inferences, {lat['false_alarms']} false "
          f"alarms, {lat['unverified']} unverified")
    f = lat["faulty_every_inference"]
    if f:
        print(f"every inference faulty (verified, thread CPU): activation flip x"
              f"{f.get('ratio_act', float('nan')):.2f}, weight flip x"
              f"{f.get('ratio_weight', float('nan')):.2f} of unprotected; detected {f['detected']}")
    al = accurate_latency(lat, args.model)
    for r in al:
        if r["ratio_to_unprotected"] is not None:
            print(f"AccurateLatency {r['target']:11s} flips={r['flips']:5d} {r['method']:18s} "
                  f"error {r['error_rate']:.4f}  {r['accurate_latency_us']:9.1f} us  "
                  f"x{r['ratio_to_unprotected']:.2f} of unprotected")
    result = {"kind": "save_ros.bench", "date_utc": started, "machine": machine_info(),
              "command": ["save-ros", "bench", *vars_to_argv(args)], "latency": lat,
              "accurate_latency": al}
    if args.detection:
        result["detection_latency"] = detection_latency(args.model)
        for mode, d in result["detection_latency"].items():
            print(f"detection latency ({mode} verifier): " + ", ".join(
                f"{k} median {v['median_ms']:.2f} ms (max {v['max_ms']:.1f}, {v['detected']}/"
                f"{v['n']} detected)" for k, v in d.items()))
    if args.sweep:
        fr = [float(v) for v in args.sweep.split(",") if v.strip()]
        rows = sweep(args.model, fr, args.trials, args.flips, args.n, max(3, args.rounds // 2))
        result["sweep"] = rows
        for r in rows:
            print(f"budget {r['budget_fraction']:5.2f}: immediate x{r['ratio_immediate']:.2f}, "
                  f"verified x{r['ratio_verified']:.2f}, accuracy {r['activation_flips']} act "
                  f"flips {r['accuracy_activation_flips']:.4f}, 4096 weight flips "
                  f"{r['accuracy_weight_flips_4096']:.4f}, checks {r['checks']}")
        if args.plot:
            plot(rows, args.model, args.plot)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


def vars_to_argv(args: argparse.Namespace) -> list[str]:
    """The options as they would be typed (for the record)."""
    out = []
    for k, v in vars(args).items():
        if v is None or v == "":
            continue
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def campaign_tables(model: str, results: Path = RESULTS) -> str:
    """Markdown tables of the runtime campaigns of one model (accuracy / SDC per method)."""
    out = []
    for target in ("weights", "activations"):
        path = results / f"runtime_campaign_{model}_{target}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        points = data["points"]
        rerun = results / f"runtime_campaign_{model}_{target}_save_rerun.json"
        if rerun.is_file():  # SAVE re-run after a fix: its points replace the first run's
            points = [p for p in points if p["method"] != "save"]
            points += json.loads(rerun.read_text())["points"]
        methods = [m for m in data["config"]["methods"]]
        # other methods run later with the same settings (e.g. weight scaling): extra columns
        for extra in sorted(results.glob(f"runtime_campaign_{model}_{target}_extra_*.json")):
            more = json.loads(extra.read_text())
            points += more["points"]
            methods += [m for m in more["config"]["methods"] if m not in methods]
        flips = sorted({p["flips"] for p in points})
        cfg = data["config"]
        metric = "success" if cfg.get("episodes") and data["model"]["task"] == "control" \
            else "accuracy"
        out.append(f"**{model}, {target} flips** ({cfg['trials']} trials per point, batch "
                   f"{cfg['batch']}, seed {cfg['seed']}; cell: {metric} % / SDC rate "
                   f"[95% CI] / detected share)\n")
        out.append("| flips | " + " | ".join(methods) + " |")
        out.append("|---:|" + "---|" * len(methods))
        for n in flips:
            cells = []
            for m in methods:
                p = next((q for q in points if q["method"] == m and q["flips"] == n), None)
                if p is None:
                    cells.append("")
                    continue
                acc = f"{p['accuracy']['mean'] * 100:.1f}" if p["accuracy"]["n"] else "n/a"
                s = p["sdc"]
                cells.append(f"{acc} / {s['rate']:.4f} [{s['ci95'][0]:.4f}, "
                             f"{s['ci95'][1]:.4f}] / {p['detected']['rate']:.2f}")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def latency_tables(models_: list[str], results: Path = RESULTS) -> str:
    """Markdown: batch-1 latency ratios, where the time goes, AccurateLatency ratios."""
    rows, parts, acc = [], [], []
    keys = ["unprotected", "save_immediate", "save_verified", "range_restriction", "full_dmr"]
    for m in models_:
        path = results / f"runtime_bench_{m}.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        lat = d["latency"]
        sp = lat["spread_us"]
        cells = [f"{sp[k]['thread_cpu_us']:.0f} us" if k == "unprotected" else
                 f"{lat['cpu_ratio'][k]:.2f}" for k in keys]
        med = lat["median_ratio"]["save_verified"]
        rows.append(f"| {m} | " + " | ".join(cells) + f" | {med:.2f}"
                    f" | {lat['loadavg_before'][0]:.1f} | {lat['fault_free_inferences']} / "
                    f"{lat['false_alarms']} |")
        b = lat["breakdown_us"]
        parts.append(f"| {m} | {b['plain_forward']:.0f} | {b['instrumented_forward']:.0f} | "
                     f"{b['input_range_check']:.1f} | {b['weight_checksum']:.1f} | "
                     f"{b['layer_checks']:.1f} | {b['verify_total']:.1f} | "
                     f"{len(lat.get('checks', {}))} |")
        # recomputed from the bench's latencies and the campaign JSONs as they are now
        by = {(r["target"], r["flips"], r["method"]): r for r in accurate_latency(lat, m)}
        for target in ("weights", "activations"):
            flips = sorted({f for (t, f, _) in by if t == target})
            for f in flips:
                cell = [by.get((target, f, meth)) for meth in
                        ("save", "range_restriction", "full_dmr", "ecc_oracle")]
                if not any(cell):
                    continue
                acc.append(f"| {m} | {target} | {f} | " + " | ".join(
                    f"{c['ratio_to_unprotected']:.2f}" if c else "" for c in cell) + " |")
    out = ["| model | unprotected (thread CPU) | SAVE immediate | SAVE verified | range "
           "restriction | full DMR | SAVE verified, wall median | load avg | fault-free "
           "inferences / false alarms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
           "Where a verified inference's time goes (thread CPU us, each part timed alone):", "",
           "| model | plain forward | instrumented forward | input range | weight checksum | "
           "layer checks | verify total | checked layers |",
           "|---|---:|---:|---:|---:|---:|---:|---:|", *parts, "",
           "AccurateLatency = latency x (1 + error rate), as a ratio to unprotected at the same "
           "flip count (latency: thread CPU, best round, fault-free; error rate: campaign, top-1 "
           "changed):", "",
           "| model | target | flips | SAVE (verified) | range restriction | full DMR | ECC "
           "oracle |", "|---|---|---:|---:|---:|---:|---:|", *acc]
    return "\n".join(out)
