"""Run an fx graph on `Interval`s: the dispatch of every node to its interval rule.

`IntervalInterpreter(gm, fallback, examples).propagate(Interval(lo, hi))` returns, per node, an
`Interval` that contains the node's value for every input inside the box (batch dimension 1).
Like `torch/fx/passes/shape_prop.py`, it is an `fx.Interpreter` subclass: placeholders take the
input box, `get_attr` gives constant tensors, calls with only constant arguments are computed,
and every other call goes through a rule of `core.intervals`. A node without a rule, or whose
rule fails, takes its calibration box (or (-inf, inf)) and is listed in `unsupported`: the
analysis never crashes.

An exact (integer) input takes its example value, standing for *any* valid value: an embedding
of it gets the per-column hull of the whole table (sound for every index), an integer result
computed from it stays exact-dependent, and any other float computed from it takes its
calibration box (listed in `unsupported`, not sound).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from save_ros.core.select.intervals import (
    Interval,
    NoRuleError,
    affine,
    any_interval,
    attention,
    batch_norm,
    decreasing,
    div,
    embedding,
    is_interval,
    layer_norm,
    monotone,
    multihead_attention,
    neg,
    pick,
    product,
    softmax,
    square,
    sub,
    valley,
)

_MONOTONE_FUNCS = {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.flatten,
    torch.reshape, torch.permute, torch.transpose, torch.cat, torch.stack, torch.squeeze,
    torch.unsqueeze, torch.sum, torch.mean, torch.exp, torch.sqrt, torch.log, torch.clamp,
    torch.clip, torch.chunk, torch.split, torch.add, operator.add, operator.iadd,
    operator.getitem, F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.softplus, torch.amax, torch.amin, F.hardsigmoid,
    F.selu, F.celu, torch.nn.functional.adaptive_avg_pool3d, torch.nn.functional.avg_pool3d,
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
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Hardsigmoid, nn.SELU, nn.CELU,
)
# decreasing, then increasing, one minimum in [-5, 0]: the valley rule
_VALLEY_MODULES = {nn.SiLU: ("silu", F.silu), nn.Hardswish: ("hardswish", F.hardswish),
                   nn.Mish: ("mish", F.mish)}
_VALLEY_FUNCS = {F.silu: "silu", F.hardswish: "hardswish", F.mish: "mish"}


def _unbounded_like(example: Any) -> Any:
    """(-inf, inf) boxes in the structure of an example value (tensors, tuples of tensors)."""
    if isinstance(example, torch.Tensor):
        if not example.is_floating_point():
            return example
        return Interval(torch.full(example.shape, -math.inf, device=example.device),
                        torch.full(example.shape, math.inf, device=example.device))
    if isinstance(example, (tuple, list)):
        return type(example)(_unbounded_like(e) for e in example)
    return example


def _has_float(v: Any) -> bool:
    """True when a value holds a floating-point tensor (nested in tuples / lists)."""
    if isinstance(v, torch.Tensor):
        return v.is_floating_point()
    if isinstance(v, (tuple, list)):
        return any(_has_float(e) for e in v)
    return False


def _no_nan(v: Any) -> Any:
    """A box whose bound is NaN (inf - inf deep in a loose chain) bounds nothing: widen it."""
    if is_interval(v):
        if bool(torch.isnan(v.lo).any() or torch.isnan(v.hi).any()):
            return Interval(torch.nan_to_num(v.lo, nan=-math.inf),
                            torch.nan_to_num(v.hi, nan=math.inf))
        return v
    if isinstance(v, (tuple, list)):
        return type(v)(_no_nan(e) for e in v)
    return v


# ATen op names (overload and trailing "_" of in-place twins stripped) -> the torch function
# whose rule applies with the same positional arguments
_ATEN: dict[str, Callable] = {
    "conv2d": F.conv2d, "conv1d": F.conv1d, "linear": F.linear, "relu": torch.relu,
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "matmul": torch.matmul, "mm": torch.matmul, "bmm": torch.matmul, "neg": torch.neg,
    "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d,
    "adaptive_avg_pool2d": F.adaptive_avg_pool2d, "flatten": torch.flatten,
    "view": torch.reshape, "reshape": torch.reshape, "_unsafe_view": torch.reshape,
    "permute": torch.permute, "transpose": torch.transpose, "unsqueeze": torch.unsqueeze,
    "squeeze": torch.squeeze, "cat": torch.cat, "mean": torch.mean, "sum": torch.sum,
    "hardtanh": F.hardtanh, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "hardsigmoid": F.hardsigmoid, "gelu": F.gelu, "silu": F.silu, "hardswish": F.hardswish,
    "softmax": torch.softmax, "_softmax": torch.softmax, "layer_norm": F.layer_norm,
    "scaled_dot_product_attention": F.scaled_dot_product_attention, "exp": torch.exp,
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "leaky_relu": F.leaky_relu, "elu": F.elu,
    "select": lambda x, d, i: x.select(d, i), "slice": lambda x, d=0, a=None, b=None, s=1:
    x[(slice(None),) * d + (slice(a, b, s),)], "expand": lambda x, size, **_: x.expand(size),
    "t": torch.t, "contiguous": lambda x, *a, **k: x, "alias": lambda x: x,
}


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
        # nodes whose box rests on a fallback (theirs or an input's): not sound
        self.calibrated: set[str] = set()

    def propagate(self, *inputs: Any) -> dict[str, Interval]:
        """Run on the input boxes (an exact input: its example tensor, standing for any valid
        value); return {node name: Interval} for every node with a box."""
        self.exact: set[str] = set()  # nodes that depend on an exact input's value
        self.run(*inputs)
        return self.boxes

    def run_node(self, n: fx.Node) -> Any:
        """Apply the node's rule; on no rule or a failing rule, fall back and record it."""
        if n.op == "placeholder":
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and not out.is_floating_point():
                self.exact.add(n.name)
            return out
        if n.op in ("get_attr", "output"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if self.exact and any(i.name in self.exact for i in n.all_input_nodes):
            return self._from_exact(n, args, kwargs)
        try:
            if not any_interval(args) and not any_interval(kwargs):
                out = super().run_node(n)  # constants only: compute it
            else:
                out = self._rule(n, args, kwargs)
        except NoRuleError as exc:
            out = self._fall_back(n, str(exc))
        except Exception as exc:  # a rule that cannot handle these arguments: never crash
            out = self._fall_back(n, f"{type(exc).__name__} in rule: {exc}")
        if any(i.name in self.calibrated for i in n.all_input_nodes):
            self.calibrated.add(n.name)
        out = _no_nan(out)
        if is_interval(out):
            self.boxes[n.name] = out
        return out

    def _from_exact(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        """A node that reads an exact input's value (or a value computed from one)."""
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        if isinstance(module, nn.Embedding) and not any_interval(args):
            out = embedding(module.weight, args[0].shape)
        elif n.op == "call_function" and n.target is F.embedding and not any_interval(args):
            w = kwargs.get("weight", args[1] if len(args) > 1 else None)
            out = embedding(w, args[0].shape)
        else:
            out = None
            if not any_interval(args) and not any_interval(kwargs):
                try:
                    value = super().run_node(n)
                except Exception:  # noqa: BLE001 - any failure: bound it by calibration
                    value = None
                if value is not None and not _has_float(value):
                    self.exact.add(n.name)  # integer / bool / shape results: still exact
                    return value
            out = self._fall_back(n, "computed from an integer input without an interval "
                                     "rule (embedding is the one that is sound)")
        out = _no_nan(out)
        if is_interval(out):
            self.boxes[n.name] = out
        return out

    def _fall_back(self, n: fx.Node, why: str) -> Any:
        """The node's calibration box, else (-inf, inf) of its shape.

        A node whose value holds no float tensor (a torch.export guard returning None) bounds
        nothing: it is passed through without counting as unsupported.
        """
        if n.name not in self.fallback and n.name in self.shapes \
                and not _has_float(self.shapes[n.name]):
            return self.shapes[n.name]
        self.unsupported.append(f"{n.name}: {why}")
        self.calibrated.add(n.name)
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
        if type(m) in _VALLEY_MODULES:
            key, fn = _VALLEY_MODULES[type(m)]
            return valley(fn, key, x)
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
        if isinstance(fn, torch._ops.OpOverload):  # a torch.export program's ATen graph
            return self._aten_rule(fn, args, kwargs)
        if fn in _MONOTONE_FUNCS:
            if fn is F.dropout:
                return args[0]
            return monotone(fn, args, kwargs)
        if fn is getattr:  # x.shape and friends
            return getattr(pick(args[0], "lo"), args[1])
        if fn is F.linear:
            w = kwargs.get("weight", args[1] if len(args) > 1 else None)
            b = kwargs.get("bias", args[2] if len(args) > 2 else None)
            if is_interval(w) or is_interval(b):  # a weight computed from the input: bilinear
                out = product(lambda a, w_: F.linear(a, w_), args[0], w)
                return monotone(torch.add, (out, b), {}) if b is not None else out
            return affine(F.linear, args[0], w, b)
        if fn in (F.conv1d, F.conv2d) and not any_interval(args[1:]):
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
        if fn in _VALLEY_FUNCS:
            return valley(fn, _VALLEY_FUNCS[fn], args[0])
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
            return embedding(args[1], args[0].shape if is_interval(args[0]) else args[0].shape)
        raise NoRuleError(f"no interval rule for function {getattr(fn, '__name__', fn)}")

    def _aten_rule(self, op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
        """ATen ops as torch.export writes them, mapped onto the torch-level rules."""
        name = op.name().split("::")[-1].split(".")[0].rstrip("_")
        if name == "batch_norm" and not args[5]:  # (x, w, b, mean, var, training, mom, eps, cudnn)
            return batch_norm(args[0], args[3], args[4], args[1], args[2], args[7])
        if name == "_native_batch_norm_legit_no_training":  # (x, w, b, mean, var, mom, eps)
            out = batch_norm(args[0], args[3], args[4], args[1], args[2], args[6])
            return (out, None, None)
        if name == "dropout" or (name == "clone"):
            return args[0]
        if name in ("conv1d", "conv2d"):  # (x, w, b, stride, padding, dilation, groups)
            kw = dict(zip(("stride", "padding", "dilation", "groups"), args[3:], strict=False))
            return self._function_rule(_ATEN[name], args[:3], {**kw, **kwargs})
        fn = _ATEN.get(name)
        if fn is None:
            raise NoRuleError(f"no interval rule for {op.name()}")
        return self._function_rule(fn, args, kwargs)

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
