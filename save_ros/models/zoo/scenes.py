"""Procedural labelled scenes: a learnable image task for the zoo, rendered in torch on any device.

`scenes(n, size, seed, device)` renders n RGB images (n, 3, size, size) in [0, 1] and their
labels (n,): one of `SHAPES` (disc, bar, ring, square, triangle, plus, star, hexagon, crescent,
frame), the class, is drawn at a random position (centre within the middle 55 % of each side),
scale (diameter 18-42 % of the side), and rotation, filled with a random colour as a solid,
stripes or a checker pattern, on a two-colour gradient with 2-5 distractor strokes and dots
behind it (and in 40 % of scenes one across it), under a directional light, with soft or sharp
edges and Gaussian noise. Class is shape alone: colour, fill, clutter and light are nuisances, so a
classifier must see the outline. Rotation makes shapes that differ by a rotation (a diamond
and a square) one class. Everything is batched torch (signed distance fields on a pixel grid),
no scikit-learn, no torchvision, no file: it runs where torch runs, and a training loop renders
a fresh batch on its device every step (a few hundred elementwise passes over the batch).

Determinism: the per-image parameters come from a CPU `torch.Generator` seeded with `seed` (the
same on every device); the pixel noise from a generator on `device` seeded with `seed` (the same
on one device type). Labels are balanced: image i has class `perm[i] % classes`.

Splits by seed: `train_seed(run_seed, step)` is >= `HELD_OUT_SEEDS`, so any seed below it
(`TEST_SEED`, `CALIB_SEED`) names images no training run draws.
"""

from __future__ import annotations

import math
import numbers

import torch

# in order of difficulty for a small network (`classes=2`: disc or bar, the easiest pair)
SHAPES = ("disc", "bar", "ring", "square", "triangle", "plus", "star", "hexagon", "crescent",
          "frame")
HELD_OUT_SEEDS = 1_000_000  # scene seeds below this are never drawn for training
TEST_SEED = 7  # the held-out test split of the recipe
CALIB_SEED = 11  # calibration images for Selection of a trained model (bench scale)
_MAX_STEPS = 1_000_000  # training steps per run seed before seeds would repeat
_DISTRACTORS = 6  # stroke / dot slots: up to 5 behind the shape, 1 across it


class SceneError(ValueError):
    """Bad arguments to the scene generator (the message says what is allowed)."""


def _check(n: object, size: object, seed: object, classes: object) -> None:
    for name, v, lo in (("n", n, 0), ("size", size, 16), ("seed", seed, 0),
                        ("classes", classes, 2)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise SceneError(f"{name} must be an int >= {lo}, not {v!r}")
    if classes > len(SHAPES):
        raise SceneError(f"classes must be 2..{len(SHAPES)} (the shapes {', '.join(SHAPES)}), "
                         f"not {classes}")


def train_seed(run_seed: int, step: int) -> int:
    """The scene seed of training batch `step` of a run with seed `run_seed` (never held out)."""
    if not 0 <= step < _MAX_STEPS:
        raise SceneError(f"step must be in 0..{_MAX_STEPS - 1}, not {step}")
    return HELD_OUT_SEEDS + run_seed * _MAX_STEPS + step


def _box(px: torch.Tensor, py: torch.Tensor, bx: float, by: float) -> torch.Tensor:
    qx, qy = px.abs() - bx, py.abs() - by
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2)
    return outside + torch.maximum(qx, qy).clamp_max(0)


def _polygon(px: torch.Tensor, py: torch.Tensor, sides: int, apothem: float) -> torch.Tensor:
    sector = 2 * math.pi / sides
    ang = torch.remainder(torch.atan2(py, px), sector) - sector / 2
    return torch.sqrt(px * px + py * py) * torch.cos(ang) - apothem


def _sdf(kind: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Signed distance (< 0 inside) of shape `kind` in its own frame (radius about 1)."""
    r = torch.sqrt(px * px + py * py)
    name = SHAPES[kind]
    if name == "disc":
        return r - 0.95
    if name == "square":
        return _box(px, py, 0.8, 0.8)
    if name == "triangle":
        return _polygon(px, py, 3, 0.5)
    if name == "ring":
        return (r - 0.78).abs() - 0.2
    if name == "plus":
        return torch.minimum(_box(px, py, 1.0, 0.3), _box(px, py, 0.3, 1.0))
    if name == "star":  # five points: radius 0.45 at the notches, 1.05 at the tips
        t = torch.remainder(torch.atan2(py, px) * (5 / (2 * math.pi)), 1.0)
        return (r - (0.45 + 0.6 * (1 - 2 * (t - 0.5).abs()))) * 0.6
    if name == "hexagon":
        return _polygon(px, py, 6, 0.85)
    if name == "crescent":
        return torch.maximum(r - 1.0, -(torch.sqrt((px - 0.45) ** 2 + py * py) - 0.8))
    if name == "bar":
        return _box(px, py, 1.0, 0.28)
    if name == "frame":
        return _box(px, py, 0.72, 0.72).abs() - 0.16
    raise AssertionError(kind)


def _segment(px: torch.Tensor, py: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor,
             bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    """Distance to the segment a-b (batched: endpoints (B, 1, 1))."""
    dx, dy = bx - ax, by - ay
    h = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-9)).clamp(0, 1)
    return torch.sqrt((px - ax - h * dx) ** 2 + (py - ay - h * dy) ** 2)


def _over(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Composite `colour` (B, 3, 1, 1) or (B, 3, H, W) over `img` with coverage alpha (B, H, W)."""
    a = alpha[:, None]
    return img * (1 - a) + colour * a


def _params(n: int, classes: int, seed: int, clutter: float) -> dict[str, torch.Tensor]:
    """Every per-image random choice, drawn on the CPU (identical on every device).

    The same draws at every `clutter`: it only scales the nuisances (clutter 0: a solid shape on
    a gradient, no strokes, no noise, even light), so one seed shows the same shapes."""
    g = torch.Generator().manual_seed(int(seed))

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    label = torch.randperm(n, generator=g) % classes
    nuisance = u(n) < clutter  # this scene gets a patterned fill
    fg = u(n, 3)
    # background: its own random colours pulled away from the foreground, so most scenes have
    # contrast (not all: low-contrast scenes are part of the task)
    bg = 0.45 * u(n, 2, 3) + 0.55 * (1 - fg[:, None, :])
    return {
        "label": label, "fg": fg, "bg": bg,
        "fg2": fg * u(n, 1, lo=0.35, hi=0.8) + u(n, 3) * 0.2,  # second colour of a pattern
        "centre": u(n, 2, lo=-0.55, hi=0.55), "scale": u(n, lo=0.18, hi=0.42),
        "angle": u(n, hi=2 * math.pi),
        "fill": torch.randint(3, (n,), generator=g) * nuisance,
        "fill_freq": u(n, lo=4.0, hi=12.0), "fill_angle": u(n, hi=math.pi),
        "bg_angle": u(n, hi=2 * math.pi),
        # strokes and dots behind the shape: 2..5 at clutter 1
        "behind": (torch.randint(2, _DISTRACTORS, (n,), generator=g) * clutter).round(),
        "d_pos": u(n, _DISTRACTORS, 4, lo=-1.0, hi=1.0),
        "d_width": u(n, _DISTRACTORS, lo=0.008, hi=0.03),
        "d_dot": u(n, _DISTRACTORS) < 0.35, "d_colour": u(n, _DISTRACTORS, 3),
        "on_top": u(n) < 0.4 * clutter, "light_angle": u(n, hi=2 * math.pi),
        "light": u(n, lo=-0.35, hi=0.35) * clutter, "gain": u(n, lo=0.7, hi=1.15),
        "edge": u(n, lo=0.6, hi=2.2), "noise": u(n, lo=0.0, hi=0.08) * clutter,
    }


def scenes(n: int, size: int = 224, seed: int = 0, device: str | torch.device = "cpu",
           classes: int = len(SHAPES), clutter: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n scenes (n, 3, size, size) float32 in [0, 1] on `device` and their labels (n,) int64.

    `clutter` in [0, 1] scales the nuisances (1: the task; 0: clean shapes, for smoke tests)."""
    _check(n, size, seed, classes)
    if not 0.0 <= clutter <= 1.0:
        raise SceneError(f"clutter must be in [0, 1], not {clutter!r}")
    device = torch.device(device)
    if n == 0:
        return (torch.empty(0, 3, size, size, device=device),
                torch.empty(0, dtype=torch.long, device=device))
    params = _params(n, classes, seed, float(clutter))
    params |= {f"class{k}": (params["label"] == k).nonzero().flatten() for k in range(classes)}
    p = _to_device(params, device)
    p["by_class"] = [p.pop(f"class{k}") for k in range(classes)]
    with torch.no_grad():
        x = _render(p, n, size, device)
        noise = torch.randn(x.shape, generator=torch.Generator(device).manual_seed(int(seed)),
                            device=device)
        x = (x + noise * p["noise"][:, None, None, None]).clamp_(0.0, 1.0)
    return x.contiguous(), p["label"].clone()  # not a view into the packed parameters


def _to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict:
    """The tensors on `device`, in one host-to-device copy per dtype (each copy syncs)."""
    out = {}
    for dtype in {t.dtype for t in tensors.values()}:
        keys = [k for k, t in tensors.items() if t.dtype == dtype]
        flat = torch.cat([tensors[k].reshape(-1) for k in keys]).to(device)
        for k, part in zip(keys, flat.split([tensors[k].numel() for k in keys]), strict=True):
            out[k] = part.view(tensors[k].shape)
    return out


def _render(p: dict, n: int, size: int, device: torch.device) -> torch.Tensor:
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    gy, gx = t[None, :, None].expand(n, size, size), t[None, None, :].expand(n, size, size)
    px = 2.0 / size  # one pixel in these coordinates

    def col(v: torch.Tensor) -> torch.Tensor:  # (n, 3) -> (n, 3, 1, 1)
        return v[:, :, None, None]

    def s(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, 1, 1)
        return v[:, None, None]

    # background: a linear gradient between two colours along a random direction
    ramp = (gx * s(torch.cos(p["bg_angle"])) + gy * s(torch.sin(p["bg_angle"]))) * 0.5 + 0.5
    img = col(p["bg"][:, 0]) + (col(p["bg"][:, 1]) - col(p["bg"][:, 0])) * ramp[:, None]
    edge = s(p["edge"]) * px

    def distractor(j: int) -> torch.Tensor:  # coverage of stroke or dot j (B, H, W)
        a, w = p["d_pos"][:, j], p["d_width"][:, j]
        dot = torch.sqrt((gx - s(a[:, 0])) ** 2 + (gy - s(a[:, 1])) ** 2) - s(w * 2.5)
        seg = _segment(gx, gy, s(a[:, 0]), s(a[:, 1]), s(a[:, 2]), s(a[:, 3])) - s(w)
        d = torch.where(s(p["d_dot"][:, j]), dot, seg)
        return torch.sigmoid(-d / edge)

    for j in range(_DISTRACTORS - 1):  # behind the shape: the first 2..5 of them
        visible = s(j < p["behind"]).float()
        img = _over(img, distractor(j) * visible, col(p["d_colour"][:, j]))

    # the shape, in its own frame: translate, rotate, scale
    c, sn, sc = torch.cos(p["angle"]), torch.sin(p["angle"]), p["scale"]
    dx, dy = gx - s(p["centre"][:, 0]), gy - s(p["centre"][:, 1])
    lx, ly = (dx * s(c) + dy * s(sn)) / s(sc), (-dx * s(sn) + dy * s(c)) / s(sc)
    sdf = torch.empty_like(gx)
    for k, idx in enumerate(p["by_class"]):  # indices found on the CPU: no device sync here
        if len(idx):
            sdf[idx] = _sdf(k, lx[idx], ly[idx])
    alpha = torch.sigmoid(-sdf * s(sc) / edge)  # distances back in image units

    # fill: solid, stripes or checker in two colours, in a random direction
    fa = p["fill_angle"]
    u = (gx * s(torch.cos(fa)) + gy * s(torch.sin(fa))) * s(p["fill_freq"]) * math.pi
    v = (-gx * s(torch.sin(fa)) + gy * s(torch.cos(fa))) * s(p["fill_freq"]) * math.pi
    stripes = (torch.sin(u) > 0).float()
    checker = ((torch.sin(u) * torch.sin(v)) > 0).float()
    kind = s(p["fill"])
    pattern = torch.where(kind == 0, torch.ones_like(u), torch.where(kind == 1, stripes, checker))
    fill = col(p["fg2"]) + (col(p["fg"]) - col(p["fg2"])) * pattern[:, None]
    img = _over(img, alpha, fill)

    last = _DISTRACTORS - 1  # one stroke or dot across the shape, sometimes
    img = _over(img, distractor(last) * s(p["on_top"]).float(), col(p["d_colour"][:, last]))

    light = 1.0 + s(p["light"]) * (gx * s(torch.cos(p["light_angle"]))
                                   + gy * s(torch.sin(p["light_angle"])))
    return img * (light * s(p["gain"]))[:, None]


__all__ = ["CALIB_SEED", "HELD_OUT_SEEDS", "SHAPES", "TEST_SEED", "SceneError", "scenes",
           "train_seed"]
