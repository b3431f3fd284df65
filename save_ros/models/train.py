"""`save-ros maintainer train`: re-train the bundled reference models with fixed seeds.

Each model is trained on its `train` split with a fixed recipe and seed (torch, numpy and the
gymnasium env seeds), then its weights (`<name>.pt`, a state dict) and a JSON of metrics
(`<name>.json`: accuracy or success rate, parameters, training time, seed, versions) are written
to `save_ros/models/weights/` (or `--out`). The last epoch's weights are kept: no test-set
model selection. Single-threaded by default so the numbers do not depend on the host's cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from save_ros import models
from save_ros.argtypes import positive_int
from save_ros.models import cartpole, digits_data


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: AdamW with a cosine schedule, optional pixel-shift augmentation."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    shift_augment: int = 0  # max pixel shift of the digits augmentation; 0 = none
    label_smoothing: float = 0.0


RECIPES: dict[str, Recipe] = {
    "digits_cnn": Recipe(epochs=60, lr=3e-3, weight_decay=1e-4, batch_size=64, shift_augment=1),
    "digits_resnet": Recipe(epochs=40, lr=3e-3, weight_decay=1e-4, batch_size=64, shift_augment=1),
    "digits_vit": Recipe(
        epochs=150, lr=2e-3, weight_decay=5e-2, batch_size=64, shift_augment=1,
        label_smoothing=0.1,
    ),
    "cartpole_policy": Recipe(epochs=15, lr=3e-3, weight_decay=0.0, batch_size=256),
}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; the generator that drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    generator: torch.Generator,
) -> list[float]:
    """Train `model` in place with cross-entropy on (x, y); the mean loss of each epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = (len(x) + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.1
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    losses: list[float] = []
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            xb = x[idx]
            if recipe.shift_augment:
                xb = digits_data.shift_augment(xb, generator, recipe.shift_augment)
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    model.eval()
    return losses


def train_model(name: str, seed: int = 0, out_dir: Path | None = None) -> dict:
    """Train one bundled model from scratch, write its weights and metrics; the metrics."""
    spec = models.get_spec(name)
    recipe = RECIPES[name]
    generator = seed_everything(seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    x, y = models.dataset(name, "train")
    model = spec.build()
    if spec.task is models.Task.CONTROL:
        # train on states scaled to [-1, 1], then fold the scale into the first layer
        scale = cartpole.input_scale()
        losses = fit(model, x * scale, y, recipe, generator)
        cartpole.fold_input_scale(model, scale)
    else:
        losses = fit(model, x, y, recipe, generator)
    train_s = time.perf_counter() - start
    train_cpu_s = time.process_time() - start_cpu  # robust to other jobs sharing the cores
    model = model.float().eval()

    metrics: dict = {
        "model": name,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "train_samples": len(x),
        "train_seconds": round(train_s, 2),
        "train_cpu_seconds": round(train_cpu_s, 2),
        "final_train_loss": round(losses[-1], 5),
        "recipe": asdict(recipe),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if spec.task is models.Task.CONTROL:
        xt, yt = models.dataset(name, "test")
        with torch.no_grad():
            metrics["test_action_agreement"] = float((model(xt).argmax(1) == yt).float().mean())
        metrics["test_samples"] = len(xt)
        metrics["episodes"] = 100
        metrics["episode_seed0"] = cartpole.EVAL_SEED0
        metrics["success_rate"] = models.evaluate(name, model, episodes=100)
        train_abs_max = x.abs().max(dim=0).values
        metrics["train_state_abs_max"] = [round(float(v), 4) for v in train_abs_max]
    else:
        metrics["calib_accuracy"] = models.evaluate(name, model, split="calib")
        metrics["test_accuracy"] = models.evaluate(name, model, split="test")
        metrics["test_samples"] = len(models.dataset(name, "test")[0])

    metrics["batch1_forward_us"] = batch1_forward_us(model, spec.input_shape)

    out = Path(out_dir) if out_dir is not None else spec.weights_path.parent
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / spec.weights_path.name)
    (out / spec.metrics_path.name).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def batch1_forward_us(model: nn.Module, input_shape: tuple[int, ...], runs: int = 20) -> dict:
    """Batch-1 forward time in microseconds: median thread CPU time and median wall time.

    Each of `runs` samples is the mean of 50 forwards. CPU time of the calling thread (torch runs
    single-threaded here) is what a forward costs; wall time also counts waiting for a core, so
    on a shared machine it is the noisier of the two.
    """
    x = torch.zeros((1, *input_shape))
    cpu: list[float] = []
    wall: list[float] = []
    with torch.inference_mode():
        for _ in range(20):  # warm-up: first calls allocate
            model(x)
        for _ in range(runs):
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(50):
                model(x)
            cpu.append((time.thread_time() - c0) / 50 * 1e6)
            wall.append((time.perf_counter() - w0) / 50 * 1e6)
    return {
        "cpu_median": round(sorted(cpu)[runs // 2], 1),
        "wall_median": round(sorted(wall)[runs // 2], 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `save-ros maintainer train`."""
    parser.add_argument(
        "--model", default="all", help=f"one of {', '.join(models.available())}, or all"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of torch, numpy and shuffling")
    parser.add_argument("--out", type=Path, default=None, help="directory (default: the package)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")


def run(args: argparse.Namespace) -> int:
    """Train the requested models and print one summary line each."""
    names = models.available() if args.model == "all" else [args.model]
    try:
        for name in names:
            models.get_spec(name)  # fail before any training on a bad name
    except models.UnknownModelError as exc:
        print(f"save-ros maintainer train: {exc}", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        print(f"save-ros maintainer train: error: --out {args.out} is a file; pass a folder",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for name in names:
        m = train_model(name, seed=args.seed, out_dir=args.out)
        score = (
            f"success {m['success_rate']:.2%} over {m['episodes']} episodes"
            if "success_rate" in m
            else f"test accuracy {m['test_accuracy']:.2%}"
        )
        print(f"{name}: {m['params']} params, {score}, trained in {m['train_seconds']:.1f} s "
              f"({m['train_cpu_seconds']:.1f} s CPU)")
    return 0
