"""Failover benchmark: time from a worker crash to the next result, warm standby vs cold restart.

Three modes, run side by side in one process on the same model and inputs:
- `warm_standby`: a standby worker is loaded, analysed and warmed up before the crash;
- `cold_forkserver`: no standby; a new worker forks from a server that already imported torch,
  maps the shared weights and the parent's analysis (a cheap restart);
- `cold_spawn`: no standby; a new interpreter imports torch, loads the weights from disk and
  analyses the model (a full restart: what a supervisor without this runtime does).
Each repetition arms a crash in the active worker, then submits a burst of requests; the first
request meets the crash. Reported: crash-to-result time of that request, and messages lost (any
answer that is missing or differs from the fault-free output).

`save-ros bench failover` or `python -m save_ros.eval.bench.failover`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from save_ros import models
from save_ros.argtypes import nonnegative_int, positive_float, positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.eval.timing import summary
from save_ros.failover.config import FailoverConfig
from save_ros.failover.crash import CrashKind
from save_ros.failover.events import EventKind, FailoverEvent
from save_ros.failover.supervisor import FailoverModel
from save_ros.failover.weights import ModelSource
from save_ros.models import zoo

MODES = ("warm_standby", "cold_forkserver", "cold_spawn")


def mode_config(mode: str, base: dict[str, Any]) -> FailoverConfig:
    """The FailoverConfig of one benchmark mode."""
    cuda = str(base.get("device", "cpu")).startswith("cuda")
    sharing = "cuda_ipc" if cuda else "shared_memory"
    settings = {
        "warm_standby": {"standby": True, "weight_sharing": sharing},
        "cold_forkserver": {"standby": False, "weight_sharing": sharing},
        "cold_spawn": {"standby": False, "start_method": "spawn", "weight_sharing": "none",
                       "share_analysis": False},
    }[mode]
    return FailoverConfig(**(base | settings))


def _quantiles(values: list[float]) -> dict[str, float]:
    """Median, p95, min, max (seconds)."""
    s = summary(values, (50, 95))
    return {"median_s": s["p50"], "p95_s": s["p95"], "min_s": s["min"], "max_s": s["max"],
            "n": s["n"]} if s else {}


def in_process_latency(name: str, backend: str, x: torch.Tensor, repeats: int) -> list[float]:
    """Latency of the same inference run in this process (no worker), for the IPC overhead."""
    bundled = name in models.available()
    load = (lambda: models.load(name)) if bundled else (lambda: zoo.build(name))
    model = load().to(x.device)
    run = model
    protected = None
    if backend == "protect":
        from save_ros.core.protect import ProtectConfig, protect
        from save_ros.core.select import analyze

        box = models.get_spec(name).input_range() if bundled else (0.0, 1.0)
        # Selection on a CPU copy, as FailoverModel does, then protect on the device.
        analysis = analyze(load(), x[:1].cpu(), box)
        protected = protect(model, x[:1], box, ProtectConfig(analysis=analysis))
        run = protected
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    if protected is not None:
        protected.close()
    return times


# the crashed request's path, one clock (CLOCK_MONOTONIC) across processes
BREAKDOWN = {
    "detection": "the worker crashes -> the supervisor notices",
    "activation": "noticed -> the standby has read the re-sent request",
    "inference": "the standby's verified inference, output on its CPU",
    "return": "output -> answered in the supervisor",
    "crash_to_answer": "the worker crashes -> the crashed request is answered",
}


def _split(parts: dict[str, list[float]], result) -> None:
    """Add one failed-over request's phases (`FailoverResult.phases`) and its total."""
    phases = result.phases()
    if "detection" not in phases:  # not an injected crash: no crash time to start from
        return
    for name, seconds in phases.items():
        parts[name].append(seconds)
    parts["crash_to_answer"].append(result.timeline["answered"] - result.timeline["crashed"])


def bench_mode(mode: str, name: str, base: dict[str, Any], crash: CrashKind, reps: int,
               burst: int, samples: torch.Tensor, references: list[torch.Tensor] | None,
               steady: int) -> dict[str, Any]:
    """Run one mode: steady-state latency, then `reps` crashes each followed by a burst.

    `references` None: the fault-free outputs are those the first worker gives in the steady
    phase (a zoo model, whose plain eager output on the GPU need not match the worker's)."""
    steady_outputs: list[torch.Tensor] = []
    events: list[FailoverEvent] = []
    started = time.perf_counter()
    config = mode_config(mode, base)
    if name in models.available():
        served = FailoverModel.for_model(name, config, on_event=events.append)
    else:  # a zoo model (robot scale): served from its name, inputs in [0, 1]
        served = FailoverModel(ModelSource.named(name), samples[:1], (0.0, 1.0), config,
                               on_event=events.append)
    startup_s = time.perf_counter() - started
    try:
        wanted = served.config.standby
        # Steady state means the standby is up: its start-up would compete for the CPU.
        served.wait_ready(served.config.startup_timeout_s)
        steady_times = []
        for i in range(max(steady, len(samples) if references is None else 0)):
            result = served.infer(samples[i % len(samples)].unsqueeze(0), timeout=120)
            steady_times.append(result.latency_s)
            if references is None and i < len(samples):
                steady_outputs.append(result.output)
        if references is None:  # the fault-free outputs of this worker pipeline
            references = steady_outputs
        crash_to_result, detect, lost, answered, warm_flags = [], [], 0, 0, []
        parts: dict[str, list[float]] = {k: [] for k in BREAKDOWN}
        first_results = []
        for rep in range(reps):
            if not served.wait_ready(served.config.startup_timeout_s):
                raise RuntimeError(f"{mode}: no ready worker (standby={wanted})")
            failovers = sum(e.kind is EventKind.FAILOVER for e in list(events))
            served.inject_crash(crash)
            start, wall = time.perf_counter(), time.time()
            picks = [(rep * burst + j) % len(samples) for j in range(burst)]
            futures = [served.submit(samples[k].unsqueeze(0)) for k in picks]
            for j, (k, future) in enumerate(zip(picks, futures, strict=True)):
                try:
                    result = future.result(timeout=served.config.startup_timeout_s + 60)
                except Exception:
                    lost += 1
                    continue
                if j == 0:
                    crash_to_result.append(time.perf_counter() - start)
                    first_results.append(result)
                if torch.equal(result.output, references[k]):
                    answered += 1
                else:
                    lost += 1
            deadline = time.monotonic() + 10
            while (sum(e.kind is EventKind.FAILOVER for e in list(events)) == failovers
                   and time.monotonic() < deadline):
                time.sleep(0.005)  # the event thread may trail the answer
            new = [e for e in list(events) if e.kind is EventKind.FAILOVER][failovers:]
            warm_flags.extend(bool(e.warm) for e in new)
            failures = [e for e in list(events) if e.kind in (EventKind.CRASH, EventKind.HANG)
                        and e.time >= wall and e.role == "active"]
            if failures and failures[0].duration_s is not None:
                detect.append(failures[0].duration_s)
                if first_results and first_results[-1].attempts > 1:
                    _split(parts, first_results[-1])
        takeover = [e.duration_s for e in events if e.kind is EventKind.FAILOVER]
        ready = [e.duration_s for e in events if e.kind is EventKind.STANDBY_READY]
        info = {k: v for k, v in served.worker_info().items() if k != "warm_output"}
        stats = served.stats()
    finally:
        served.close()
    return {
        "mode": mode, "config": {k: getattr(v, "value", v)
                                 for k, v in vars(mode_config(mode, base)).items()},
        "startup_s": startup_s, "steady_latency": _quantiles(steady_times),
        "crash_to_result": _quantiles(crash_to_result), "crash_to_result_all_s": crash_to_result,
        "crash_to_detection": _quantiles(detect),
        "failover_takeover": _quantiles(takeover), "worker_ready": _quantiles(ready),
        "breakdown": {k: _quantiles(v) for k, v in parts.items()},
        "requests": reps * burst, "answered_correct": answered, "lost": lost,
        "warm_failovers": sum(warm_flags), "failovers": len(warm_flags),
        "last_worker_info": info, "stats": stats,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench failover`."""
    parser.add_argument("--model", default=models.DEFAULT_MODEL,
                        choices=models.available() + zoo.available(),
                        help="a bundled model, or a zoo model (224 px, robot scale)")
    parser.add_argument("--samples", type=positive_int, default=64,
                        help="distinct inputs (a zoo model's references cost one each)")
    parser.add_argument("--backend", default="protect", choices=("plain", "protect"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (skips without CUDA)")
    parser.add_argument("--crash", default="segfault", choices=[k.value for k in CrashKind])
    parser.add_argument("--reps", type=positive_int, default=20,
                        help="crashes per mode (>= 20 to report)")
    parser.add_argument("--burst", type=nonnegative_int, default=5,
                        help="requests submitted right after each crash (the first meets it)")
    parser.add_argument("--steady", type=positive_int, default=50,
                        help="fault-free inferences per mode")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--hang-timeout", type=positive_float, default=2.0)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per worker")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table; 0 on success (also when CUDA is absent: skipped)."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench failover: skipped: --device cuda but this torch sees no CUDA device")
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        print(f"bench failover: unknown mode(s) {unknown}; choose from {MODES}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    crash = CrashKind(args.crash)
    if args.model in models.available():
        samples = models.dataset(args.model, "test")[0][:args.samples]
        reference_model = models.load(args.model).to(args.device)
        with torch.inference_mode():
            references = [reference_model(s.unsqueeze(0).to(args.device)).cpu()
                          for s in samples]
    else:
        samples, references = zoo.images(args.samples, 224, seed=7), None
    base = {"backend": args.backend, "device": args.device, "hang_timeout_s": args.hang_timeout,
            "num_threads": args.threads, "queue_size": max(16, args.burst)}
    in_process = _quantiles(in_process_latency(args.model, args.backend,
                                               samples[:1].to(args.device), args.steady))
    results = []
    for mode in modes:
        print(f"bench failover: {mode} ({args.reps} x {crash.value}) ...", flush=True)
        results.append(bench_mode(mode, args.model, base, crash, args.reps, args.burst, samples,
                                  references, args.steady))
    report = {
        **run_record("save_ros.bench_failover", device=args.device),
        "model": args.model, "backend": args.backend, "device": args.device,
        "crash": crash.value, "reps": args.reps, "burst": args.burst,
        "in_process_latency": in_process, "modes": results,
    }
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, report)
    return 0


def format_table(report: dict[str, Any]) -> str:
    """The results as a markdown table, ratios against the warm standby."""
    rows = {r["mode"]: r for r in report["modes"]}
    warm = rows.get("warm_standby", {}).get("crash_to_result", {}).get("median_s")
    lines = [
        f"model {report['model']}, backend {report['backend']}, device {report['device']}, "
        f"crash {report['crash']}, {report['reps']} crashes x {report['burst']} requests; "
        f"in-process inference median {report['in_process_latency']['median_s'] * 1e3:.2f} ms",
        "",
        "| mode | crash to result median (ms) | p95 (ms) | x warm | detection median (ms) | "
        "takeover median (ms) | new worker ready median (ms) | steady latency median (ms) | "
        "lost / requests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        c = r["crash_to_result"]
        ratio = f"{c['median_s'] / warm:.1f}" if warm and c else "-"
        lines.append(
            f"| {mode} | {c.get('median_s', float('nan')) * 1e3:.1f} | "
            f"{c.get('p95_s', float('nan')) * 1e3:.1f} | {ratio} | "
            f"{r['crash_to_detection'].get('median_s', float('nan')) * 1e3:.1f} | "
            f"{r['failover_takeover'].get('median_s', float('nan')) * 1e3:.1f} | "
            f"{r['worker_ready'].get('median_s', float('nan')) * 1e3:.0f} | "
            f"{r['steady_latency'].get('median_s', float('nan')) * 1e3:.2f} | "
            f"{r['lost']} / {r['requests']} |")
    lines += ["", "The crashed request, median (p95) ms. "
              + "; ".join(f"{k}: {v}" for k, v in BREAKDOWN.items()) + ".", "",
              "| mode | " + " | ".join(BREAKDOWN) + " |", "|---" * (len(BREAKDOWN) + 1) + "|"]
    for mode, r in rows.items():
        cells = [f"{q['median_s'] * 1e3:.1f} ({q['p95_s'] * 1e3:.1f})" if q else "-"
                 for q in (r.get("breakdown", {}).get(k, {}) for k in BREAKDOWN)]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.eval.bench.failover")


if __name__ == "__main__":
    sys.exit(main())
