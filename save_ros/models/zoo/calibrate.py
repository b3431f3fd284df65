"""Make a randomly initialised classifier's decisions depend on its input, and measure that.

A torchvision model straight from its constructor answers almost the same class for every image:
BatchNorm's running statistics are 0 / 1 (so activations grow or vanish layer after layer) and
ViT's head is zero. `input_dependent` fixes that without training:

- BatchNorm: running statistics re-estimated on seeded images (`images()`), as a cumulative
  average (momentum None) with only the BatchNorm layers in train mode and no gradients; the
  momentum is restored afterwards.
- The classifier head (`fc`, `classifier.1`, `heads.head`): a seeded normal init on whitened
  features, centred, and scaled so the logits of calibration images spread like a trained
  ImageNet classifier's (standard deviation over classes `LOGIT_STD` per image). Without it the
  mean feature, common to every image, decides the class (ResNet's ReLU features are all
  positive, ViT's head is zero); without the whitening a few principal directions of the
  features (three hold ~75 % of ViT-B/16's variance over the images) decide it, and one class
  takes over a fifth of the inputs. The covariance is shrunk halfway to its diagonal
  (`SHRINK`), as 32 calibration images cannot estimate a 768- to 2048-dim one.

`decision_report(model, x)` says how input-dependent the decisions are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

LOGIT_STD = 2.0  # per-image std of the 1,000 logits of a trained torchvision ResNet-50 is ~2
SHRINK = 0.5  # covariance = (1 - SHRINK) * sample covariance + SHRINK * its diagonal
HEADS = {"resnet18": "fc", "resnet50": "fc", "mobilenet_v2": "classifier.1",
         "vit_b_16": "heads.head"}


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean / var on `batches`; return the BN count."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()
        model.train(was_training)
    return len(bns)


def _features(model: nn.Module, head: nn.Linear, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The inputs of `head` over the batches (N, in_features)."""
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    finally:
        handle.remove()
    return torch.cat(seen)


def init_head(model: nn.Module, head_path: str, batches: Iterable[torch.Tensor],
              seed: int, logit_std: float = LOGIT_STD) -> dict:
    """Re-initialise the linear head so its logits depend on the input (module docstring).

    weight = a * G @ C^(-1/2) (G ~ N(0, 1) seeded; C = the calibration features' covariance,
    shrunk towards its diagonal), bias = -weight @ mean: each class's logit is centred over the
    calibration images, and `a` makes the median per-image std over classes `logit_std`. Mean
    and covariance come from the first 3/4 of the images, `a` from the held-out rest: on the
    images it was whitened with, a head spreads less than on new ones (by 2.4x for ResNet-18).
    Deterministic on one machine; another BLAS may round the eigendecomposition differently.
    """
    head = model.get_submodule(head_path)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{head_path} is a {type(head).__name__}, not nn.Linear")
    feats = _features(model, head, batches).double()
    n_fit = (3 * len(feats)) // 4 if len(feats) >= 8 else len(feats)
    f, held = feats[:n_fit], feats[n_fit:] if n_fit < len(feats) else feats
    mean = f.mean(0)
    x = f - mean
    cov = x.T @ x / max(1, len(f) - 1)
    cov = (1.0 - SHRINK) * cov + SHRINK * torch.diag(torch.diag(cov))
    eigval, eigvec = torch.linalg.eigh(cov)
    eigval = eigval.clamp_min(1e-6 * float(eigval.max()) + 1e-30)
    whiten = eigvec @ torch.diag(eigval.rsqrt()) @ eigvec.T
    gen = torch.Generator().manual_seed(int(seed))
    g = torch.randn(head.out_features, head.in_features, generator=gen, dtype=torch.float64)
    w = g @ whiten
    b = -(w @ mean)
    spread = float((held @ w.T + b).std(dim=1).median())
    a = logit_std / spread if spread > 0 and math.isfinite(spread) else 1.0
    with torch.no_grad():
        head.weight.copy_((a * w).float())
        head.bias.copy_((a * b).float())
    return {"head": head_path, "features": len(f), "held_out": len(held), "scale": a}


def decision_report(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> dict:
    """How much the top-1 decision depends on the input, over the images `x`.

    `distinct`: distinct top-1 classes; `mode_share`: share of inputs whose top-1 is the most
    common class (`differs_from_mode` = 1 - that); `gap_median` / `gap_p5`: median and 5th
    percentile of the top-1 minus top-2 logit gap; `logit_std`: median per-input std over classes.
    """
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            outs.append(model(x[s:s + batch_size]).float())
    logits = torch.cat(outs)
    top2 = logits.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1]).double()
    pred = logits.argmax(1)
    counts = torch.bincount(pred, minlength=logits.shape[1])
    mode_share = float(counts.max()) / len(pred)
    return {"inputs": len(pred), "distinct": int((counts > 0).sum()),
            "mode_class": int(counts.argmax()), "mode_share": mode_share,
            "differs_from_mode": 1.0 - mode_share,
            "gap_median": float(gap.median()), "gap_p5": float(gap.quantile(0.05)),
            "logit_std": float(logits.std(dim=1).median()),
            "finite": bool(torch.isfinite(logits).all())}
