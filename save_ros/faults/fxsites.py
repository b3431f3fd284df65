"""Activation sites at torch.fx nodes: the output of every computing node, functional ops too.

A site is named by its fx node name as `torch.fx.symbolic_trace(model)` names it (`relu_1`,
`add_3`, `getitem_5`): the names SAVE's Analysis uses for activations (docs/design.md). Residual
adds, attention outputs, `F.silu`, a squeeze-excite `torch.mul` are sites, not only leaf modules.

How: `FxTaps(model)` traces the model once and inserts after every computing node a call
`taps.fire(value, "node_name")`; the traced GraphModule shares the model's modules and
parameters. While a fault context is active the model's own `forward` is swapped for the traced
one, so whoever calls `model(x)` (a campaign method, a user's loop) runs the taps; with no
context active a tap is one Python call that returns its input. A tap due to fire returns a
corrupted copy of the node's output, which every reader of that node then sees.

Which nodes are sites (decided on a probe pass): computing nodes whose output is a float tensor
with a bit layout that owns new memory. A pure view (reshape, permute, flatten, `x[:, 0]`,
`expand`, a `chunk` piece) or an identity (Dropout in eval, Identity) aliases its input's
storage: flipping "it" is flipping the input, so it is not a separate site. An in-place op
(`relu(inplace=True)`, `x.add_(y)`) writes a new value into its input's memory: a site. A
`getitem` that picks a tensor out of a tuple a module returned (attention's output) is a site.

Code that runs the graph by other means never calls the taps: SAVE's runtime executes its own fx
code, so faults on a `protect()`ed model use module-path sites (`Target(sites="modules")`).
"""

from __future__ import annotations

import builtins
import operator
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from save_ros.core import bits
from save_ros.errors import UserError

LAYER_OPS = ("call_module", "call_function", "call_method")
_NO_TAP = (builtins.getattr, torch._assert)  # shape reads and asserts: never a tensor
_INPLACE_FUNCS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                  operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
                  operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}


class UntraceableModelError(UserError, ValueError):
    """fx activation sites were asked for a model that torch.fx cannot trace."""


@dataclass(frozen=True)
class NodeInfo:
    """One computing node of the traced model: what it runs and what it reads."""

    name: str  # fx node name = the site name
    op: str  # call_module | call_function | call_method
    target: str  # module path (call_module) or function / method name
    module: type | None  # the module's class for call_module
    inputs: tuple[str, ...]  # names of the nodes it reads
    inplace: bool  # writes its result into an input's memory

    @property
    def module_path(self) -> str | None:
        """The module path of a call_module node, else None."""
        return self.target if self.op == "call_module" else None


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _is_identity(node: fx.Node, module: nn.Module | None) -> bool:
    """Dropout (eval) and Identity return their input: never a site, even when `inplace`."""
    if module is not None:
        return isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd))
    return "dropout" in _target_name(node)


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if _is_identity(node, module):
        return False
    if module is not None:
        return getattr(module, "inplace", False) is True
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCS
    name = str(node.target)
    return name.endswith("_") and not name.endswith("__")


class FxTaps:
    """A traced copy of a model's forward that calls `fire(value, name)` after every node."""

    def __init__(self, model: nn.Module) -> None:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
            raise UntraceableModelError(
                f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
                "use module-path activation sites (Target(sites='modules'), or 'auto')"
            ) from exc
        self.active: Callable[[Any, str], Any] | None = None
        modules = dict(gm.named_modules())
        graph = gm.graph
        self.placeholders = [n.name for n in graph.nodes if n.op == "placeholder"]
        self.attrs = {n.name: str(n.target) for n in graph.nodes if n.op == "get_attr"}
        self.nodes: dict[str, NodeInfo] = {}
        inputs = {n.name: tuple(i.name for i in n.all_input_nodes) for n in graph.nodes}
        gm._save_ros_taps = self
        first = next(n for n in graph.nodes if n.op != "placeholder")
        with graph.inserting_before(first), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fx warns: a plain attribute, not a tensor/module
            holder = graph.get_attr("_save_ros_taps")
        for node in list(graph.nodes):
            if node.op not in LAYER_OPS or node.target in _NO_TAP:
                continue
            module = modules.get(node.target) if node.op == "call_module" else None
            self.nodes[node.name] = NodeInfo(
                node.name, node.op, _target_name(node), type(module) if module else None,
                inputs[node.name], _is_inplace(node, module))
            with graph.inserting_after(node):
                tap = graph.call_method("fire", (holder, node, node.name))
            node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
        gm.recompile()
        self.gm = gm
        # what `matches` compares: (path parts, object) of every module and attribute traced
        self._traced = [(tuple(n.target.split(".")), gm.get_submodule(n.target))
                        for n in self.nodes.values() if n.op == "call_module"]
        self._traced += [(tuple(t.split(".")), _fetch(gm, t)) for t in self.attrs.values()]

    def fire(self, value: Any, name: str) -> Any:
        """Called after node `name`: the value, or what the active context makes of it."""
        active = self.active
        return value if active is None else active(value, name)

    def matches(self, model: nn.Module) -> bool:
        """True while the model still holds the modules and attributes that were traced.

        Checked on every fault context (a few microseconds: plain attribute walks).
        """
        try:
            return all(_walk(model, parts) is obj for parts, obj in self._traced)
        except AttributeError:
            return False

    def attr_value(self, node_name: str) -> Any:
        """The value a get_attr node reads."""
        return _fetch(self.gm, self.attrs[node_name])


def _walk(root: Any, parts: tuple[str, ...]) -> Any:
    """`root.a.b.c` through the modules' own dicts (nn.Module.__getattr__ is slow)."""
    cur = root
    for part in parts:
        d = cur.__dict__
        if part in d:
            cur = d[part]
            continue
        for store in ("_modules", "_parameters", "_buffers"):
            inner = d.get(store)
            if inner is not None and part in inner:
                cur = inner[part]
                break
        else:
            raise AttributeError(part)
    return cur


def _fetch(root: Any, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


_cache: weakref.WeakKeyDictionary[nn.Module, FxTaps] = weakref.WeakKeyDictionary()


def fx_taps(model: nn.Module) -> FxTaps:
    """The model's taps, traced once and re-traced when its modules were replaced."""
    taps = _cache.get(model)
    if taps is None or not taps.matches(model):
        taps = FxTaps(model)
        _cache[model] = taps
    return taps


@contextmanager
def tapped(model: nn.Module, taps: FxTaps, fire: Callable[[Any, str], Any]) -> Iterator[None]:
    """Run `model(x)` through the taps, with `fire` deciding at every node, inside the context."""
    if taps.active is not None:
        raise RuntimeError("another activation-fault context is active on this model; fx-site "
                           "contexts do not nest")
    had = "forward" in model.__dict__
    old = model.__dict__.get("forward")
    model.forward = taps.gm.forward  # an instance attribute: nn.Module.__call__ finds it first
    taps.active = fire
    try:
        yield
    finally:
        taps.active = None
        if had:
            model.forward = old
        else:
            del model.forward


def _summary(value: Any) -> tuple | None:
    if isinstance(value, torch.Tensor):
        return (value.untyped_storage().data_ptr(), value.numel(), value.dtype)
    return None


def probe(model: nn.Module, example_input: Any) -> tuple[FxTaps, list[tuple[str, int,
                                                                        torch.dtype]]]:
    """Run one pass and return the taps and the sites (name, numel, dtype) in graph order.

    `example_input`: a tensor, or a tuple of the model's positional inputs."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    taps = fx_taps(model)
    seen: dict[str, tuple | None] = {}

    def record(value: Any, name: str) -> Any:
        seen.setdefault(name, _summary(value))
        return value

    with tapped(model, taps, record), torch.inference_mode():
        model(*args)
    storage: dict[str, set[int]] = {}
    for name, x in zip(taps.placeholders, args, strict=False):
        storage[name] = {x.untyped_storage().data_ptr()}
    for name in taps.attrs:
        v = taps.attr_value(name)
        storage[name] = {v.untyped_storage().data_ptr()} if isinstance(v, torch.Tensor) else set()

    def sources(name: str) -> set[int]:
        """Storages a node's value may alias: its own, or (a tuple) its inputs' storages."""
        if name not in storage:
            s = seen.get(name)
            info = taps.nodes.get(name)
            if s is not None:
                storage[name] = {s[0]}
            elif info is not None:
                storage[name] = set().union(*(sources(i) for i in info.inputs))
            else:
                storage[name] = set()
        return storage[name]

    sites = []
    for name, info in taps.nodes.items():
        s = seen.get(name)
        if s is None or s[2] not in bits.LAYOUTS or s[1] == 0:
            continue
        if info.module is not None and issubclass(info.module, (nn.Identity,
                                                                nn.modules.dropout._DropoutNd)):
            continue
        read = set().union(*(sources(i) for i in info.inputs)) if info.inputs else set()
        if info.inplace or s[0] not in read:
            sites.append((name, s[1], s[2]))
    return taps, sites
