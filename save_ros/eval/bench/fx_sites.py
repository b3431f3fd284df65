"""What fx-node activation sites cost a campaign: forward passes side by side, as ratios.

    save-ros bench fx-sites [--reps 200] [--json FILE]   (python -m save_ros.eval.bench.fx_sites)

Per model, interleaved in one run (CPU latencies only as ratios): the plain model; the model
inside an fx-site fault context with no fault due (taps fire and return their input); with one
activation fault (one corrupted copy); module-hook sites with one fault (the old way); and the
same graph run by `torch.fx.Interpreter` (the alternative the taps avoid). Median per pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import fx, nn

from save_ros.argtypes import positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.faults import ActivationFaults, BitFault, Target, TargetKind, activation_sites


def _cases(model: nn.Module, x: torch.Tensor) -> dict:
    fx_site = activation_sites(model, x, Target(TargetKind.ACTIVATIONS, sites="fx"))[-2]
    mod_site = activation_sites(model, x, Target(TargetKind.ACTIVATIONS))[-2]
    interp = fx.Interpreter(fx.symbolic_trace(model))

    def in_context(faults, sites):
        def run():
            with ActivationFaults(model, faults, sites=sites):
                model(x)
        return run

    return {
        "plain": lambda: model(x),
        "fx_taps_idle": _idle(model, x),
        "fx_taps_one_fault": in_context([BitFault(fx_site.name, 0, 30)], "fx"),
        "module_hooks_one_fault": in_context([BitFault(mod_site.name, 0, 30)], "modules"),
        "fx_interpreter": lambda: interp.run(x),
    }


def _idle(model: nn.Module, x: torch.Tensor):
    """The tapped forward with a context active whose fault is already spent (taps all idle)."""
    from save_ros.faults import fxsites

    taps = fxsites.fx_taps(model)

    def run():
        with fxsites.tapped(model, taps, lambda v, _name: v):
            model(x)
    return run


def measure(models: dict[str, tuple[nn.Module, torch.Tensor]], reps: int) -> list[dict]:
    """Median seconds per pass of every case, the cases interleaved rep by rep."""
    rows = []
    for name, (model, x) in models.items():
        cases = _cases(model, x)
        times: dict[str, list[float]] = {k: [] for k in cases}
        with torch.inference_mode():
            for fn in cases.values():  # warm-up
                fn()
            for _ in range(reps):
                for k, fn in cases.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": name, "input": list(x.shape), "median_s": med,
                     "ratio_to_plain": {k: v / med["plain"] for k, v in med.items()}})
        print(f"{name}: " + ", ".join(f"{k} x{v:.3f}" for k, v in
                                      rows[-1]["ratio_to_plain"].items()), file=sys.stderr)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `save-ros bench fx-sites`."""
    p.add_argument("--reps", type=positive_int, default=200, help="timed passes per case")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")


def run(args: argparse.Namespace) -> int:
    """Measure digits_cnn, digits_vit (batch 1) and resnet18 (batch 1, 64 px)."""
    from save_ros import models
    from save_ros.models import zoo

    torch.set_num_threads(args.threads)
    xd = models.dataset("digits_cnn", "test")[0][:1]
    cases = {"digits_cnn": (models.load("digits_cnn"), xd),
             "digits_vit": (models.load("digits_vit"), xd),
             "resnet18@64px": (zoo.build("resnet18", image_size=64), torch.rand(1, 3, 64, 64))}
    started = time.time()
    rows = measure(cases, args.reps)
    result = run_record("save_ros.bench_fx_sites", started)
    result |= {"reps": args.reps, "rows": rows}
    if args.json:
        write_json(args.json, result)
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.eval.bench.fx_sites")


if __name__ == "__main__":
    sys.exit(main())
