"""Which tensors a fault may hit: layers by name (glob) or module type, minus an exclude set."""

from __future__ import annotations

import difflib
import enum
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from save_ros.core import bits
from save_ros.errors import UserError


class TargetKind(enum.Enum):
    """Weights (persistent until undone) or activations (transient, one forward pass)."""

    WEIGHTS = "weights"
    ACTIVATIONS = "activations"


class EmptyTargetError(UserError, ValueError):
    """A target selected nothing that a fault could hit."""


class UnknownNameError(UserError, ValueError):
    """An exclude entry that names nothing in the model (a typo must not exclude nothing)."""


SITES = ("modules", "fx", "auto")  # how activation sites are found and named


@dataclass(frozen=True)
class Site:
    """One tensor a fault may hit: its name, element count and dtype."""

    name: str
    numel: int
    dtype: torch.dtype

    @property
    def width(self) -> int:
        """Bits per element."""
        return bits.layout_of(self.dtype).width


@dataclass(frozen=True)
class Target:
    """A selection of layers and tensors.

    `layers`: glob patterns on module paths (`conv1`, `layer1.*`; `*` = all); `types`: module
    classes (an empty tuple = any); a tensor is selected when its owning module matches both.
    `tensors`: glob patterns on tensor names (`*.weight` leaves biases alone). `exclude`: tensor
    names or globs never touched (SAVE's reliable-memory pool); each entry must name something in
    the model (`UnknownNameError` lists near matches), and a tied weight excluded under any of
    its names (as in `state_dict()`) is excluded under all. `buffers`: include buffers such as
    BatchNorm running stats (only those with a bit layout: `num_batches_tracked` is int64).

    `sites` (activations only): `"modules"` (the default, as before): leaf-module outputs named by
    module path, through forward hooks; `"fx"`: the output of every computing torch.fx node
    (functional ops included) named by node name (`save_ros.faults.fxsites`); `"auto"`: fx when
    the model traces, else modules. For fx sites `layers` globs match the node name or the
    module path of a call_module node, `types` select call_module nodes, and `exclude` takes
    node names or module paths.
    """

    kind: TargetKind = TargetKind.WEIGHTS
    layers: tuple[str, ...] = ("*",)
    types: tuple[type, ...] = ()
    tensors: tuple[str, ...] = ("*",)
    exclude: frozenset[str] = frozenset()
    buffers: bool = False
    sites: str = "modules"

    def __post_init__(self) -> None:
        # Accept a bare string or list where a tuple is meant, a common slip.
        for name in ("layers", "tensors"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "exclude", frozenset(self.exclude))
        object.__setattr__(self, "kind", TargetKind(self.kind))
        if self.sites not in SITES:
            raise ValueError(f"sites must be one of {', '.join(SITES)}, not {self.sites!r}")

    def matches_module(self, path: str, module: nn.Module | None) -> bool:
        """True when the module at `path` is selected by `layers` and `types`."""
        if not any(fnmatch.fnmatchcase(path, p) for p in self.layers):
            return False
        return not self.types or (module is not None and isinstance(module, self.types))

    def excluded(self, tensor_name: str) -> bool:
        """True when `tensor_name` is in the exclude set (exact name or glob)."""
        return tensor_name in self.exclude or any(
            fnmatch.fnmatchcase(tensor_name, p) for p in self.exclude
        )

    def to_dict(self) -> dict:
        """A JSON-safe description (module types by class name)."""
        return {"kind": self.kind.value, "layers": list(self.layers),
                "types": [t.__name__ for t in self.types], "tensors": list(self.tensors),
                "exclude": sorted(self.exclude), "buffers": self.buffers, "sites": self.sites}


def _module_path(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0]


def check_exclude(exclude: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise UnknownNameError for an exclude entry (name or glob) that matches no known name."""
    known = sorted(set(known))
    known_set = set(known)
    for entry in sorted(exclude):
        if entry in known_set:
            continue
        if any(c in entry for c in "*?[") and any(fnmatch.fnmatchcase(k, entry) for k in known):
            continue
        near = difflib.get_close_matches(entry, known, n=3, cutoff=0.6)
        hint = (f"did you mean {', '.join(repr(n) for n in near)}?" if near
                else f"{what}s are named as in the model ({len(known)} of them)")
        raise UnknownNameError(f"exclude entry {entry!r} matches no {what} of the model; {hint}")


def weight_aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every parameter / buffer name -> all names of the same tensor (tied weights share one)."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    for n, b in model.named_buffers(remove_duplicate=False):
        groups.setdefault(id(b), []).append(n)
    return {n: tuple(names) for names in groups.values() for n in names}


def select_weights(
    model: nn.Module | None,
    target: Target = Target(),
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The selected weight tensors, name -> tensor (detached views of the live storage).

    `tensors` (e.g. a method's `injectable()`) replaces the model's parameters as the pool to
    choose from; `model` is then only used to resolve module types and may be None when the
    target names no types.
    """
    if tensors is None:
        if model is None:
            raise ValueError("select_weights needs a model or a tensor mapping")
        pool: dict[str, torch.Tensor] = dict(model.named_parameters())
        if target.buffers:
            pool.update((k, b) for k, b in model.named_buffers() if b.dtype in bits.LAYOUTS)
    else:
        pool = dict(tensors)
    if target.types and model is None:
        raise ValueError("a target with module types needs the model to resolve them")
    aliases = weight_aliases(model) if model is not None else {}
    known = set(pool) | set(aliases)
    check_exclude(target.exclude, known, "tensor")
    excluded = {n for n in known if target.excluded(n)}
    excluded |= {a for n in excluded for a in aliases.get(n, ())}
    chosen: dict[str, torch.Tensor] = {}
    for name, t in pool.items():
        if name in excluded:
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in target.tensors):
            continue
        path = _module_path(name)
        module = None
        if model is not None:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                module = None
        if not target.matches_module(path, module):
            continue
        bits.layout_of(t.dtype)  # raises UnsupportedDtypeError with the supported list
        if not t.is_contiguous():
            raise ValueError(f"tensor {name!r} is not contiguous; flat indices need contiguity")
        chosen[name] = t.detach()
    if not chosen:
        raise EmptyTargetError(
            f"target {target.to_dict()} selects no weight tensor; check the layer globs against "
            "the model's module names (model.named_modules()) and the exclude set"
        )
    return chosen


def weight_sites(tensors: Mapping[str, torch.Tensor]) -> list[Site]:
    """Sites of a name -> tensor mapping, in its order."""
    return [Site(n, t.numel(), t.dtype) for n, t in tensors.items()]


def select_modules(model: nn.Module, target: Target, leaves_only: bool = True) -> dict[str,
                                                                                     nn.Module]:
    """Modules selected by `layers` and `types` (leaf modules only unless asked otherwise)."""
    chosen = {}
    for path, module in model.named_modules():
        if not path or (leaves_only and next(module.children(), None) is not None):
            continue
        if target.matches_module(path, module):
            chosen[path] = module
    return chosen
