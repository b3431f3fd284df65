"""How the forms a user gives `protect()` become per-input facts (`core.inputs.ModelInputs.of`).

`forward_params` (forward's positional parameters: the names of the inputs, and the order of a
dict's), `dict_order` (a dict of inputs in forward's order), `boxes_per_input` (one box form per
input from a single box, a sequence or a dict), `int_range` (an integer input's valid values) and
`table_ranges` (integer inputs that only index an embedding: its rows).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from save_ros.core.box import InputBox, InputError, InputRangeError


def is_exact(dtype: torch.dtype) -> bool:
    """Integer and bool dtypes: values that are compared, never ranged or flipped as floats."""
    return not (dtype.is_floating_point or dtype.is_complex)


def forward_params(model: nn.Module) -> list[inspect.Parameter] | None:
    """The positional parameters of `model.forward` (None: *args, no signature)."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    params = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
        if p.kind is not p.KEYWORD_ONLY:
            params.append(p)
    return params


def _is_box_form(v: Any) -> bool:
    """True for what can be one input's box: None, an InputBox, a (low, high) pair."""
    if v is None or isinstance(v, InputBox):
        return True
    return isinstance(v, (tuple, list)) and len(v) == 2


def dict_order(example: Mapping, params) -> tuple[list[str], list[Any]]:
    """Dict inputs in the order of forward's parameters (what fx's placeholders follow)."""
    keys = [str(k) for k in example]
    if params is None:
        raise InputError("dict inputs are passed as keyword arguments, but the model's "
                         "forward takes *args / **kwargs; give a tuple in forward's order",
                         "structure")
    order = [p.name for p in params]
    unknown = [k for k in keys if k not in order]
    if unknown:
        raise InputError(f"input(s) {unknown} name no parameter of forward "
                         f"({', '.join(order)})", "names")
    given = [n for n in order if n in keys]
    rest = [p for p in params[len(given):]]
    if order[:len(given)] != given or any(p.default is p.empty for p in rest):
        missing = [p.name for p in params if p.name not in keys]
        raise InputError(f"dict inputs must give forward's parameters {order} in full, or "
                         f"leave out only trailing ones with defaults; missing {missing}",
                         "names")
    return given, [example[k] for k in given]


def boxes_per_input(input_range: Any, names: list[str], tensors: list, structure: str) -> list:
    """One box form (or None) per input, from a single box, a sequence or a dict."""
    n = len(names)
    if n == 1 and not (isinstance(input_range, Mapping)):
        return [input_range]
    if isinstance(input_range, Mapping):
        unknown = [k for k in input_range if k not in names]
        if unknown:
            raise InputRangeError(f"input_range names {unknown}, which are not inputs "
                                  f"({', '.join(names)})")
        return [input_range.get(k) for k in names]
    if isinstance(input_range, (tuple, list)) and len(input_range) == n \
            and all(_is_box_form(b) for b in input_range) \
            and not all(isinstance(b, (int, float)) for b in input_range):
        return list(input_range)
    example = ", ".join("None" if is_exact(t.dtype) else "(low, high)" for t in tensors)
    raise InputRangeError(
        f"the model takes {n} inputs ({', '.join(names)}): give input_range as one box per "
        f"input in that order, e.g. ({example}), or a dict keyed by input name; None for "
        "integer inputs")


def int_range(name: str, b: Any) -> tuple[int, int] | None:
    """An exact input's inclusive (low, high) of valid values, or None."""
    if b is None:
        return None
    try:
        lo, hi = b
        lo_i, hi_i = int(lo), int(hi)
    except (TypeError, ValueError):
        raise InputRangeError(f"input {name!r} is an integer input: its box is None or an "
                              "inclusive (low, high) of valid values, e.g. (0, vocab - 1)"
                              ) from None
    if lo_i > hi_i:
        raise InputRangeError(f"input {name!r}: low {lo_i} > high {hi_i}")
    return lo_i, hi_i


def table_ranges(gm: fx.GraphModule, exact: list[bool]) -> dict[int, tuple[int, int]]:
    """Positions of exact inputs whose every use indexes an embedding table -> (0, rows - 1)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = {}
    for k, (is_int, node) in enumerate(zip(exact, placeholders, strict=False)):
        if not is_int or not node.users:
            continue
        rows = []
        for u in node.users:
            mod = gm.get_submodule(u.target) if u.op == "call_module" else None
            if not (isinstance(mod, nn.Embedding) and u.args and u.args[0] is node):
                rows = []
                break
            rows.append(mod.num_embeddings)
        if rows:
            out[k] = (0, min(rows) - 1)
    return out
