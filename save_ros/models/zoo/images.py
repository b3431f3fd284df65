"""Seeded natural-looking test images without a download: sklearn's two sample photos and digits.

`images(n, size, seed)` makes n RGB images in [0, 1] with torch ops only (no torchvision):
random resized crops of `china.jpg` / `flower.jpg` (scikit-learn's `load_sample_images()`, read
with Pillow) with flips and colour jitter, and scikit-learn's 8x8 digits, upscaled, placed and
coloured on a flat colour or on a photo crop. Image i depends only on (seed, i, size), so a
prefix of a longer set equals a shorter set. Without Pillow the photos are unavailable and every
image is a digit on a colour field (`image_source()` says which; results are then not comparable
with photo-based ones).
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_SEED_STRIDE = 1_000_003  # image i of seed s uses generator seed s * stride + i


@lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    """The sample photos as (3, H, W) float32 in [0, 1]; empty without Pillow."""
    try:
        import PIL  # noqa: F401  (sklearn reads the jpegs with Pillow)
    except ImportError:
        return ()
    from sklearn.datasets import load_sample_images

    return tuple(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
                 for img in load_sample_images().images)


@lru_cache(maxsize=1)
def _digits() -> torch.Tensor:
    """All 1,797 digits (N, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)


def image_source() -> str:
    """`photos+digits` when Pillow reads the sample photos, else `digits`."""
    return "photos+digits" if _photos() else "digits"


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _photo_crop(gen: torch.Generator, size: int) -> torch.Tensor:
    """A random resized crop of a photo (area 2-100 % log-uniform, aspect 3/4..4/3), maybe flip."""
    photos = _photos()
    src = photos[int(torch.randint(len(photos), (), generator=gen))]
    _, H, W = src.shape
    area = math.exp(_u(gen, math.log(0.02), 0.0)) * H * W  # log-uniform 2-100 %
    ratio = math.exp(_u(gen, math.log(3 / 4), math.log(4 / 3)))
    w = max(8, min(W, round(math.sqrt(area * ratio))))
    h = max(8, min(H, round(math.sqrt(area / ratio))))
    y0 = int(torch.randint(H - h + 1, (), generator=gen))
    x0 = int(torch.randint(W - w + 1, (), generator=gen))
    out = _resize(src[:, y0:y0 + h, x0:x0 + w], size, size)
    if _u(gen) < 0.5:
        out = out.flip(-1)
    return out


def _jitter(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and a hue rotation (about the grey axis, in YIQ)."""
    img = img * _u(gen, 0.6, 1.4)
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = grey.mean() + (img - grey.mean()) * _u(gen, 0.6, 1.4)
    img = grey + (img - grey) * _u(gen, 0.3, 1.6)
    theta = _u(gen, -math.pi, math.pi) * 0.5
    rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]])
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    m = torch.linalg.inv(rgb2yiq) @ rot @ rgb2yiq
    return torch.einsum("ij,jhw->ihw", m, img)


def _digit(gen: torch.Generator, size: int, background: torch.Tensor) -> torch.Tensor:
    """A random digit, upscaled to 35-95 % of the side, placed at random, in a random colour."""
    digits = _digits()
    d = digits[int(torch.randint(len(digits), (), generator=gen))]
    side = max(8, round(size * _u(gen, 0.35, 0.95)))
    mask = _resize(d[None], side, side)[0].clamp(0, 1)
    y0 = int(torch.randint(size - side + 1, (), generator=gen))
    x0 = int(torch.randint(size - side + 1, (), generator=gen))
    alpha = torch.zeros(size, size)
    alpha[y0:y0 + side, x0:x0 + side] = mask * _u(gen, 0.6, 1.0)
    fg = torch.rand(3, generator=gen)[:, None, None]
    return background * (1 - alpha) + fg * alpha


def _one(seed: int, i: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * _SEED_STRIDE + i)
    kind = _u(gen)
    have_photos = bool(_photos())
    if have_photos and kind < 0.55:
        img = _jitter(_photo_crop(gen, size), gen)
    else:
        if have_photos and kind < 0.8:
            background = _photo_crop(gen, size) * _u(gen, 0.3, 1.0)
        else:  # a flat colour with a soft linear gradient
            c0, c1 = torch.rand(3, generator=gen), torch.rand(3, generator=gen)
            t = torch.linspace(0, 1, size)
            ramp = t[None, :] if _u(gen) < 0.5 else t[:, None]
            background = c0[:, None, None] + (c1 - c0)[:, None, None] * ramp[None] * 0.5
        img = _jitter(_digit(gen, size, background), gen)
    sigma = _u(gen, 0.0, 0.03)
    img = img + sigma * torch.randn(img.shape, generator=gen)
    return img.clamp(0.0, 1.0)


def images(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """n seeded RGB images (n, 3, size, size) float32 in [0, 1] (see the module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be an int >= 0, not {seed!r}")
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    if n == 0:
        return torch.empty(0, 3, size, size)
    return torch.stack([_one(int(seed), i, size) for i in range(n)]).contiguous()
