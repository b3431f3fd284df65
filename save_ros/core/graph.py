"""The model as an ordered DAG of layers, captured with torch.fx (module hooks where fx fails).

`capture(model, example_input) -> ModelGraph`. A *layer* is a graph node that computes
(`call_module`, `call_function`, `call_method`); placeholders, `get_attr` and the output are not
layers. Each `Layer` knows its op, the node names it reads, and the parameter / buffer names it
reads (module parameters for `call_module`, `get_attr` targets for functions and methods).

Running:
- `ModelGraph.run(x)` runs the whole model; `ModelGraph.record(x)` also returns every node's value
  keyed by node name (Selection's calibration and validation read them).
- The runtime's forward, and its re-run from node k for Edit, are `core.instrument.Instrumented`.

With the hooks fallback (`capture == "hooks"`, when symbolic tracing fails, e.g. data-dependent
control flow) the layers are the leaf modules in their first-call order, recorded with forward
hooks on the example input. Their data flow is unknown: Selection analyses only their weights, and
the runtime refuses such a model.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

INPUT = "input"  # the value name of the model input in the hooks fallback


class GraphCaptureError(RuntimeError):
    """Neither torch.fx nor module hooks could capture the model."""


@dataclass
class Layer:
    """One computing node of the model graph."""

    index: int
    name: str  # fx node name (or module path with hooks): the activation's name
    op: str  # call_module | call_function | call_method | module (hooks)
    target: str  # module path, function name or method name
    kind: str  # short op kind for reports: "Conv2d", "relu", "add", "matmul", ...
    inputs: list[str] = field(default_factory=list)  # node names it reads
    params: list[str] = field(default_factory=list)  # parameter / buffer names it reads
    users: list[str] = field(default_factory=list)  # node names that read its output


def _target_name(node: fx.Node) -> str:
    """A readable name for a node's target."""
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Short op kind: the module class for call_module, else the function / method name."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return _target_name(node).strip("_") or _target_name(node)


class ModelGraph:
    """An fx (or hook-recorded) graph of a model with per-layer inputs and parameters."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        capture: str,
        gm: fx.GraphModule | None = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.capture = capture  # "fx" or "hooks"
        self.gm = gm
        self._by_name = {layer.name: layer for layer in layers}
        if gm is not None:
            self._nodes = list(gm.graph.nodes)
            self._pos = {n.name: i for i, n in enumerate(self._nodes)}
            self.input_names = [n.name for n in self._nodes if n.op == "placeholder"]
        else:
            self._nodes = []
            self._pos = {}
            self.input_names = [INPUT]

    def layer(self, name: str) -> Layer:
        """The layer named `name` (KeyError lists the names)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no layer {name!r}; layers are {list(self._by_name)}") from None

    def index_of(self, name: str) -> int:
        """Position of the layer named `name` in `layers`."""
        return self.layer(name).index

    def nodes(self) -> list[fx.Node]:
        """The fx nodes in order (empty with hooks)."""
        return list(self._nodes)

    def run(self, *inputs: torch.Tensor) -> Any:
        """Run the whole model."""
        if self.gm is not None:
            return self.gm(*inputs)
        return self.model(*inputs)

    def record(
        self, *inputs: torch.Tensor, keep: Callable[[str], bool] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Run the model; return (output, {node name: value}) for inputs and every layer."""
        values: dict[str, Any] = {}
        if self.gm is None:
            return self._record_hooks(inputs, values, keep)
        interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        out = interp.run(*inputs)
        for node, v in interp.env.items():
            if node.op in ("placeholder", "call_module", "call_function", "call_method"):
                if keep is None or keep(node.name):
                    values[node.name] = v
        return out, values

    def _record_hooks(self, inputs, values, keep) -> tuple[Any, dict[str, Any]]:
        """record() for the hooks fallback: leaf module outputs by module path."""
        values[INPUT] = inputs[0] if len(inputs) == 1 else inputs
        handles = []
        for layer in self.layers:
            mod = self.model.get_submodule(layer.target)

            def hook(_m, _i, out, name=layer.name):
                if keep is None or keep(name):
                    values.setdefault(name, out)

            handles.append(mod.register_forward_hook(hook))
        try:
            out = self.model(*inputs)
        finally:
            for h in handles:
                h.remove()
        return out, values

    def architecture(self) -> str:
        """A text form of the architecture (fx code, or the module repr): part of hash keys."""
        if self.gm is not None:
            return self.gm.code
        return repr(self.model)


def node_params(node: fx.Node, modules: dict[str, torch.nn.Module]) -> list[str]:
    """Weight names an fx node reads: its module's parameters and buffers, or get_attr inputs."""
    params: list[str] = []
    if node.op == "call_module":
        mod = modules[node.target]
        prefix = f"{node.target}."
        params += [prefix + n for n, _ in mod.named_parameters()]
        params += [prefix + n for n, _ in mod.named_buffers()]
    for inp in node.all_input_nodes:
        if inp.op == "get_attr":
            params.append(str(inp.target))
    return params


def _fx_layers(gm: fx.GraphModule) -> list[Layer]:
    """Layers of a traced GraphModule in graph order."""
    modules = dict(gm.named_modules())
    layers: list[Layer] = []
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        params = node_params(node, modules)
        layers.append(
            Layer(
                index=len(layers),
                name=node.name,
                op=node.op,
                target=_target_name(node),
                kind=_kind(node, modules),
                inputs=[i.name for i in node.all_input_nodes if i.op != "get_attr"],
                params=params,
                users=[u.name for u in node.users if u.op != "output"],
            )
        )
    return layers


def _hook_layers(model: nn.Module, example_input: Any) -> list[Layer]:
    """Leaf modules in first-call order, recorded with forward hooks on the example input
    (a tensor, or a tuple of the model's positional inputs)."""
    order: list[str] = []
    handles = []
    for path, mod in model.named_modules():
        if path and not list(mod.children()):

            def hook(_m, _i, _o, path=path):
                if path not in order:
                    order.append(path)

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    except Exception as exc:
        raise GraphCaptureError(
            f"the model fails on the example input ({exc}); pass an input it accepts"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    layers = []
    for i, path in enumerate(order):
        mod = model.get_submodule(path)
        params = [f"{path}.{n}" for n, _ in mod.named_parameters()]
        params += [f"{path}.{n}" for n, _ in mod.named_buffers()]
        layers.append(Layer(i, path, "module", path, type(mod).__name__, [], params, []))
    return layers


# In-place ops whose out-of-place twin computes the same value.
INPLACE_FUNCS = {operator.iadd: operator.add, operator.isub: operator.sub,
                 operator.imul: operator.mul, operator.itruediv: operator.truediv}


def aten_out_of_place(op: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """`aten.relu_.default` -> `aten.relu.default` (same overload); None if not in place."""
    packet = op.name().split("::")[-1].split(".")[0]
    if not packet.endswith("_") or packet.endswith("__"):
        return None
    base = getattr(torch.ops.aten, packet[:-1], None)
    return getattr(base, op._overloadname, None) if base is not None else None


def inplace_free(model: nn.Module, gm: fx.GraphModule) -> fx.GraphModule:
    """The traced module with every in-place op made out-of-place; the model is left as it is.

    An in-place op (`nn.ReLU(inplace=True)`, `out += identity`) overwrites the value of the node
    before it, so a pass that keeps every node's value (calibration, intervals, saved values
    for DMR) would see the overwritten one. Modules with `inplace=True` are replaced by copies
    with `inplace=False` in the returned GraphModule (parameters stay shared with the model).
    """
    graph = gm.graph
    root: dict[str, object] = {}
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            if getattr(mod, "inplace", False) is True:
                mod = copy.copy(mod)
                mod.inplace = False
            root[node.target] = mod
        elif node.op == "get_attr":
            obj: object = model
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            root[node.target] = obj
        elif node.op in ("call_function", "call_method"):
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
            elif node.op == "call_function" and node.target in INPLACE_FUNCS:
                node.target = INPLACE_FUNCS[node.target]
            elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                twin = aten_out_of_place(node.target)
                if twin is not None:
                    node.target = twin
    out = fx.GraphModule(root, graph, class_name=type(model).__name__)
    out.training = model.training
    return out


def capture(model: nn.Module, example_input: Any) -> ModelGraph:
    """Capture `model` as a ModelGraph: torch.fx symbolic trace, module hooks if that fails.

    `example_input` (a tensor, or a tuple of positional inputs) is only run by the hooks
    fallback; an fx graph has one placeholder per parameter of `forward`."""
    try:
        gm = inplace_free(model, fx.symbolic_trace(model))
        return ModelGraph(model, _fx_layers(gm), "fx", gm)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
            "falling back to module hooks (capture='hooks'): no data flow, coarser analysis",
            stacklevel=2,
        )
    return ModelGraph(model, _hook_layers(model, example_input), "hooks", None)
