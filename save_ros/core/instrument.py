"""The runtime's hot path: the model's own fx code, changed only to also return every value.

`Instrumented(graph)` copies the fx graph of a `ModelGraph` and makes its output
`(model_output, (v_0, v_1, ...))`: the value of every node (inputs, parameters read with
`get_attr`, and each layer's output) in graph order. There are no hooks and no interpreter on the
inference path, so the Python overhead is the generated forward's own; keeping references costs
nothing (no copies: activations are fresh tensors per inference).

Off the hot path it re-computes one node from saved values (DMR) and re-runs the graph from node
k (Edit), calling `module.forward` directly so that module hooks do not fire again: a re-run is a
new execution, and a transient upset of the first run does not repeat in it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from save_ros.core.graph import INPLACE_FUNCS, ModelGraph
from save_ros.errors import UserError

LAYER_OPS = ("call_module", "call_function", "call_method")

_INPLACE_FUNCS = INPLACE_FUNCS  # anything else in place is refused

def _direct(mod: nn.Module) -> Callable[..., Any] | None:
    """The torch op a common module's forward ends in, called without its Python wrappers.

    Same kernel, same arguments, so the same bits (the DMR determinism probe checks it); it
    saves the module's Python frames and `Module.__getattr__` look-ups, which cost as much as
    the op itself at batch 1. Parameters are read from the module's dicts at call time (a
    re-assigned parameter is followed). None: call `mod.forward`.
    """
    t, p, b = type(mod), mod._parameters, mod._buffers
    if t is nn.Conv2d and mod.padding_mode == "zeros":
        s, pad, d, g = mod.stride, mod.padding, mod.dilation, mod.groups
        return lambda x: torch.conv2d(x, p["weight"], p["bias"], s, pad, d, g)
    if t is nn.Linear:
        return lambda x: torch._C._nn.linear(x, p["weight"], p["bias"])
    if t in (nn.BatchNorm1d, nn.BatchNorm2d) and mod.track_running_stats:
        eps, fwd = mod.eps, mod.forward

        def bn(x: torch.Tensor) -> torch.Tensor:
            if mod.training:  # batch statistics: the module's own logic
                return fwd(x)
            return torch.batch_norm(x, p["weight"], p["bias"], b["running_mean"],
                                    b["running_var"], False, 0.0, eps,
                                    torch.backends.cudnn.enabled)
        return bn
    if t is nn.LayerNorm:
        shape, eps = mod.normalized_shape, mod.eps
        return lambda x: torch.layer_norm(x, shape, p["weight"], p["bias"], eps,
                                          torch.backends.cudnn.enabled)
    if t is nn.ReLU and not mod.inplace:
        return torch.relu
    if t is nn.GELU:
        approx = mod.approximate
        return lambda x: torch._C._nn.gelu(x, approximate=approx)
    if t is nn.Softmax and mod.dim is not None:
        dim = mod.dim
        return lambda x: x.softmax(dim)
    if t is nn.Flatten:
        start, end = mod.start_dim, mod.end_dim
        return lambda x: x.flatten(start, end)
    if t is nn.MaxPool2d and not mod.return_indices:
        k, s, pad, d, ceil = mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode
        return lambda x: torch.max_pool2d(x, k, s, pad, d, ceil)
    if t is nn.AdaptiveAvgPool2d and None not in (mod.output_size if isinstance(
            mod.output_size, tuple) else (mod.output_size,)):
        size = mod.output_size
        return lambda x: torch._C._nn.adaptive_avg_pool2d(x, size)
    return None


class UnsupportedModelError(UserError, RuntimeError):
    """The runtime cannot protect this model (the message names the op and what to do)."""


def _fetch_attr(root: nn.Module, target: str) -> Any:
    """The attribute at dotted path `target` (a parameter, buffer or constant)."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _make_inplace_free(model: nn.Module, graph: fx.Graph) -> list[str]:
    """Turn in-place ops into their out-of-place twins so saved values stay valid; list changes.

    A saved input that a later in-place op overwrote would make DMR and re-runs wrong.
    """
    changed = []
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_module":
            mod = modules.get(node.target)
            if getattr(mod, "inplace", False) is True:
                mod.inplace = False  # same values, fresh output tensor
                changed.append(f"{node.target}.inplace=False")
        elif node.op in ("call_function", "call_method"):
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
                changed.append(f"{node.name}: inplace=False")
            elif node.op == "call_function" and node.target in _INPLACE_FUNCS:
                node.target = _INPLACE_FUNCS[node.target]
                changed.append(f"{node.name}: out of place")
            elif node.op == "call_method" and str(node.target).endswith("_") \
                    and not str(node.target).endswith("__"):
                raise UnsupportedModelError(
                    f"node {node.name} calls the in-place method {node.target!r}: SAVE re-computes "
                    "layers from saved inputs, which an in-place op overwrites; use the "
                    f"out-of-place {str(node.target)[:-1]!r} in the model's forward"
                )
    return changed


class Instrumented:
    """A model's forward that also returns every node's value, and re-runs from any node."""

    def __init__(self, graph: ModelGraph) -> None:
        if graph.gm is None:
            raise UnsupportedModelError(
                f"torch.fx could not trace {type(graph.model).__name__} (capture='hooks'); the "
                "runtime needs the data flow between layers. Make forward traceable (no "
                "data-dependent Python control flow) or wrap the untraceable part in a leaf module"
            )
        self.model = graph.model
        # `meta`: the model's graph made in-place free; what re-computation and reports use
        meta = fx.Graph()
        out_val = meta.graph_copy(graph.gm.graph, {})
        meta.output(out_val)
        self.inplace_changes = _make_inplace_free(self.model, meta)
        self.nodes: list[fx.Node] = [n for n in meta.nodes if n.op != "output"]
        self.names = [n.name for n in self.nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        # `hot`: the same graph returning every value, with modules called as
        # `mod._call_impl(...)`: hooks (fault injection, user hooks) still run, but not through
        # `nn.Module.__call__`, which torch.fx patches process-wide while it traces any model
        # (reanalyze() traces while inferences run)
        hot = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        hot_out = hot.graph_copy(meta, env)
        hot.output((hot_out, tuple(env[n] for n in self.nodes)))
        for node in list(hot.nodes):
            if node.op == "call_module":
                with hot.inserting_before(node):
                    mod_node = hot.get_attr(node.target)
                node.op, node.args = "call_method", (mod_node, *node.args)
                node.target = "_call_impl"
        self.gm = fx.GraphModule(graph.gm, hot)
        self._meta = meta
        self._out_template = next(n for n in meta.nodes if n.op == "output").args[0]
        self._new_nodes = self.nodes
        self._fns: list[Callable[..., Any] | None] = [self._compile(n) for n in self._new_nodes]
        # positions of plain node arguments, so a re-computation skips the generic map_arg
        self._simple: list[tuple[int, ...] | None] = [
            tuple(self.index[a.name] for a in n.args)
            if not n.kwargs and all(isinstance(a, fx.Node) for a in n.args) else None
            for n in self._new_nodes]
        self.layer_indices = [i for i, n in enumerate(self.nodes) if n.op in LAYER_OPS]
        self.placeholders = [i for i, n in enumerate(self.nodes) if n.op == "placeholder"]

    def checksummed(self, checked: Sequence[int], last_read: dict[int, int],
                    site: Callable[[Any, int], Any] | None = None,
                    site_nodes: Sequence[int] = (),
                    keep: set[int] | None = None) -> Callable[..., Any]:
        """A forward that also takes memory checksums (`core.verify.memsum`) of `checked` nodes.

        It returns `(output, values, write_sums, read_sums)`: for checked node k (in the order
        given), `write_sums[k]` is the bit sum of its output taken right after its producer wrote
        it (inside `produce_and_sum` for a module, between its forward and its forward hooks),
        `read_sums[k]` the same sum after its last reader (`last_read[i]`: the node position of
        the last node that reads node i's memory, any alias included; -1: the model output, read
        at the end). `site(value, i)`, when given, runs right after node i (of `site_nodes`)
        and its write sum, and may change the value in memory (activation fault sites for
        campaigns). `keep`: the nodes whose values the returned tuple holds (None: all); the
        others are None there, so their memory is freed after its last use, as in the plain
        forward.
        """
        from save_ros.core.verify.memsum import bitsum, produce_and_sum

        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        meta_out = next(n for n in self._meta.nodes if n.op == "output")
        pos = {n: i for i, n in enumerate(self.nodes)}
        checked_set = set(checked)
        sites = set(site_nodes) if site is not None else set()
        writes: dict[int, fx.Node] = {}
        reads: dict[int, fx.Node] = {}
        after: dict[int, list[int]] = {}
        for i in checked:
            after.setdefault(last_read[i], []).append(i)
        for node in self._meta.nodes:
            if node.op == "output":
                break
            i = pos[node]
            if node.op == "call_module" and i in checked_set:
                mod = g.get_attr(node.target)
                args = fx.node.map_arg(node.args, lambda n: env[n])
                pair = g.call_function(produce_and_sum, (mod, *args))
                val = g.call_function(operator.getitem, (pair, 0))
                writes[i] = g.call_function(operator.getitem, (pair, 1))
            else:
                if node.op == "call_module":  # hooks run, not through Module.__call__ (above)
                    mod = g.get_attr(node.target)
                    val = g.call_method("_call_impl", (mod, *fx.node.map_arg(
                        node.args, lambda n: env[n])), fx.node.map_arg(node.kwargs,
                                                                        lambda n: env[n]))
                else:
                    val = g.node_copy(node, lambda n: env[n])
                if i in checked_set:
                    writes[i] = g.call_function(bitsum, (val,))
            if i in sites:
                val = g.call_function(site, (val, i))
            env[node] = val
            for j in after.get(i, ()):
                reads[j] = g.call_function(bitsum, (env[self.nodes[j]],))
        for j in after.get(-1, ()):
            reads[j] = g.call_function(bitsum, (env[self.nodes[j]],))
        out = fx.node.map_arg(meta_out.args[0], lambda n: env[n])
        stack = torch.stack
        w = g.call_function(stack, ([writes[i] for i in checked],)) if checked else None
        r = g.call_function(stack, ([reads[i] for i in checked],)) if checked else None
        g.output((out, tuple(env[n] if keep is None or i in keep else None
                             for i, n in enumerate(self.nodes)), w, r))
        gm = fx.GraphModule(self.gm, g)
        return gm.forward

    def last_readers(self, values: Sequence[Any]) -> dict[int, int]:
        """Per node: the position of the last node that reads its memory (-1: the output).

        Views and aliases share memory: a node's memory is read by the readers of every node
        whose tensor shares its storage (found on the example run's `values`).
        """
        storage: dict[int, list[int]] = {}
        for i, v in enumerate(values):
            if isinstance(v, torch.Tensor):
                storage.setdefault(v.untyped_storage().data_ptr(), []).append(i)
        returned = set()
        fx.node.map_arg(self._out_template, lambda n: returned.add(self.index[n.name]))
        last: dict[int, int] = {}
        for i, v in enumerate(values):
            if not isinstance(v, torch.Tensor):
                continue
            group = storage[v.untyped_storage().data_ptr()]
            best = i
            for j in group:
                if j in returned:
                    best = -1
                    break
                for u in self.nodes[j].users:
                    if u.op != "output" and u.name in self.index:
                        best = max(best, self.index[u.name])
            last[i] = best
        return last

    def _compile(self, node: fx.Node) -> Callable[..., Any] | None:
        """The callable that computes `node` from its resolved args (None for inputs)."""
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            return _direct(mod) or mod.forward  # no hooks: see module docstring
        if node.op == "call_function":
            return node.target
        if node.op == "call_method":
            name = node.target
            return lambda self_, *a, **k: getattr(self_, name)(*a, **k)
        if node.op == "get_attr":
            root, target = self.gm, node.target
            return lambda: _fetch_attr(root, target)
        return None

    def forward(self, *inputs: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
        """Run the model; return (output, every node's value in graph order)."""
        return self.gm.forward(*inputs)  # not gm(...): see the `hot` comment in __init__

    def node_of(self, i: int) -> fx.Node:
        """The (copied) fx node at position i."""
        return self._new_nodes[i]

    def module_of(self, i: int) -> nn.Module | None:
        """The module a call_module node runs, else None."""
        node = self._new_nodes[i]
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def _resolve(self, arg: Any, values: Sequence[Any]) -> Any:
        return fx.node.map_arg(arg, lambda n: values[self.index[n.name]])

    def recompute(self, i: int, values: Sequence[Any]) -> Any:
        """Compute node i again from the saved values of its inputs."""
        node = self._new_nodes[i]
        fn = self._fns[i]
        if fn is None:
            return values[i]
        if node.op == "get_attr":
            return fn()
        simple = self._simple[i]
        if simple is not None:
            return fn(*[values[j] for j in simple])
        args = self._resolve(node.args, values)
        kwargs = self._resolve(node.kwargs, values)
        return fn(*args, **kwargs)

    def recomputer(self, i: int) -> Callable[[Sequence[Any]], Any]:
        """`recompute(i, .)` with node i's argument positions resolved once (the DMR hot path)."""
        fn, simple, node = self._fns[i], self._simple[i], self._new_nodes[i]
        if fn is None or node.op == "get_attr" or simple is None:
            return lambda values: self.recompute(i, values)
        if len(simple) == 1:
            a = simple[0]
            return lambda values: fn(values[a])
        if len(simple) == 2:
            a, b = simple
            return lambda values: fn(values[a], values[b])
        return lambda values: fn(*[values[j] for j in simple])

    def run_from(self, k: int, values: Sequence[Any]) -> tuple[Any, list[Any]]:
        """Re-run nodes k.. with the saved values of nodes before k; return (output, values)."""
        vals = list(values)
        for i in range(k, len(self.nodes)):
            vals[i] = self.recompute(i, vals)
        out = fx.node.map_arg(self._out_template, lambda n: vals[self.index[n.name]])
        return out, vals

    def first_reader(self, tensor_names: Sequence[str], param_readers: dict[str, list[str]]) -> int:
        """Position of the first layer that reads any of the named weights (0 if unknown)."""
        best = None
        for t in tensor_names:
            for layer in param_readers.get(t, []):
                i = self.index.get(layer)
                if i is not None and (best is None or i < best):
                    best = i
        return best if best is not None else (self.layer_indices[0] if self.layer_indices else 0)
