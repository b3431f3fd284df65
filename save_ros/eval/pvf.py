"""`save-ros robustness pvf`: per-layer parameter vulnerability factor of a model's weights.

PVF of a layer = the share of single-bit flips in that layer's parameters (weights and bias,
drawn uniformly per bit) that change the output: the top-1 class (or action) of at least one
sample of a fixed evaluation batch differs from the fault-free run, or an output turns NaN/Inf.
Each flip is one independent trial, so the Wilson 95% interval is over flips. The per-sample
share (how many inferences of the batch a flip corrupts, on average) is reported next to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from save_ros.argtypes import positive_int
from save_ros.eval import model_cli
from save_ros.eval.campaign import EvalSetup
from save_ros.eval.methods import model_args
from save_ros.eval.metrics import Proportion, compare
from save_ros.eval.record import run_record, write_json
from save_ros.eval.table import render
from save_ros.faults import RandomFlips, apply_bit_faults, weight_sites
from save_ros.faults.records import UndoLog


def layers_of(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Layer (module path) -> its own parameters, in model order."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        out.setdefault(name.rpartition(".")[0], {})[name] = p.detach()
    return out


def layer_pvf(setup: EvalSetup, samples: int = 200, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> dict:
    """Measure the PVF of every parameterised layer with `samples` single-bit flips each."""
    model = setup.build().eval()
    x = setup.x
    with torch.inference_mode():
        clean = model(*model_args(x))
    rows = []
    for li, (layer, tensors) in enumerate(layers_of(model).items()):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + li)
        sites = weight_sites(tensors)
        total = sum(s.numel * s.width for s in sites)
        n = min(samples, total)
        hits = per_sample = nonfinite = 0
        for f in RandomFlips(n).sample(sites, gen):  # distinct bits of this layer
            log = UndoLog(apply_bit_faults(tensors, [f]))
            try:
                with torch.inference_mode():
                    out = model(*model_args(x))
            finally:
                log.undo(tensors)
            o = compare(clean, out, torch.zeros(len(x), dtype=torch.bool),
                        tolerance=setup.tolerance)
            hits += bool(o.changed.any())
            per_sample += int(o.changed.sum())
            nonfinite += bool(o.nonfinite.any())
        rows.append({
            "layer": layer, "tensors": list(tensors), "params": sum(t.numel() for t in
                                                                    tensors.values()),
            "bits": total, "flips": n, "pvf": Proportion(hits, n).to_dict(),
            "per_sample": Proportion(per_sample, n * len(x)).to_dict(),
            "nonfinite": Proportion(nonfinite, n).to_dict(),
        })
        if progress:
            progress(f"{setup.name} {layer}: PVF {hits / max(n, 1):.3f} over {n} flips")
    return {"layers": rows}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros robustness pvf`."""
    model_cli.add_arguments(parser)
    parser.add_argument("--samples", type=int, default=200, help="single-bit flips per layer")
    parser.add_argument("--batch", type=positive_int, default=128,
                        help="evaluation samples: a fixed strided subset of the test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def run(args: argparse.Namespace) -> int:
    """Measure and print per-layer PVF."""
    from save_ros.models import ModelError

    torch.set_num_threads(max(1, args.threads))
    if args.samples < 1:
        print("save-ros robustness pvf: --samples must be >= 1", file=sys.stderr)
        return 2
    try:
        setup = model_cli.setup_from_args(args, args.batch, episodes=0)
    except ModelError as exc:  # models.loader.ModelLoadError is one
        print(f"save-ros robustness pvf: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    result = layer_pvf(setup, args.samples, args.seed,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    result.update(run_record("save_ros.pvf", started))
    result.update({"model": args.model, "eval_data": setup.data, "samples": args.samples,
                   "seed": args.seed, "wall_s": time.time() - started})
    print(render(["layer", "params", "flips", "PVF [95% CI]", "per-sample"],
                 [[r["layer"], r["params"], r["flips"],
                   f"{r['pvf']['rate']:.3f} [{r['pvf']['ci95'][0]:.3f}, "
                   f"{r['pvf']['ci95'][1]:.3f}]", f"{r['per_sample']['rate']:.4f}"]
                  for r in result["layers"]], align="lrrlr",
                 notes=["PVF: share of single-bit flips in the layer's parameters that change "
                        "the top-1 of at least one sample (or make an output NaN/Inf); "
                        "per-sample: share of the batch's samples a flip changes, on average"]))
    if args.json:
        write_json(args.json, result)
    return 0
