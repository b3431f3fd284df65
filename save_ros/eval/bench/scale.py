"""`save-ros bench scale`: SAVE at robot scale, through `protect()` as users call it.

Per model (the zoo's torchvision-faithful ResNet-18/50, MobileNetV2, ViT-B/16, input-dependent;
or any `package.module:factory`), on the chosen device:

- analysis: time of `analyze()` and its peak memory, beside the peak of one plain forward;
- speed: per (dtype, batch), the verified latency of `protect(...).infer(x)` against the
  unprotected model's best configuration (a CUDA graph of the same dtype on a GPU, the plain
  module on a CPU), measured interleaved in one run; the ratio is the AccurateLatency ratio of a
  fault-free run (error rate 0 for both), and `accurate_ratio_1e-3` adds one weight flip per
  1,000 inferences with the error rate and repair time the coverage section measured;
- coverage (fp32, batch 1): weight-flip, activation-flip and clean trials (`scale_coverage`),
  in keyed chunks that run here, in `--workers N` processes (one per visible GPU on CUDA) or on
  a Ray cluster (`--ray`), kept in `--store FILE` and continued with `--resume` (`scale_shard`).

With `--trained DIR` (weights from `save-ros maintainer train-zoo`) each zoo model also runs
trained, as row `NAME@trained` beside its random init (`scale_inits`). Writes one JSON (`--out`)
and prints a table. Absolute times count only from a GPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from save_ros.argtypes import (
    comma_list,
    positive_float,
    positive_int,
    positive_int_list,
    standalone,
)
from save_ros.errors import UserError
from save_ros.eval import shard_cli
from save_ros.eval.bench import scale_inits, scale_shard
from save_ros.eval.bench.scale_plain import CANDIDATES, best_plain
from save_ros.eval.record import run_record, write_json
from save_ros.eval.store import TrialStore
from save_ros.eval.table import counts_text
from save_ros.eval.timing import median_ms, thread_cpu_us

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class NoDeviceError(UserError, RuntimeError):
    """The device asked for is not there (the message says what to use)."""


def _on_off(text: str) -> str:
    if text not in ("on", "off"):
        raise ValueError(f"{text!r}: use on or off")
    return text


def _dtype(text: str) -> str:
    if text not in DTYPES:
        raise ValueError(text)
    return text


def _baseline(text: str) -> str:
    if text not in CANDIDATES:
        raise ValueError(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench scale`."""
    parser.add_argument("--models", default="resnet50,vit_b_16,mobilenet_v2",
                        help="zoo names or package.module:factory, comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=positive_int, default=224, help="image side (pixels)")
    parser.add_argument("--what", default="analysis,speed,coverage",
                        help="sections to run: analysis, speed, coverage")
    parser.add_argument("--dtypes", type=comma_list(_dtype, "dtypes among fp32,fp16"),
                        default=("fp32", "fp16"), help="speed: fp32, fp16")
    parser.add_argument("--batches", type=positive_int_list, default=(1, 8),
                        help="speed: batch sizes")
    parser.add_argument("--iters", type=positive_int, default=200, help="speed: timed calls")
    parser.add_argument("--redundancy", default="full",
                        help="ProtectConfig.redundancy_budget settings to run, comma-separated: "
                             "'full' (every vulnerable bit) or a share of a forward pass")
    parser.add_argument("--calibration", type=positive_int, default=256,
                        help="calibration images for Selection")
    parser.add_argument("--trials", type=positive_int, default=10_000,
                        help="coverage: trials per section (weights, activations)")
    parser.add_argument("--clean", type=positive_int, default=10_000,
                        help="coverage: fault-free inferences (false alarms)")
    parser.add_argument("--seconds", type=positive_float, default=None,
                        help="coverage, one process: time budget per section, checked between "
                             "chunks of 50 trials (default 120; weight and activation sections "
                             "get half each; stops early and says so); ignored by --workers "
                             "and --ray runs")
    parser.add_argument("--chunk", type=positive_int, default=scale_shard.CHUNK,
                        help="coverage: trials per chunk, the unit that is stored, resumed and "
                             "spread over workers (part of the seeds: keep it to compare runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-checksums", type=comma_list(_on_off, "on,off"),
                        default=("on",), help="speed: with memory checksums (on), without "
                        "(off: DMR / ABFT / range as before), or both (on,off)")
    parser.add_argument("--baselines", default=CANDIDATES,
                        type=comma_list(_baseline, ",".join(CANDIDATES)),
                        help="GPU: unprotected configurations to try; the fastest is the "
                             f"baseline ({', '.join(CANDIDATES)}; the CPU uses eager)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads on the CPU (default: torch's; each of --workers N "
                             "CPU processes: cores / N; each Ray task: 1)")
    scale_inits.add_arguments(parser, comma_list)
    parser.add_argument("--out", help="write the results as JSON here")
    shard_cli.add_arguments(parser, device=False)  # --workers --ray --store --resume: coverage


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: torch.device, rss0: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0


def analysis_section(model, x, calib, device) -> tuple[object, dict]:
    """Time and peak memory of analyze(), beside one plain forward's peak."""
    from save_ros.core.graph import capture
    from save_ros.core.select import analyze

    with torch.no_grad():
        model(x)  # warm-up: cuDNN handles, lazy init
        _, values = capture(model, x).record(x)
    # one forward pass: the weights and every node's output at batch 1 (all kept: an upper bound)
    fwd = (sum(t.numel() * t.element_size() for t in model.state_dict().values())
           + sum(v.numel() * v.element_size() for v in values.values()
                 if isinstance(v, torch.Tensor))) / 2**20
    del values
    _peak_reset(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    a = analyze(model, x, (0.0, 1.0), calib)
    if device.type == "cuda":
        torch.cuda.synchronize()
    # CUDA: peak allocated during analyze(); CPU: growth of the process's peak RSS
    row = {"seconds": time.perf_counter() - t, "peak_mb": _peak_mb(device, rss0),
           "forward_mb": fwd, "timings": a.timings, "task": a.task,
           "unsupported": a.unsupported, "settings": {k: a.settings[k] for k in (
               "sens_samples", "competitors", "sens_directions", "sens_batched",
               "calibration_samples", "parameters") if k in a.settings}}
    tot = a.totals()
    row["bit_shares"] = dict(zip(("robust", "ranging", "vulnerable"), tot.share(), strict=True))
    return a, row


def _print_speed(red: str, mc: str, dt: str, b: int, r: dict) -> None:
    cov_share = r["coverage"]["covered_bits"] / max(r["coverage"]["vulnerable_bits"], 1)
    cpu = f", thread-CPU ratio {r['thread_cpu_ratio']:.3f}" if r["thread_cpu_ratio"] else ""
    print(f"  {red} memory checksums {mc} {dt} b{b}: plain ({r['baseline']}) "
          f"{r['plain_ms']:.3f} ms, protected "
          f"{r['protected_ms']:.3f} ms, ratio {r['ratio']:.3f}{cpu}; checks: "
          f"{counts_text(r['checks'])}; covers {cov_share:.1%} of the vulnerable bits", flush=True)


def _budget(text: str) -> float | None:
    return None if text == "full" else float(text)


def speed_section(base, analysis, calib, dtype, batch, iters, size, device,
                  budget: float | None = None, memory_checksums: bool = True,
                  baselines: tuple[str, ...] = CANDIDATES) -> dict:
    """Verified protected latency vs the unprotected best, interleaved in one run."""
    from save_ros.core.protect import ProtectConfig, protect

    x = calib[:batch].to(dtype) if len(calib) >= batch else calib[:1].repeat(batch, 1, 1, 1)
    x = x.to(dtype)
    plain = copy.deepcopy(base).to(dtype)
    model = copy.deepcopy(base).to(dtype)
    t = time.perf_counter()
    pm = protect(model, x, (0.0, 1.0), ProtectConfig(calibration=calib.to(dtype),
                                                     analysis=analysis,
                                                     redundancy_budget=budget,
                                                     memory_checksums=memory_checksums))
    setup = time.perf_counter() - t
    plain_fn, baseline, baselines_ms = best_plain(plain, x, baselines)

    def prot():
        r = pm.infer(x)
        assert r.status is not None

    for _ in range(10):
        plain_fn()
        prot()
    a, b, ca, cb = [], [], [], []
    for _ in range(max(1, iters // 20)):  # interleaved blocks: drift hits both alike
        a.append(median_ms(plain_fn, 20))
        b.append(median_ms(prot, 20))
        if device.type == "cpu":  # the calling thread's CPU time: what neighbours do not add
            ca.append(thread_cpu_us(plain_fn, 10, 5))
            cb.append(thread_cpu_us(prot, 10, 5))
    pa, pb = statistics.median(a), statistics.median(b)
    st = pm.stats()
    row = {"dtype": str(dtype).removeprefix("torch."), "batch": batch,
           "redundancy_budget": budget, "coverage": pm._plan.coverage,
           "plain_ms": pa, "protected_ms": pb, "ratio": pb / pa, "setup_s": setup,
           "baseline": baseline, "baselines_ms": baselines_ms,
           "memory_checksums": memory_checksums, "threads": torch.get_num_threads(),
           "thread_cpu_ratio": min(cb) / min(ca) if ca else None,
           "checks": pm._plan.by_kind(), "verified": st["verified"],
           "inferences": st["inferences"], "faulty": st["faulty"],
           "device_alarms": getattr(pm, "device_alarms", None),
           "placement": pm.placement.summary()}
    pm.close()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run(args: argparse.Namespace) -> int:
    """Run the chosen sections for every model; print a table, write JSON."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NoDeviceError(f"--device {args.device}: no CUDA device is visible to torch "
                            f"{torch.__version__}; measure on the CPU with --device cpu (CPU "
                            "latencies count only as ratios) or run on a GPU host")
    what = set(args.what.split(","))
    models = [m for m in args.models.split(",") if m]
    rows = scale_inits.rows(models, args.init, args.trained)
    store = None
    if "coverage" in what:  # bad options or store fail now, not after the analysis
        scale_shard.check_options(args)
        store = TrialStore(args.store or ":memory:", scale_shard.spec(args, rows, args.device),
                           resume=args.resume)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = run_record("save_ros.bench_scale", device=device) | {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "models": {}}
    try:
        _rows(args, rows, device, what, results, store)
    finally:
        if store is not None:
            store.close()
    return 0


def _rows(args, rows, device, what, results, store) -> None:
    for name, model_name, weights in rows:
        base = scale_inits.build(model_name, args.size, weights).to(device)
        calib = scale_inits.calibration(weights, model_name, args.calibration, args.size,
                                        args.seed, device)
        row: dict = scale_inits.describe(weights, model_name)
        results["models"][name] = row

        def save() -> None:
            if args.out:
                write_json(Path(args.out), results)
        analysis, row["analysis"] = analysis_section(base, calib[:1], calib, device)
        an = row["analysis"]
        print(f"{name}: analysis {an['seconds']:.1f} s, peak {an['peak_mb']:.0f} MB (one "
              f"forward {an['forward_mb']:.0f} MB)", flush=True)
        if "speed" in what:
            row["speed"] = []
            for red in args.redundancy.split(","):
                for mc in args.memory_checksums:
                    for dt in args.dtypes:
                        for b in args.batches:
                            r = speed_section(base, analysis, calib, DTYPES[dt], b, args.iters,
                                              args.size, device, _budget(red), mc == "on",
                                              args.baselines)
                            row["speed"].append(r)
                            _print_speed(red, mc, dt, b, r)
                            save()
        if "coverage" in what:
            row["coverage"] = {}
            for red in args.redundancy.split(","):
                row["coverage"][red] = {}
                scale_shard.run_row(name, model_name, weights, base, calib, analysis, args,
                                    args.device, _budget(red), red, store,
                                    row["coverage"][red])
                save()
        results["models"][name] = row
        if args.out:
            write_json(Path(args.out), results)
        del base
        gc.collect()


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.eval.bench.scale")


if __name__ == "__main__":
    sys.exit(main())
