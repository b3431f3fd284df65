"""Sound interval propagation through an fx graph: run the model on boxes instead of tensors.

An `Interval` holds elementwise lower / upper bounds of a tensor; the functions here are the
rules that `core.propagate.IntervalInterpreter` applies node by node. Rules:
- monotone non-decreasing ops (shape ops, ReLU, sigmoid, tanh, pooling, sums, means, add, cat,
  dropout in eval, ...) apply the op to the lower and to the upper bounds;
- affine ops (linear, conv, batch norm in eval, matmul with a constant) are exact in midpoint /
  radius form: W mid + b +- |W| rad (the W+ / W- split);
- products of two boxes (mul, matmul, bmm) use Rump's midpoint-radius bound;
- GELU / SiLU take the function's minimum when the box contains its minimiser;
- softmax / log-softmax use the exact per-element bound (x_i at its low end, the others high);
- layer norm bounds (x - mean) / std by the box of x - mean and by sqrt(n - 1);
- scaled_dot_product_attention and nn.MultiheadAttention: the output is a convex combination
  of V's rows (then out_proj for the module).
Every affine result is widened by a relative 2^-16 (plus 2^-40 absolute) so float rounding
inside the model never leaves the box. A node without a rule, or whose rule fails, takes its
calibration box (or (-inf, inf)) and is listed in `unsupported`; the analysis never crashes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_REL = 2.0**-16  # relative widening of affine results: float rounding stays inside
_ABS = 2.0**-40


class NoRuleError(LookupError):
    """An op without an interval rule (the interpreter falls back to calibration)."""


@dataclass
class Interval:
    """Elementwise bounds lo <= x <= hi of a tensor."""

    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """Shape of the bounded tensor."""
        return self.lo.shape

    def size(self, *dim: int):
        """Like Tensor.size (shape ops call it on intervals)."""
        return self.lo.size(*dim)

    def dim(self) -> int:
        """Number of dimensions."""
        return self.lo.dim()

    def mid_rad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Midpoint and radius."""
        return (self.lo + self.hi) / 2, (self.hi - self.lo) / 2

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise lo <= x <= hi (broadcast over a batch of x)."""
        return (x >= self.lo) & (x <= self.hi)


def _from_mid_rad(mid: torch.Tensor, rad: torch.Tensor) -> Interval:
    """Interval from midpoint / radius, widened for float rounding."""
    pad = rad.abs() + _REL * (mid.abs() + rad.abs()) + _ABS
    return Interval(mid - pad, mid + pad)


def _const(v: Any) -> Interval:
    """A tensor or number as a degenerate interval."""
    t = torch.as_tensor(v, dtype=torch.float32)
    return Interval(t, t)


def is_interval(v: Any) -> bool:
    """True for an Interval."""
    return isinstance(v, Interval)


def any_interval(args: Any) -> bool:
    """True if an Interval occurs anywhere in (nested) args."""
    if is_interval(args):
        return True
    if isinstance(args, (list, tuple)):
        return any(any_interval(a) for a in args)
    if isinstance(args, dict):
        return any(any_interval(a) for a in args.values())
    return False


def pick(args: Any, side: str) -> Any:
    """Replace every Interval in (nested) args by its lo or hi tensor."""
    if is_interval(args):
        return args.lo if side == "lo" else args.hi
    if isinstance(args, tuple):
        return tuple(pick(a, side) for a in args)
    if isinstance(args, list):
        return [pick(a, side) for a in args]
    if isinstance(args, dict):
        return {k: pick(a, side) for k, a in args.items()}
    return args


def _zip(lo: Any, hi: Any) -> Any:
    """Pair up the lo and hi results of a monotone op (tensors or tuples of tensors)."""
    if isinstance(lo, torch.Tensor) and lo.is_floating_point():
        return Interval(torch.minimum(lo, hi), torch.maximum(lo, hi))
    if isinstance(lo, (tuple, list)):
        return type(lo)(_zip(a, b) for a, b in zip(lo, hi, strict=True))
    return lo  # shapes, ints: the same on both sides


def monotone(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Rule for ops non-decreasing in every interval argument: f(lo), f(hi)."""
    return _zip(fn(*pick(args, "lo"), **pick(kwargs, "lo")),
                fn(*pick(args, "hi"), **pick(kwargs, "hi")))


def affine(fn: Callable, x: Interval, weight: torch.Tensor, bias: torch.Tensor | None,
           **kw: Any) -> Interval:
    """Exact box of fn(x, W, b) for a linear map fn (linear, conv): W mid + b +- |W| rad."""
    mid, rad = x.mid_rad()
    return _from_mid_rad(fn(mid, weight, bias, **kw), fn(rad, weight.abs(), None, **kw))


def product(fn: Callable, a: Any, b: Any) -> Interval:
    """Box of a bilinear fn(a, b) (mul, matmul, bmm): Rump's midpoint-radius bound."""
    a = a if is_interval(a) else _const(a)
    b = b if is_interval(b) else _const(b)
    am, ar = a.mid_rad()
    bm, br = b.mid_rad()
    rad = fn(am.abs(), br) + fn(ar, bm.abs()) + fn(ar, br)
    return _from_mid_rad(fn(am, bm), rad)


def neg(x: Interval) -> Interval:
    """-x."""
    return Interval(-x.hi, -x.lo)


def sub(a: Any, b: Any) -> Any:
    """a - b."""
    a = a if is_interval(a) else _const(a)
    b = b if is_interval(b) else _const(b)
    return Interval(a.lo - b.hi, a.hi - b.lo)


def div(a: Any, b: Any) -> Interval:
    """a / b; unbounded where the box of b contains 0."""
    if not is_interval(b):
        return product(torch.mul, a, 1.0 / torch.as_tensor(b, dtype=torch.float32))
    inv_lo, inv_hi = 1.0 / b.hi, 1.0 / b.lo
    spans_zero = (b.lo <= 0) & (b.hi >= 0)
    inv = Interval(torch.where(spans_zero, -math.inf, inv_lo),
                   torch.where(spans_zero, math.inf, inv_hi))
    return product(torch.mul, a, inv)


def decreasing(fn: Callable, x: Interval) -> Interval:
    """Rule for non-increasing elementwise fn (rsqrt, reciprocal of positives)."""
    return Interval(fn(x.hi), fn(x.lo))


def square(x: Interval) -> Interval:
    """x ** 2."""
    lo2, hi2 = x.lo * x.lo, x.hi * x.hi
    low = torch.where((x.lo <= 0) & (x.hi >= 0), torch.zeros_like(lo2), torch.minimum(lo2, hi2))
    return Interval(low, torch.maximum(lo2, hi2))


def _valley_min(fn: Callable) -> tuple[float, float]:
    """(argmin, min) of a one-dimensional function with one minimum in [-5, 0] (GELU, SiLU)."""
    xs = torch.linspace(-5.0, 0.0, 200_001, dtype=torch.float64)
    ys = fn(xs)
    i = int(ys.argmin())
    return float(xs[i]), float(ys[i]) - 1e-6  # grid step 2.5e-5: fn is flat there


_VALLEYS: dict[str, tuple[float, float]] = {}


def valley(fn: Callable, key: str, x: Interval) -> Interval:
    """Rule for f decreasing then increasing (GELU, SiLU): endpoints, or the minimum if inside."""
    if key not in _VALLEYS:
        _VALLEYS[key] = _valley_min(fn)
    xmin, fmin = _VALLEYS[key]
    flo, fhi = fn(x.lo), fn(x.hi)
    low = torch.where((x.lo <= xmin) & (x.hi >= xmin),
                      torch.full_like(flo, fmin), torch.minimum(flo, fhi))
    hi = torch.maximum(flo, fhi)
    return Interval(low - _REL * low.abs() - _ABS, hi + _REL * hi.abs() + _ABS)


def _lse_others(t: torch.Tensor, dim: int) -> torch.Tensor:
    """log sum_{j != i} exp(t_j) along dim, for every i (-inf when i is alone)."""
    n = t.shape[dim]
    if n == 1:
        return torch.full_like(t, -math.inf)
    # Leave-one-out logsumexp without cancellation: log of the sum of the others, via a mask.
    idx = torch.arange(n, device=t.device)
    eye = (idx[:, None] == idx[None, :])
    tt = t.movedim(dim, -1)
    others = tt.unsqueeze(-2).expand(*tt.shape[:-1], n, n).masked_fill(eye, -math.inf)
    return torch.logsumexp(others, dim=-1).movedim(-1, dim)


def softmax(x: Interval, dim: int, log: bool = False) -> Interval:
    """Exact elementwise box of (log_)softmax: x_i low with the others high, and vice versa."""
    lo_other = _lse_others(x.hi, dim)
    hi_other = _lse_others(x.lo, dim)
    log_lo = x.lo - torch.logaddexp(x.lo, lo_other)
    log_hi = x.hi - torch.logaddexp(x.hi, hi_other)
    if log:
        return Interval(log_lo - _REL * log_lo.abs() - _ABS, (log_hi + _ABS).clamp(max=0.0))
    lo = (log_lo.exp() * (1 - _REL) - _ABS).clamp(0.0, 1.0)
    hi = (log_hi.exp() * (1 + _REL) + _ABS).clamp(0.0, 1.0)
    return Interval(lo, hi)


def batch_norm(x: Interval, mean, var, weight, bias, eps: float) -> Interval:
    """Batch norm in eval mode: a per-channel affine map."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale + (bias if bias is not None else 0.0)
    mid, rad = x.mid_rad()
    return _from_mid_rad(mid * scale.reshape(shape) + shift.reshape(shape),
                         rad * scale.abs().reshape(shape))


def layer_norm(x: Interval, normalized_shape, weight, bias, eps: float) -> Interval:
    """Layer norm: bound (x_i - mean) / sqrt(var + eps), then the affine part."""
    dims = tuple(range(-len(normalized_shape), 0))
    n = math.prod(normalized_shape)
    s_lo, s_hi = x.lo.sum(dims, keepdim=True), x.hi.sum(dims, keepdim=True)
    # x_i - mean = (1 - 1/n) x_i - (1/n) sum_{j != i} x_j: exact box.
    d_lo = (1 - 1 / n) * x.lo - (s_hi - x.hi) / n
    d_hi = (1 - 1 / n) * x.hi - (s_lo - x.lo) / n
    var_hi = torch.maximum(d_lo * d_lo, d_hi * d_hi).mean(dims, keepdim=True)
    sd_min, sd_max = math.sqrt(eps), torch.sqrt(var_hi + eps)
    z_lo = torch.where(d_lo < 0, d_lo / sd_min, d_lo / sd_max)
    z_hi = torch.where(d_hi > 0, d_hi / sd_min, d_hi / sd_max)
    cap = math.sqrt(max(n - 1, 0))  # |x_i - mean| / std <= sqrt(n - 1) for any x
    z = Interval(z_lo.clamp(-cap, cap), z_hi.clamp(-cap, cap))
    if weight is None:
        return _from_mid_rad(*z.mid_rad())
    mid, rad = z.mid_rad()
    out_mid = mid * weight + (bias if bias is not None else 0.0)
    return _from_mid_rad(out_mid, rad * weight.abs())


def attention(q: Interval, k: Interval, v: Any, **_: Any) -> Interval:
    """scaled_dot_product_attention: each output row is a convex combination of V's rows."""
    v = v if is_interval(v) else _const(v)
    shape = (*q.shape[:-1], v.shape[-1])
    lo = v.lo.amin(dim=-2, keepdim=True).expand(shape)
    hi = v.hi.amax(dim=-2, keepdim=True).expand(shape)
    return Interval(lo.clone(), hi.clone())


def multihead_attention(m: nn.MultiheadAttention, query: Interval, key: Any, value: Any,
                        key_padding_mask: Any = None, need_weights: bool = True,
                        attn_mask: Any = None, average_attn_weights: bool = True,
                        is_causal: bool = False) -> tuple:
    """nn.MultiheadAttention: out_proj of the per-feature hull of V over the key positions."""
    value = value if is_interval(value) else _const(value)
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        w_v = m.in_proj_weight[2 * e :]
    else:
        w_v = m.v_proj_weight
    b_v = m.in_proj_bias[2 * e :] if m.in_proj_bias is not None else None
    v = affine(F.linear, value, w_v, b_v)
    seq = 1 if m.batch_first else 0
    if m.bias_k is not None or m.add_zero_attn:
        raise NoRuleError("no interval rule for MultiheadAttention with bias_k / add_zero_attn")
    lo = v.lo.amin(dim=seq, keepdim=True).expand(query.shape[:-1] + (e,))
    hi = v.hi.amax(dim=seq, keepdim=True).expand(query.shape[:-1] + (e,))
    out = affine(F.linear, Interval(lo.clone(), hi.clone()), m.out_proj.weight, m.out_proj.bias)
    if not need_weights:
        return out, None
    # Masks only drop key positions: the output stays inside the hull of all of V's rows.
    b = query.shape[0] if m.batch_first else query.shape[1]
    shape = (b, query.shape[seq], value.shape[seq])
    if not average_attn_weights:
        shape = (b, m.num_heads, *shape[1:])
    return out, Interval(torch.zeros(shape), torch.ones(shape))


def embedding(weight: torch.Tensor, shape: torch.Size) -> Interval:
    """Any row of the table: per-column hull."""
    return Interval(weight.amin(0).expand(*shape, -1).clone(),
                    weight.amax(0).expand(*shape, -1).clone())
