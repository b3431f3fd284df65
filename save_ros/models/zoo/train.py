"""Train the zoo's architectures on procedural scenes (`save-ros maintainer train-zoo`'s recipe).

The task: `scenes` (10 shape classes under nuisance colour, fill, clutter, light and noise),
a fresh batch rendered on the device every step (training scene seeds never overlap the held-out
ones), so there is no dataset to download or store and no epoch to overfit.

The head: the model keeps its 1,000-logit head, the robot-scale architecture the tables measure
(torchvision's parameter count, last-layer cost and output size), and the N scene classes are
logits 0..N-1. Cross-entropy runs over all 1,000 logits, so the other 990 learn to lose and the
top-1 over all 1,000 is the prediction; accuracy counts exactly that. Replacing the head by an
N-way one would measure another, smaller last layer.

Optimiser: AdamW (decay on weight matrices and kernels only), linear warm-up then cosine decay
over the run's progress; progress is the share of `steps` done or of `seconds` spent, whichever
is larger, so a time budget ends with a decayed learning rate. CUDA trains under autocast
(bf16 by default, fp16 with a gradient scaler), CNNs in channels_last; the CPU trains in fp32
(bf16 autocast if asked). The weights that come out are the last step's (no selection on the
test split).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from save_ros.errors import UserError
from save_ros.models.zoo import scenes as sc

AMP = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one architecture (per-model defaults in `RECIPES`)."""

    lr: float
    batch: int = 128
    weight_decay: float = 0.05
    warmup: float = 0.05  # share of the run spent warming up
    clip: float | None = None  # max gradient norm
    label_smoothing: float = 0.0


RECIPES: dict[str, Recipe] = {
    "resnet18": Recipe(lr=2e-3),
    "resnet50": Recipe(lr=2e-3),
    "mobilenet_v2": Recipe(lr=3e-3, weight_decay=0.01),
    "vit_b_16": Recipe(lr=3e-4, warmup=0.1, clip=1.0),
}
SECONDS_H100 = {"resnet18": 50.0, "mobilenet_v2": 70.0, "resnet50": 100.0, "vit_b_16": 120.0}


class TrainZooError(UserError, ValueError):
    """A training configuration that cannot run (the message says what to change)."""


@dataclass
class TrainConfig:
    """One training run: which model, on what, for how long."""

    model: str
    device: str = "cpu"
    size: int = 224
    classes: int = len(sc.SHAPES)
    clutter: float = 1.0  # scene nuisances (1: the task; lower: easier, for smoke tests)
    steps: int | None = None  # stop after this many steps ...
    seconds: float | None = None  # ... or this much training time, whichever comes first
    seed: int = 0
    amp: str = "auto"
    test_images: int = 1000
    recipe: Recipe | None = None  # None: RECIPES[model]
    overrides: dict = field(default_factory=dict)  # batch / lr over the recipe

    def resolved(self) -> Recipe:
        """The recipe with `overrides` applied."""
        base = self.recipe or RECIPES[self.model]
        return replace(base, **{k: v for k, v in self.overrides.items() if v is not None})


def _check(cfg: TrainConfig, zoo_model: bool = True) -> None:
    if zoo_model and cfg.model not in RECIPES:
        raise TrainZooError(f"unknown zoo model {cfg.model!r}; train one of {', '.join(RECIPES)}")
    if cfg.steps is None and cfg.seconds is None:
        raise TrainZooError("give a budget: steps, seconds, or both")
    if (cfg.steps is not None and cfg.steps < 1) or (cfg.seconds is not None and cfg.seconds <= 0):
        raise TrainZooError(f"the budget must be positive, got steps={cfg.steps}, "
                            f"seconds={cfg.seconds}")
    if cfg.amp not in AMP:
        raise TrainZooError(f"amp must be one of {', '.join(AMP)}, not {cfg.amp!r}")
    if cfg.model == "vit_b_16" and cfg.size % 16:
        raise TrainZooError(f"ViT-B/16 needs a size divisible by 16, not {cfg.size}")
    if cfg.test_images < 1:
        raise TrainZooError("test_images must be >= 1")


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA by default; the CPU runs fp32 unless bf16 is asked."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" and device.type != "cuda":
        raise TrainZooError("fp16 autocast (with its gradient scaler) needs CUDA; on the CPU "
                            "use --amp bf16 or off")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _optimizer(model: nn.Module, r: Recipe, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": r.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=r.lr, fused=device.type == "cuda")


def learning_rate(r: Recipe, progress: float) -> float:
    """Linear warm-up over `r.warmup` of the run, then cosine to zero."""
    if progress < r.warmup:
        return r.lr * max(progress / r.warmup, 0.01)
    t = min(1.0, (progress - r.warmup) / max(1e-9, 1.0 - r.warmup))
    return r.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _mmss(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def evaluate(model: nn.Module, size: int, classes: int, n: int, device: torch.device,
             seed: int = sc.TEST_SEED, batch: int = 100, clutter: float = 1.0) -> dict:
    """Top-1 accuracy (over all logits) and loss on n held-out scenes of seed `seed`."""
    from save_ros.models.zoo.calibrate import decision_report

    model.eval()
    x, y = sc.scenes(n, size, seed, device, classes, clutter)
    correct, loss = 0, 0.0
    per_class = torch.zeros(classes, device=device)
    with torch.no_grad():
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            logits = model(xb).float()
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            hit = logits.argmax(1) == yb
            correct += int(hit.sum())
            per_class.index_add_(0, yb, hit.float())
    counts = torch.bincount(y, minlength=classes).clamp_min(1)
    report = decision_report(model, x, batch)
    return {"images": n, "seed": seed, "accuracy": correct / n, "loss": loss / n,
            "per_class": {sc.SHAPES[k]: round(float(v), 4)
                          for k, v in enumerate(per_class / counts)},
            "gap_median": report["gap_median"], "gap_p5": report["gap_p5"],
            "logit_std": report["logit_std"], "chance": 1.0 / classes}


def train(cfg: TrainConfig, progress: Callable[[str], None] | None = print,
          every_s: float = 10.0, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Train one zoo model from its seeded init; (the model in eval mode, fp32, the record).

    `model` trains that module instead of the zoo's `cfg.model` (then `cfg.recipe` is needed;
    `cfg.model` only names it): the same loop and task for a small network in fast tests.
    """
    from save_ros.models import zoo

    if model is not None and cfg.recipe is None:
        raise TrainZooError("training a given model needs cfg.recipe")
    _check(cfg, zoo_model=model is None)
    r = cfg.resolved()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainZooError(f"--device {cfg.device}: torch {torch.__version__} sees no CUDA "
                            "device; train on the CPU (--device cpu, small --size) or on a GPU")
    amp = _amp_dtype(cfg.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape all run: pick kernels once
    torch.manual_seed(cfg.seed)  # dropout (MobileNetV2's classifier) draws from the global RNG
    if model is None:
        model = zoo.build(cfg.model, image_size=cfg.size, seed=cfg.seed, input_dependent=False)
    cnn = not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    channels_last = cnn and amp is not None  # the layout tensor cores want
    model = model.to(device, memory_format=torch.channels_last if channels_last else
                     torch.contiguous_format).train()
    opt = _optimizer(model, r, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    log: list[dict] = []
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device, dtype=torch.long)
    window, step, seen = 0, 0, 0
    start = last = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        done = max(step / cfg.steps if cfg.steps else 0.0,
                   elapsed / cfg.seconds if cfg.seconds else 0.0)
        if done >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = learning_rate(r, done)
        x, y = sc.scenes(r.batch, cfg.size, sc.train_seed(cfg.seed, step), device, cfg.classes,
                         cfg.clutter)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if r.clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), r.clip)
        scaler.step(opt)
        scaler.update()
        loss_sum += loss.detach()
        hits += (logits.detach().argmax(1) == y).sum()
        step, seen, window = step + 1, seen + r.batch, window + 1
        now = time.perf_counter()
        final = (cfg.steps is not None and step >= cfg.steps) or (
            cfg.seconds is not None and now - start >= cfg.seconds)
        if now - last >= every_s or final:
            mean_loss, acc = float(loss_sum) / window, int(hits) / (window * r.batch)
            rate = seen / (now - start)
            left = min((
                (cfg.steps - step) * r.batch / rate if cfg.steps else math.inf,
                cfg.seconds - (now - start) if cfg.seconds else math.inf))
            log.append({"step": step, "seconds": round(now - start, 2), "loss": mean_loss,
                        "acc": acc, "lr": opt.param_groups[0]["lr"]})
            if progress is not None:
                progress(f"{cfg.model} step {step} loss {mean_loss:.3f} acc {acc:.3f} "
                         f"{rate:.0f} img/s ETA {_mmss(left)}")
            loss_sum.zero_()
            hits.zero_()
            window, last = 0, now
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    test = evaluate(model, cfg.size, cfg.classes, cfg.test_images, device, clutter=cfg.clutter)
    record = {
        "model": cfg.model, "task": "scenes", "shapes": list(sc.SHAPES[:cfg.classes]),
        "classes": cfg.classes, "clutter": cfg.clutter,
        "head": "1000 logits; scene class k is logit k",
        "size": cfg.size, "seed": cfg.seed, "device": _device_name(device),
        "amp": str(amp).removeprefix("torch.") if amp else "off",
        "steps": step, "images_seen": seen, "train_seconds": round(seconds, 2),
        "img_per_s": round(seen / seconds, 1), "budget": {"steps": cfg.steps,
                                                          "seconds": cfg.seconds},
        "recipe": asdict(r), "train_seeds": f"scene seed {sc.train_seed(cfg.seed, 0)} + step",
        "test": test, "log": log, "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return model, record


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
