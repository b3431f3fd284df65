"""Sound interval propagation through an fx graph: run the model on boxes instead of tensors.

`IntervalInterpreter(gm, fallback).propagate(Interval(lo, hi))` returns, per node, an `Interval`
of elementwise lower / upper bounds that contains the node's value for every input inside the box
(batch dimension 1). Like `torch/fx/passes/shape_prop.py`, it is an `fx.Interpreter` subclass:
placeholders take the input box, `get_attr` gives constant tensors, and every call goes through a
rule. Rules:
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
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

_REL = 2.0**-16  # relative widening of affine results: float rounding stays inside
_ABS = 2.0**-40


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


def _is_iv(v: Any) -> bool:
    return isinstance(v, Interval)


def _any_iv(args: Any) -> bool:
    """True if an Interval occurs anywhere in (nested) args."""
    if _is_iv(args):
        return True
    if isinstance(args, (list, tuple)):
        return any(_any_iv(a) for a in args)
    if isinstance(args, dict):
        return any(_any_iv(a) for a in args.values())
    return False


def _pick(args: Any, side: str) -> Any:
    """Replace every Interval in (nested) args by its lo or hi tensor."""
    if _is_iv(args):
        return args.lo if side == "lo" else args.hi
    if isinstance(args, tuple):
        return tuple(_pick(a, side) for a in args)
    if isinstance(args, list):
        return [_pick(a, side) for a in args]
    if isinstance(args, dict):
        return {k: _pick(a, side) for k, a in args.items()}
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
    return _zip(fn(*_pick(args, "lo"), **_pick(kwargs, "lo")),
                fn(*_pick(args, "hi"), **_pick(kwargs, "hi")))


def affine(fn: Callable, x: Interval, weight: torch.Tensor, bias: torch.Tensor | None,
           **kw: Any) -> Interval:
    """Exact box of fn(x, W, b) for a linear map fn (linear, conv): W mid + b +- |W| rad."""
    mid, rad = x.mid_rad()
    return _from_mid_rad(fn(mid, weight, bias, **kw), fn(rad, weight.abs(), None, **kw))


def product(fn: Callable, a: Any, b: Any) -> Interval:
    """Box of a bilinear fn(a, b) (mul, matmul, bmm): Rump's midpoint-radius bound."""
    a = a if _is_iv(a) else _const(a)
    b = b if _is_iv(b) else _const(b)
    am, ar = a.mid_rad()
    bm, br = b.mid_rad()
    rad = fn(am.abs(), br) + fn(ar, bm.abs()) + fn(ar, br)
    return _from_mid_rad(fn(am, bm), rad)


def neg(x: Interval) -> Interval:
    """-x."""
    return Interval(-x.hi, -x.lo)


def sub(a: Any, b: Any) -> Any:
    """a - b."""
    a = a if _is_iv(a) else _const(a)
    b = b if _is_iv(b) else _const(b)
    return Interval(a.lo - b.hi, a.hi - b.lo)


def div(a: Any, b: Any) -> Interval:
    """a / b; unbounded where the box of b contains 0."""
    if not _is_iv(b):
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
    v = v if _is_iv(v) else _const(v)
    shape = (*q.shape[:-1], v.shape[-1])
    lo = v.lo.amin(dim=-2, keepdim=True).expand(shape)
    hi = v.hi.amax(dim=-2, keepdim=True).expand(shape)
    return Interval(lo.clone(), hi.clone())


def multihead_attention(m: nn.MultiheadAttention, query: Interval, key: Any, value: Any,
                        key_padding_mask: Any = None, need_weights: bool = True,
                        attn_mask: Any = None, average_attn_weights: bool = True,
                        is_causal: bool = False) -> tuple:
    """nn.MultiheadAttention: out_proj of the per-feature hull of V over the key positions."""
    value = value if _is_iv(value) else _const(value)
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


_MONOTONE_FUNCS = {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.flatten,
    torch.reshape, torch.permute, torch.transpose, torch.cat, torch.stack, torch.squeeze,
    torch.unsqueeze, torch.sum, torch.mean, torch.exp, torch.sqrt, torch.log, torch.clamp,
    torch.clip, torch.chunk, torch.split, torch.add, operator.add, operator.iadd,
    operator.getitem, F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.softplus, torch.amax, torch.amin,
    torch.movedim, torch.narrow, torch.roll, F.pad, torch.max_pool2d, torch.avg_pool1d,
}
_MONOTONE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "unsqueeze", "squeeze",
    "expand", "expand_as", "repeat", "chunk", "split", "sum", "mean", "relu", "sigmoid", "tanh",
    "exp", "sqrt", "clamp", "clip", "t", "add", "__add__", "__radd__", "amax", "amin", "movedim",
    "narrow", "float", "to", "type_as", "view_as", "reshape_as", "flip", "unflatten", "unbind",
    "__getitem__", "size", "dim", "detach", "clone",
}
_MONOTONE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.Softplus,
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d,
    nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)


def _unbounded_like(example: Any) -> Any:
    """(-inf, inf) boxes in the structure of an example value (tensors, tuples of tensors)."""
    if isinstance(example, torch.Tensor):
        if not example.is_floating_point():
            return example
        return Interval(torch.full(example.shape, -math.inf), torch.full(example.shape, math.inf))
    if isinstance(example, (tuple, list)):
        return type(example)(_unbounded_like(e) for e in example)
    return example


class NoRuleError(LookupError):
    """An op without an interval rule (the interpreter falls back to calibration)."""


class IntervalInterpreter(fx.Interpreter):
    """Runs a GraphModule on `Interval`s; records per-node boxes and the ops that fell back."""

    def __init__(self, gm: fx.GraphModule,
                 fallback: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 shapes: dict[str, Any] | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.fallback = fallback or {}  # node name -> (lo, hi) from calibration, batch dim 1
        self.shapes = shapes or {}  # node name -> example value (batch 1), for unbounded boxes
        self.unsupported: list[str] = []
        self.boxes: dict[str, Interval] = {}

    def propagate(self, *inputs: Interval) -> dict[str, Interval]:
        """Run on the input boxes; return {node name: Interval} for every node with a box."""
        self.run(*inputs)
        return self.boxes

    def run_node(self, n: fx.Node) -> Any:
        """Apply the node's rule; on no rule or a failing rule, fall back and record it."""
        if n.op in ("placeholder", "get_attr", "output"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        try:
            if not _any_iv(args) and not _any_iv(kwargs):
                out = super().run_node(n)  # constants only: compute it
            else:
                out = self._rule(n, args, kwargs)
        except NoRuleError as exc:
            out = self._fall_back(n, str(exc))
        except Exception as exc:  # a rule that cannot handle these arguments: never crash
            out = self._fall_back(n, f"{type(exc).__name__} in rule: {exc}")
        if _is_iv(out):
            self.boxes[n.name] = out
        return out

    def _fall_back(self, n: fx.Node, why: str) -> Any:
        """The node's calibration box, else (-inf, inf) of its shape."""
        self.unsupported.append(f"{n.name}: {why}")
        if n.name in self.fallback:
            lo, hi = self.fallback[n.name]
            return Interval(lo.clone(), hi.clone())
        if n.name in self.shapes:
            return _unbounded_like(self.shapes[n.name])
        raise RuntimeError(f"no calibration box and no example value for {n.name}") from None

    def _rule(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        """Dispatch on the node's op."""
        if n.op == "call_module":
            return self._module_rule(self.fetch_attr(n.target), args, kwargs)
        if n.op == "call_method":
            return self._method_rule(n.target, args, kwargs)
        return self._function_rule(n.target, args, kwargs)

    def _module_rule(self, m: nn.Module, args: tuple, kwargs: dict) -> Any:
        x = args[0]
        if isinstance(m, _MONOTONE_MODULES):
            return monotone(m.forward, args, kwargs)
        if isinstance(m, nn.Linear):
            return affine(F.linear, x, m.weight, m.bias)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.padding_mode == "zeros":
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(m.kernel_size)]
            return affine(conv, x, m.weight, m.bias, stride=m.stride, padding=m.padding,
                          dilation=m.dilation, groups=m.groups)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training \
                and m.running_mean is not None:
            return batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)
        if isinstance(m, nn.LayerNorm):
            return layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
        if isinstance(m, nn.GELU):
            return valley(lambda t: F.gelu(t, approximate=m.approximate), f"gelu{m.approximate}", x)
        if isinstance(m, nn.SiLU):
            return valley(F.silu, "silu", x)
        if isinstance(m, nn.Softmax):
            return softmax(x, m.dim if m.dim is not None else -1)
        if isinstance(m, nn.LogSoftmax):
            return softmax(x, m.dim if m.dim is not None else -1, log=True)
        if isinstance(m, nn.Embedding):
            return embedding(m.weight, x.shape)
        if isinstance(m, nn.MultiheadAttention):
            return multihead_attention(m, *args, **kwargs)
        raise NoRuleError(f"no interval rule for module {type(m).__name__}")

    def _function_rule(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if fn in _MONOTONE_FUNCS:
            if fn is F.dropout:
                return args[0]
            return monotone(fn, args, kwargs)
        if fn is getattr:  # x.shape and friends
            return getattr(_pick(args[0], "lo"), args[1])
        if fn is F.linear:
            w = kwargs.get("weight", args[1] if len(args) > 1 else None)
            b = kwargs.get("bias", args[2] if len(args) > 2 else None)
            if _is_iv(w) or _is_iv(b):  # a weight computed from the input: bilinear
                out = product(lambda a, w_: F.linear(a, w_), args[0], w)
                return monotone(torch.add, (out, b), {}) if b is not None else out
            return affine(F.linear, args[0], w, b)
        if fn in (F.conv1d, F.conv2d) and not _any_iv(args[1:]):
            return affine(fn, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"),
                          **{k: v for k, v in kwargs.items() if k != "bias"})
        if fn in (torch.matmul, operator.matmul, torch.bmm, torch.mm):
            return product(torch.matmul, args[0], args[1])
        if fn in (torch.mul, operator.mul, operator.imul):
            return product(torch.mul, args[0], args[1])
        if fn in (torch.sub, operator.sub, operator.isub):
            return sub(args[0], args[1])
        if fn in (torch.neg, operator.neg):
            return neg(args[0])
        if fn in (torch.div, operator.truediv, operator.itruediv):
            return div(args[0], args[1])
        if fn in (F.gelu,):
            approx = kwargs.get("approximate", "none")
            return valley(lambda t: F.gelu(t, approximate=approx), f"gelu{approx}", args[0])
        if fn is F.silu:
            return valley(F.silu, "silu", args[0])
        if fn in (torch.softmax, F.softmax, torch.log_softmax, F.log_softmax):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            return softmax(args[0], dim, log=fn in (torch.log_softmax, F.log_softmax))
        if fn is F.layer_norm:
            shape = kwargs.get("normalized_shape", args[1] if len(args) > 1 else None)
            w = kwargs.get("weight", args[2] if len(args) > 2 else None)
            b = kwargs.get("bias", args[3] if len(args) > 3 else None)
            return layer_norm(args[0], shape, w, b, kwargs.get("eps", 1e-5))
        if fn is F.batch_norm and not kwargs.get("training", False):
            mean, var = args[1], args[2]
            return batch_norm(args[0], mean, var, kwargs.get("weight"), kwargs.get("bias"),
                              kwargs.get("eps", 1e-5))
        if fn is F.scaled_dot_product_attention:
            return attention(*args, **kwargs)
        if fn is torch.rsqrt:
            return decreasing(torch.rsqrt, args[0])
        if fn is F.embedding:
            return embedding(args[1], args[0].shape if _is_iv(args[0]) else args[0].shape)
        raise NoRuleError(f"no interval rule for function {getattr(fn, '__name__', fn)}")

    def _method_rule(self, name: str, args: tuple, kwargs: dict) -> Any:
        fn = getattr(torch.Tensor, name)
        if name in _MONOTONE_METHODS:
            return monotone(fn, args, kwargs)
        table: dict[str, Callable[[], Any]] = {
            "matmul": lambda: product(torch.matmul, args[0], args[1]),
            "bmm": lambda: product(torch.matmul, args[0], args[1]),
            "mul": lambda: product(torch.mul, args[0], args[1]),
            "__mul__": lambda: product(torch.mul, args[0], args[1]),
            "sub": lambda: sub(args[0], args[1]),
            "__sub__": lambda: sub(args[0], args[1]),
            "__rsub__": lambda: sub(args[1], args[0]),
            "neg": lambda: neg(args[0]),
            "div": lambda: div(args[0], args[1]),
            "__truediv__": lambda: div(args[0], args[1]),
            "softmax": lambda: softmax(args[0], kwargs.get("dim", args[1] if len(args) > 1
                                                            else -1)),
            "rsqrt": lambda: decreasing(torch.rsqrt, args[0]),
            "pow": lambda: square(args[0]) if args[1] == 2 else _no_rule(name),
            "__pow__": lambda: square(args[0]) if args[1] == 2 else _no_rule(name),
        }
        if name in table:
            return table[name]()
        raise NoRuleError(f"no interval rule for method Tensor.{name}")


def _no_rule(name: str) -> Any:
    raise NoRuleError(f"no interval rule for Tensor.{name} with these arguments")
