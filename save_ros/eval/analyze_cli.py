"""`save-ros analyze`: SAVE Selection on a bundled model, a per-tensor table, and validation.

    save-ros analyze --model digits_cnn [--calibration N] [--out FILE] [--report FILE]
                     [--validate [--per-class K] [--eval-inputs N] [--seed S]]
    save-ros analyze --model my_pkg.nets:make_net --input-shape 3,32,32 --input-range 0,1

`--model` is a bundled or zoo name, or an import path (see `save_ros.eval.model_cli` for the
input options such a model needs).

Prints one row per weight and activation (checked range, looseness of the sound range, shares
of robust / ranging / vulnerable bits, vulnerable bits per byte) and the totals. `--out` saves
the Analysis (JSON or YAML by suffix). `--validate` injects K single flips from each class into
weights and activations (see `save_ros.eval.validate`) on the model's test split.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from save_ros.argtypes import positive_int
from save_ros.core.analysis import Analysis, TensorKind
from save_ros.core.select import SelectConfig, analyze
from save_ros.eval.record import run_record, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `save-ros analyze`."""
    from save_ros import models
    from save_ros.eval import model_cli

    model_cli.add_arguments(parser, default=models.DEFAULT_MODEL)
    parser.add_argument("--calibration", type=int, default=None, metavar="N",
                        help="use the first N calibration samples (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="save the Analysis (.json/.yaml)")
    parser.add_argument("--report", type=Path, default=None,
                        help="save totals, timings and validation as JSON")
    parser.add_argument("--margin", type=float, default=SelectConfig.margin,
                        help="calibration ranges widened by this share of their width")
    parser.add_argument("--fraction", type=float, default=SelectConfig.fraction,
                        help="robust flips move every top-1 gap by at most this fraction")
    parser.add_argument("--gap-quantile", type=float, default=SelectConfig.gap_quantile,
                        help="leave calibration inputs with a top-1 gap below this quantile out "
                             "of the robust claim (0: cover all)")
    parser.add_argument("--validate", action="store_true", help="inject flips from each class")
    parser.add_argument("--per-class", type=positive_int, default=2000, metavar="K")
    parser.add_argument("--eval-inputs", type=positive_int, default=256, metavar="N",
                        help="test inputs of the fixed evaluation batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--scaling", type=str, default=None, metavar="W1,W2,...",
                        help="instead: time the analysis of the digits ViT at these widths "
                             "(random weights, seed 0) to show how time grows with size")


def run_analysis(name: str, calibration: int | None, config: SelectConfig, setup=None
                 ) -> tuple[Analysis, torch.nn.Module, float]:
    """Load a model (bundled, or `setup`'s) and analyse it; return (analysis, model, seconds)."""
    from save_ros import models

    if setup is None:
        spec, model = models.get_spec(name), models.load(name)
        xc, _ = models.dataset(name, "calib")
    else:
        spec, model, xc = setup.spec, setup.build(), setup.calib[0]
    if calibration is not None:
        if calibration < 1:
            raise ValueError(f"--calibration must be >= 1, got {calibration}")
        xc = xc[:calibration]
    t0 = time.perf_counter()
    # a model of several inputs (import path) brings one box per input
    box = (list(spec.input_low), list(spec.input_high)) if hasattr(spec, "input_low") \
        else spec.input_range()
    analysis = analyze(model, xc[:1], box, calibration=xc, config=config)
    return analysis, model, time.perf_counter() - t0


TABLE_NOTES = (
    "range check: which range the runtime's range check uses; sound = interval arithmetic from "
    "the input box (holds for every valid input), calibration = observed on calibration inputs, "
    "widened by the margin",
    "looseness: width of the sound range / width of the calibration range (1 = tight); above "
    f"{SelectConfig.looseness_limit:g} (SelectConfig.looseness_limit) the check uses the "
    "calibration range",
    "robust / ranging / vulnerable: share of the tensor's bits whose single flip cannot change "
    "the result / leaves the range (a range check catches it) / needs redundancy",
    "score: vulnerable bits per byte (Allocation fills the reliable pool in this order)",
)


def table(analysis: Analysis) -> str:
    """The per-tensor table, its legend, and the totals as text."""
    from save_ros.eval.table import render

    rows = []
    for t in analysis.tensors.values():
        bits = t.numel * len(t.bit_shares)
        rows.append([t.name, t.kind.value, t.numel, t.check.value, f"{t.looseness:.3g}",
                     f"{t.robust_bits / bits:.3f}", f"{t.ranging_bits / bits:.3f}",
                     f"{t.vulnerable_bits / bits:.3f}", f"{t.vulnerable_bits:.0f}",
                     f"{t.score:.2f}"])
    lines = [render(["tensor", "kind", "elements", "range check", "looseness", "robust",
                     "ranging", "vulnerable", "vulnerable bits", "score"], rows,
                    align="llrlrrrrrr", notes=TABLE_NOTES)]
    for kind in (TensorKind.WEIGHT, TensorKind.ACTIVATION, None):
        tot = analysis.totals(kind)
        r, g, v = tot.share()
        label = kind.value + "s" if kind else "all"
        lines.append(f"total {label:11s} bits {tot.bits:9d}: robust {r:.4f}  ranging {g:.4f}  "
                     f"vulnerable {v:.4f}  ({tot.vulnerable:.0f} vulnerable bits)")
    if analysis.unsupported:
        lines.append("fell back to calibration ranges: " + "; ".join(analysis.unsupported))
    return "\n".join(lines)


def summary(analysis: Analysis, seconds: float) -> dict:
    """Totals, timings and settings as plain data."""
    out = {"key": analysis.key, "capture": analysis.capture, "seconds": seconds,
           "timings": analysis.timings, "settings": analysis.settings,
           "unsupported": analysis.unsupported, "totals": {}}
    for kind in (TensorKind.WEIGHT, TensorKind.ACTIVATION):
        tot = analysis.totals(kind)
        out["totals"][kind.value] = dict(zip(("robust", "ranging", "vulnerable"), tot.share(),
                                             strict=True)) | {"bits": tot.bits,
                                                              "vulnerable_bits": tot.vulnerable}
    out["checks"] = {
        "sound": sum(1 for t in analysis.activations() if t.check.value == "sound"),
        "calibration": sum(1 for t in analysis.activations() if t.check.value == "calibration"),
    }
    return out


def scaling(widths: list[int], calibration: int | None, config: SelectConfig) -> list[dict]:
    """Analysis time of DigitsViT at several embedding widths (random weights, seed 0)."""
    from save_ros import models
    from save_ros.models.digits_vit import DigitsViT

    spec = models.get_spec("digits_vit")
    xc, _ = models.dataset("digits_vit", "calib")
    xc = xc[:calibration] if calibration else xc
    rows = []
    for width in widths:
        torch.manual_seed(0)
        model = DigitsViT(dim=width).eval()
        t0 = time.perf_counter()
        a = analyze(model, xc[:1], (list(spec.input_low), list(spec.input_high)),
                    calibration=xc, config=config)
        seconds = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        act = sum(t.numel for t in a.activations())
        rows.append({"width": width, "params": params, "activation_elements": act,
                     "seconds": seconds, "timings": a.timings})
        print(f"  ViT width {width:4d}: {params:8d} parameters, {act:6d} activation elements "
              f"per input, analysis {seconds:6.2f} s  "
              + " ".join(f"{k} {v:.2f}" for k, v in a.timings.items() if k != "total"))
    return rows


def run(args: argparse.Namespace) -> int:
    """Entry point of `save-ros analyze`."""
    from save_ros import models
    from save_ros.eval import model_cli
    from save_ros.eval.validate import validate

    torch.set_num_threads(args.threads)
    # out-of-range knobs would not fail, they would mislabel bits (e.g. a negative margin narrows
    # the calibration ranges, a fraction > 1 calls flips that can change top-1 robust)
    bad = (f"--margin must be >= 0, got {args.margin}" if not args.margin >= 0 else
           f"--fraction must lie in (0, 1], got {args.fraction}" if not 0 < args.fraction <= 1
           else f"--gap-quantile must lie in [0, 1), got {args.gap_quantile}"
           if not 0 <= args.gap_quantile < 1 else
           f"--out {args.out}: use a .json, .yaml or .yml file name"
           if args.out and args.out.suffix not in (".json", ".yaml", ".yml") else None)
    if bad:
        print(f"save-ros analyze: error: {bad}", file=sys.stderr)
        return 2
    if args.scaling:
        try:
            widths = [int(w) for w in args.scaling.split(",")]
        except ValueError:
            print("save-ros analyze: --scaling takes widths like 48,96,192", file=sys.stderr)
            return 2
        rows = scaling(widths, args.calibration, SelectConfig(margin=args.margin,
                                                              fraction=args.fraction))
        if args.report:
            write_json(args.report, run_record("save_ros.analyze_scaling")
                       | {"scaling": rows, "threads": args.threads})
        return 0
    if not 0.0 <= args.gap_quantile < 1.0:
        print("save-ros analyze: --gap-quantile must lie in [0, 1)", file=sys.stderr)
        return 2
    config = SelectConfig(margin=args.margin, fraction=args.fraction,
                          gap_quantile=args.gap_quantile)
    try:
        setup = None
        if model_cli.is_user_model(args.model) or ":" in args.model:
            setup = model_cli.setup_from_args(args, args.eval_inputs)
        else:
            stray = [o for o in ("input_shape", "input_range", "task", "tolerance", "inputs")
                     if getattr(args, o, None) is not None]
            if stray:
                raise model_cli.ModelLoadError(
                    f"--{stray[0].replace('_', '-')} is for a model given by import path")
        analysis, model, seconds = run_analysis(args.model, args.calibration, config, setup)
    except (ValueError, models.ModelError) as exc:  # bad arguments or input box: what to change
        print(f"save-ros analyze: {exc}", file=sys.stderr)
        return 2
    print(f"save-ros analyze {args.model}: {len(analysis.tensors)} tensors, capture "
          f"{analysis.capture}, {seconds:.2f} s")
    print(table(analysis))
    if args.out:
        print(f"analysis saved to {analysis.save(args.out)}")
    report = run_record("save_ros.analyze") | {
        "model": args.model, "params": sum(p.numel() for p in model.parameters()),
        "threads": args.threads}
    report |= summary(analysis, seconds)
    if args.validate:
        xt = setup.x if setup is not None else models.dataset(args.model, "test")[0]
        rep = validate(model, analysis, xt[: args.eval_inputs], per_class=args.per_class,
                       seed=args.seed)
        report["validation"] = rep.to_dict()
        print(f"validation: {args.per_class} flips per class, {rep.eval_inputs} test inputs "
              f"({rep.covered_inputs} covered: top-1 gap >= {rep.min_gap:.3g}), "
              f"{rep.seconds:.1f} s")
        for kind, res in (("weights", rep.weights), ("activations", rep.activations)):
            for cls, r in res.items():
                print(f"  {kind:11s} {cls:10s} flips {r.flips:6d}  changed top-1 {r.changed:5d} "
                      f"({r.changed_rate:.2%}; any input {r.changed_any}, per inference "
                      f"{r.changed_inferences}/{r.inferences})  inside range {r.inside_range}")
    if args.report:
        write_json(args.report, report)
    return 0
