"""Bit attribution: classify each single-bit flip of each element: robust, ranging, vulnerable.

`classify(values, bit, rule)` flips `bit` in every element of `values` (exactly, with
`save_ros.core.bits.flipped`) and returns a `BitClass` code per element:
- RANGING if the flipped value is NaN / Inf or leaves the element's checked range
  (`rule.low` / `rule.high`, per channel broadcast to elements): a range check catches it;
- else ROBUST if the consuming op masks it (`rule.relu_masked`: every consumer is a ReLU, the
  golden value is <= 0 and the flipped value is <= 0, -inf included; NaN is never masked;
  `rule.pool_kernel`: every consumer is a non-overlapping max pool and the flipped value stays
  <= the max of the other elements of its window) or if
  it is numerically small: |delta| * R <= `rule.fraction`, R from `core.sensitivity`; an
  element on a flat path (`rule.flat`: its gradient was zero or below the floor on every
  calibration input, e.g. feeding a ReLU that never fired) is numerically robust only for a
  small relative change, |delta| <= `rule.flat_relative` * |value|: a first-order rule cannot see
  a larger change switching such a path on (a kink), so it may not vouch for one;
- else VULNERABLE.
The same function classifies flips in attribution (golden weights, calibration activations) and
in validation (the actual activation values of the validated input), so the two agree by
construction; what validation tests is the *claim* of each class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from save_ros.core import bits
from save_ros.core.analysis import BitClass


@dataclass
class FlipRule:
    """What decides the class of a flip of one tensor's elements (all broadcast to values)."""

    low: torch.Tensor  # checked range, per element (broadcastable)
    high: torch.Tensor
    sens: torch.Tensor | None  # R per element; None: nothing is numerically robust
    fraction: float = 0.1  # safety fraction of the smallest gap
    relu_masked: bool = False
    pool_kernel: int | None = None  # every consumer is a non-overlapping k x k max pool
    flat: torch.Tensor | None = None  # elements whose R was raised by the floor (zero gradient)
    flat_relative: float = 2.0**-4  # largest relative change vouched for on a flat path

    def at(self, pick) -> FlipRule:
        """The rule of a subset of elements: `pick(t)` applied to every per-element tensor."""
        def p(t):
            return None if t is None else pick(t)
        return FlipRule(p(self.low), p(self.high), p(self.sens), self.fraction,
                        self.relu_masked, self.pool_kernel, p(self.flat), self.flat_relative)


def pool_other_max(values: torch.Tensor, k: int) -> torch.Tensor:
    """Per element of (N, C, H, W) values: the max of the other elements of its k x k window.

    A flip that keeps an element <= this leaves the window's max, so the pool output, unchanged.
    Elements that no window covers (floor mode) get +inf: the pool never reads them.
    """
    n, c, h, w = values.shape
    hh, ww = h // k, w // k
    win = values[:, :, : hh * k, : ww * k].reshape(n, c, hh, k, ww, k).permute(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, hh, ww, k * k)
    top2 = win.topk(2, dim=-1).values
    m1, m2 = top2[..., :1], top2[..., 1:]
    unique_max = (win == m1) & ((win == m1).sum(-1, keepdim=True) == 1)
    other = torch.where(unique_max, m2, m1)  # the max of the others
    other = other.reshape(n, c, hh, ww, k, k).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh * k,
                                                                                ww * k)
    out = torch.full_like(values, float("inf"))
    out[:, :, : hh * k, : ww * k] = other
    return out


def _masks(values: torch.Tensor, bit: int, rule: FlipRule,
           other_max: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranging, robust) masks of a flip of `bit` in every element (robust may overlap)."""
    return _masks_of(values, bits.flipped(values, bit), rule, other_max)


def _masks_of(values: torch.Tensor, new: torch.Tensor, rule: FlipRule,
              other_max: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranging, robust) masks given the flipped values `new` (broadcast against values)."""
    finite = torch.isfinite(new)
    ranging = ~finite | (new < rule.low) | (new > rule.high)
    robust = None
    if rule.sens is not None:
        delta = (new - values).abs()
        robust = finite & (delta * rule.sens <= rule.fraction)
        if rule.flat is not None:
            robust &= ~rule.flat | (delta <= rule.flat_relative * values.abs())
    if rule.relu_masked:
        m = (values <= 0) & (new <= 0)  # NaN compares False: never masked
        robust = m if robust is None else robust | m
    if other_max is not None:
        # Not the window's unique max, before and after: the pool output stays the other max.
        m = (values <= other_max) & (new <= other_max)
        robust = m if robust is None else robust | m
    if robust is None:
        robust = torch.zeros_like(ranging)
    return ranging, robust


def classify(values: torch.Tensor, bit: int, rule: FlipRule,
             other_max: torch.Tensor | None = None) -> torch.Tensor:
    """BitClass code (int8) per element for a flip of `bit` in each element of `values`.

    `other_max` (with `rule.pool_kernel`): `pool_other_max` of the same values.
    """
    ranging, robust = _masks(values, bit, rule, other_max)
    out = torch.full(values.shape, int(BitClass.VULNERABLE), dtype=torch.int8,
                     device=values.device)
    out[robust] = int(BitClass.ROBUST)
    out[ranging] = int(BitClass.RANGING)
    return out


def _counts(values: torch.Tensor, bit: int, rule: FlipRule,
            other_max: torch.Tensor | None) -> tuple[int, int, int]:
    """(robust, ranging, vulnerable) element counts of one bit: classify() without the codes."""
    ranging, robust = _masks(values, bit, rule, other_max)
    n_rng = int(ranging.sum())
    n_rob = int((robust & ~ranging).sum())
    return n_rob, n_rng, values.numel() - n_rob - n_rng


VECTOR_ELEMENTS = 1 << 17  # up to this many elements, all bits are classified in one pass


def _per_element(t: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """A rule tensor broadcast to `shape` and flattened (materialised once)."""
    return None if t is None else t.expand(shape).reshape(-1)


def _shares_all_bits(values: torch.Tensor, rule: FlipRule,
                     other: torch.Tensor | None) -> list[tuple[float, float, float]]:
    """bit_shares of a small tensor: every bit at once, as a (bits, elements) batch."""
    layout = bits.layout_of(values.dtype)
    v = values.reshape(-1).contiguous()
    masks = torch.tensor([bits.mask_value(layout, b) for b in range(layout.width)],
                         dtype=layout.int_dtype, device=v.device)
    new = (bits.int_view(v)[None, :] ^ masks[:, None]).view(v.dtype)  # (bits, elements)
    flat = rule.at(lambda t: _per_element(t, values.shape))
    other = _per_element(other, values.shape)
    ranging, robust = _masks_of(v, new, flat, other)
    n = v.numel()
    n_rng = ranging.sum(1)
    n_rob = (robust & ~ranging).sum(1)
    return [(r / n, g / n, (n - r - g) / n)
            for r, g in zip(n_rob.tolist(), n_rng.tolist(), strict=True)]


def bit_shares(values: torch.Tensor, rule: FlipRule, chunk: int = 1 << 22,
               other_max: torch.Tensor | None = None):
    """Per bit, the shares (robust, ranging, vulnerable) over all elements of `values`.

    `other_max`: the max-pool masking values of the same elements, when already known (kept
    calibration values are a sample of positions: the windows are no longer there).
    """
    width = bits.layout_of(values.dtype).width
    other = other_max if other_max is not None else (
        pool_other_max(values, rule.pool_kernel) if rule.pool_kernel else None)
    if values.numel() <= VECTOR_ELEMENTS:
        return _shares_all_bits(values, rule, other)
    flat = values.reshape(-1) if values.numel() <= chunk else None
    shares = []
    for bit in range(width):
        counts = [0, 0, 0]
        if flat is not None:
            counts = list(_counts(values, bit, rule, other))
        else:
            # Large tensors: rows at a time, ranges broadcast per row.
            for i in range(0, values.shape[0], max(1, chunk // max(1, values[0].numel()))):
                j = i + max(1, chunk // max(1, values[0].numel()))
                sub = rule.at(lambda t, i=i, j=j: _rows(t, i, j, values))
                sub.pool_kernel = None
                c = _counts(values[i:j], bit, sub, _rows(other, i, j, values))
                counts = [a + b for a, b in zip(counts, c, strict=True)]
        total = float(sum(counts))
        shares.append(tuple(float(c) / total for c in counts))
    return shares


def _rows(t: torch.Tensor | None, i: int, j: int, values: torch.Tensor):
    """Rows i:j of a tensor broadcast against values (a size-1 leading dim stays)."""
    if t is None or t.dim() < values.dim() or t.shape[0] == 1:
        return t
    return t[i:j]
