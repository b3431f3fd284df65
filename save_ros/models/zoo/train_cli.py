"""`save-ros maintainer train-zoo`: train the zoo's architectures on procedural scenes (zoo.train).

Per model it writes `<name>.pt` (the state dict; fp16 by default, in shards of at most
`--shard-mib` MiB where one file would be larger) and `<name>.json` (the training record:
held-out accuracy, steps, time, seed, recipe, the loss curve) to `--out`, and one line
`<name>: ...` per model. `zoo.build(name, weights=OUT)` and `save-ros bench scale --trained OUT`
load them. On a GPU in minutes (`--seconds`, e.g. the H100 shares in `SECONDS_H100`); on a CPU
only at a small `--size` with a few `--steps` (a smoke run, not a trained model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from save_ros.argtypes import comma_list, positive_float, positive_int, standalone
from save_ros.models import zoo
from save_ros.models.zoo import scenes as sc
from save_ros.models.zoo.train import AMP, RECIPES, SECONDS_H100, TrainConfig, evaluate, train
from save_ros.models.zoo.weights import save_state

SAVE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def _model_name(text: str) -> str:
    if text not in RECIPES:
        raise ValueError(text)
    return text


def seconds_spec(text: str) -> dict[str, float] | float:
    """argparse type: one number of seconds for every model, or `name=seconds,...`."""
    if "=" not in text:
        return positive_float(text)
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in RECIPES:
            raise argparse.ArgumentTypeError(f"unknown model {name.strip()!r} in --seconds; "
                                             f"the zoo has {', '.join(RECIPES)}")
        out[name.strip()] = positive_float(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros maintainer train-zoo`."""
    parser.add_argument("--models", "--model", type=comma_list(_model_name, ", ".join(RECIPES)),
                        default=tuple(RECIPES), help="comma-separated zoo names (default all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=positive_int, default=224, help="image side (pixels)")
    parser.add_argument("--classes", type=positive_int, default=len(sc.SHAPES),
                        help=f"scene classes, 2..{len(sc.SHAPES)} (the first N shapes)")
    parser.add_argument("--seconds", type=seconds_spec, default=None,
                        help="training time per model: one number, or name=s,... (default: "
                             + ", ".join(f"{k}={v:g}" for k, v in SECONDS_H100.items())
                             + " without --steps)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="stop after this many steps (with --seconds: whichever is first)")
    parser.add_argument("--batch", type=positive_int, default=None, help="default per recipe")
    parser.add_argument("--lr", type=positive_float, default=None, help="default per recipe")
    parser.add_argument("--amp", choices=AMP, default="auto",
                        help="autocast: auto (CUDA bf16, CPU off), bf16, fp16 (CUDA), off")
    parser.add_argument("--seed", type=int, default=0, help="init and training-scene seed")
    parser.add_argument("--test-images", type=positive_int, default=1000,
                        help=f"held-out scenes for the accuracy (seed {sc.TEST_SEED})")
    parser.add_argument("--save-dtype", choices=tuple(SAVE_DTYPES), default="fp16",
                        help="dtype of the saved weights (they load back as fp32)")
    parser.add_argument("--shard-mib", type=positive_float, default=None,
                        help="split a weights file larger than this into parts")
    parser.add_argument("--no-weights", action="store_true",
                        help="write only the JSON record")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU torch threads")
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>.pt/.json")


def _seconds(args: argparse.Namespace, name: str) -> float | None:
    spec = args.seconds
    if isinstance(spec, dict):
        return spec.get(name, SECONDS_H100[name])
    if spec is not None:
        return spec
    return None if args.steps is not None else SECONDS_H100[name]


def run(args: argparse.Namespace) -> int:
    """Train every model in `--models`; write its weights and record; one line each."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        print(f"save-ros maintainer train-zoo: error: --out {args.out} is a file; pass a folder",
              file=sys.stderr)
        return 2
    for name in args.models:
        cfg = TrainConfig(model=name, device=args.device, size=args.size, classes=args.classes,
                          steps=args.steps, seconds=_seconds(args, name), seed=args.seed,
                          amp=args.amp, test_images=args.test_images,
                          overrides={"batch": args.batch, "lr": args.lr})
        model, record = train(cfg, progress=lambda line: print(line, flush=True))
        if not args.no_weights:
            shard = None if args.shard_mib is None else int(args.shard_mib * 2**20)
            paths = save_state(model, args.out, name, SAVE_DTYPES[args.save_dtype], shard)
            record["weights"] = {"files": [p.name for p in paths], "dtype": args.save_dtype,
                                 "bytes": sum(p.stat().st_size for p in paths)}
            if args.save_dtype != "fp32":  # what a user of the file gets: rounded weights
                saved = zoo.build(name, image_size=args.size, weights=args.out)
                t = evaluate(saved.to(args.device), args.size, args.classes, args.test_images,
                             torch.device(args.device))
                record["test_saved_weights"] = {k: t[k] for k in ("accuracy", "loss",
                                                                  "gap_median")}
                del saved
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        t = record["test"]
        saved_acc = record.get("test_saved_weights", {}).get("accuracy")
        print(f"{name}: held-out accuracy {t['accuracy']:.1%}"
              + (f" ({saved_acc:.1%} from the saved {args.save_dtype} weights)"
                 if saved_acc is not None else "") + f" on {t['images']} scenes (chance "
              f"{t['chance']:.0%}), top-1 gap median {t['gap_median']:.2f}, {record['steps']} "
              f"steps, {record['images_seen']} images in {record['train_seconds']:.0f} s "
              f"({record['img_per_s']:.0f} img/s) on {record['device']}", flush=True)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.models.zoo.train_cli")


if __name__ == "__main__":
    sys.exit(main())
