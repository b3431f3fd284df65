"""Decision diversity of the zoo's models, plain torchvision init vs input-dependent.

    python -m save_ros.eval.zoo_report [--models resnet18,...] [--images 256] [--json FILE]

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


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    from save_ros.models import zoo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.available()))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    result = measure([m for m in args.models.split(",") if m], args.images, args.device)
    result.update(run_record("save_ros.zoo_report", started,
                             ["python", "-m", "save_ros.eval.zoo_report", *(argv or sys.argv[1:])]))
    result["wall_s"] = time.time() - started
    print(table(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
