"""Decision diversity of the zoo's models, plain torchvision init vs input-dependent.

    save-ros maintainer zoo-report [--models resnet18,...] [--images 256] [--json FILE]

For each model: the build time (seeded init, and init + calibration), and `decision_report` over
the registry's test images (`zoo_data`: seeded, disjoint from the calibration images) for the
plain init and for the input-dependent model. The figures go to docs/results/zoo.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from save_ros.argtypes import positive_int, standalone
from save_ros.eval.record import run_record, write_json


def measure(names: list[str], n_images: int, device: str = "cpu") -> dict:
    """Build and report every model in `names` on the first `n_images` test images."""
    from save_ros.models import zoo, zoo_data

    x = zoo.images(n_images, zoo_data.INPUT_SHAPE[-1], zoo_data.SEEDS["test"]).to(device)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        plain = zoo.build(name, input_dependent=False)
        t1 = time.perf_counter()
        zoo.clear_cache()
        model = zoo.build(name)
        t2 = time.perf_counter()
        rows.append({
            "model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "build_s": t1 - t0, "build_calibrated_s": t2 - t1,
            "plain": zoo.decision_report(plain.to(device), x),
            "input_dependent": zoo.decision_report(model.to(device), x),
        })
        print(f"{name}: {rows[-1]['input_dependent']}", file=sys.stderr, flush=True)
    return {"images": n_images, "image_seed": zoo_data.SEEDS["test"],
            "image_source": zoo.image_source(), "calibration_images": zoo.CALIB_IMAGES,
            "logit_std_target": zoo.LOGIT_STD, "device": device, "models": rows}


def table(result: dict) -> str:
    """Markdown table of a `measure` result."""
    lines = ["| model | init | distinct top-1 | most common | differs from it | gap median "
             "| gap p5 | logit std |", "|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        for kind in ("plain", "input_dependent"):
            d = r[kind]
            lines.append(f"| {r['model']} | {kind.replace('_', '-')} | {d['distinct']} | "
                         f"{d['mode_share']:.1%} | {d['differs_from_mode']:.1%} | "
                         f"{d['gap_median']:.3g} | {d['gap_p5']:.3g} | {d['logit_std']:.3g} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `save-ros maintainer zoo-report`."""
    p.add_argument("--models", default=None, help="comma-separated zoo models (default: all)")
    p.add_argument("--images", type=positive_int, default=256, help="test images per model")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON."""
    from save_ros.models import zoo

    torch.set_num_threads(args.threads)
    names = (args.models or ",".join(zoo.available())).split(",")
    started = time.time()
    result = measure([m for m in names if m], args.images, args.device)
    result.update(run_record("save_ros.zoo_report", started))
    result["wall_s"] = time.time() - started
    print(table(result))
    if args.json:
        write_json(args.json, result)
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.eval.zoo_report")


if __name__ == "__main__":
    sys.exit(main())
